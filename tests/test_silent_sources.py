"""An explanation with no source used to come back as ``relevance == {}`` with no error or
warning (CANINE's hashed ids, XLNet's sequence-first ids): every input seemed irrelevant. It is
now refused naming the streams, the calls, the input and the first module that consumed it;
and the models whose ids the engine can follow (hashed per element, transposed) are explained."""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from captum_hetattn import HeterogenousAttentionAttribution


class _MixedIds(nn.Module):
    """Ids mixed across positions before the lookup (no element-wise function of the input)."""

    def __init__(self, pad: int = 0) -> None:
        super().__init__()
        config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=32)
        self.bert = BertModel(config).eval()
        self.lookup = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 3)
        self.pad = pad

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pad:  # padded to a window before the lookup (Longformer)
            ids = nn.functional.pad(ids, (0, self.pad))
        mixed = (ids + ids.roll(1, dims=1)) % 50
        hidden = self.bert(inputs_embeds=self.lookup(mixed)).last_hidden_state
        return self.head(hidden[:, 0])


class _Unused(nn.Module):
    """A float input that reaches the output but no attention call's tokens."""

    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=32)
        self.bert = BertModel(config).eval()
        self.tokens = nn.Parameter(torch.randn(1, 6, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(inputs_embeds=self.tokens.expand(x.shape[0], -1, -1))
        return self.head(hidden.last_hidden_state[:, 0]) + x.sum(dim=1, keepdim=True)


def test_untraceable_ids_are_refused_naming_streams_calls_input_and_consumer():
    torch.manual_seed(0)
    model = _MixedIds().eval()
    ids = torch.randint(2, 50, (2, 7))
    explainer = HeterogenousAttentionAttribution(model, model=model)
    with pytest.raises(ValueError) as info:
        explainer.explain(ids, target=1)
    message = str(info.value)
    assert "_MixedIds: no attention stream could be traced back to a model input" in message
    assert "(7 tokens)" in message and "streams '" in message
    assert "'bert.encoder.layer.0.attention.self' [call 0]" in message
    assert "'bert.encoder.layer.1.attention.self' [call 0]" in message
    assert "integer input 0 (2, 7)" in message and "'lookup'" in message
    # the model is restored: no hook left behind, and it still runs
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert model(ids).shape == (2, 3)


def test_ids_padded_before_the_lookup_are_refused_naming_the_lookup():
    torch.manual_seed(0)
    model = _MixedIds(pad=3).eval()
    explainer = HeterogenousAttentionAttribution(model, model=model)
    with pytest.raises(ValueError, match=r"integer input 0 \(2, 7\) is looked up by no embedding "
                                         r"\(the first embedding called is 'lookup' on ids of "
                                         r"shape \(2, 10\)"):
        explainer.attribute(torch.randint(2, 50, (2, 7)), target=0)


def test_float_input_that_feeds_no_token_is_refused():
    torch.manual_seed(0)
    model = _Unused().eval()
    explainer = HeterogenousAttentionAttribution(model, model=model)
    with pytest.raises(ValueError, match=r"float input 0 \(2, 4\) reaches no attention call"):
        explainer.attribute(torch.randn(2, 4), target=0)


# ------------------------------------------------------------------ ids the engine now follows
def _canine():
    from transformers import CanineConfig, CanineForSequenceClassification
    torch.manual_seed(0)
    config = CanineConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, downsampling_rate=4, upsampling_kernel_size=4,
                          num_hash_functions=4, num_hash_buckets=64, num_labels=3)
    return CanineForSequenceClassification(config).eval()


def _xlnet():
    from transformers import XLNetConfig, XLNetForSequenceClassification
    torch.manual_seed(0)
    config = XLNetConfig(vocab_size=60, d_model=32, n_layer=2, n_head=2, d_inner=64,
                         pad_token_id=5, num_labels=3)
    return XLNetForSequenceClassification(config).eval()


def _ids():
    torch.manual_seed(1)
    ids = torch.randint(6, 60, (2, 8))
    mask = torch.ones_like(ids)
    ids[1, -3:], mask[1, -3:] = 5, 0
    return ids, mask


def _explainer(model):
    """The explainer of a classifier called with ids and a mask, and the batch."""
    explainer = HeterogenousAttentionAttribution(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model)
    return (explainer, *_ids())


# CANINE's classifier reads the molecules: its final character encoder is reported unconnected
@pytest.mark.filterwarnings("ignore:attention module 'canine.final_char_encoder")
@pytest.mark.parametrize("make", [_canine, _xlnet], ids=["canine-hashed", "xlnet-seq-first"])
def test_hashed_and_sequence_first_ids_are_a_source(make):
    explainer, ids, mask = _explainer(make())
    batch = explainer.explain(ids, target=1, additional_forward_args=(mask,))
    assert list(batch.relevance) == ["text"] and batch.relevance["text"].shape == (2, 8)
    relevance = batch.relevance["text"]
    assert bool((relevance[1, -3:] == 0).all())  # padding gets nothing
    for example, real in ((0, 8), (1, 5)):
        # the real tokens get relevance through attention (the positive correction may
        # leave a token at zero; the read token's own share is taken out)
        assert int((relevance[example, :real] > 0).sum()) >= real // 2
    for example in range(2):
        single = explainer.explain(ids[example:example + 1], target=1,
                                   additional_forward_args=(mask[example:example + 1],))
        torch.testing.assert_close(single.relevance["text"], relevance[example:example + 1],
                                   rtol=1e-4, atol=1e-9)


def test_id_lookups_found_through_recodings_but_not_positions_or_masks():
    from captum_hetattn.binding.id_inputs import SEQUENCE_FIRST, id_inputs
    ids = torch.tensor([[7, 3, 9, 3], [4, 8, 2, 6]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])

    def lookup(name, looked_up):
        return (name, looked_up, torch.zeros(*looked_up.shape, 2), object())

    hashed = lookup("hash", (ids + 1) * 31 % 101)
    positions = lookup("positions", torch.arange(4).expand(2, -1))
    types = lookup("types", torch.zeros_like(ids))
    transposed = lookup("words", ids.T.contiguous())
    found = id_inputs([positions, types, hashed], [ids, mask])
    assert [(p, out is hashed[2]) for p, out, _, _ in found] == [(0, True)]
    # the input looked up as it is (sequence-first) wins over a recoding
    found = id_inputs([hashed, transposed], [ids, mask])
    assert [(p, d, out is transposed[2]) for p, out, d, _ in found] == [(0, SEQUENCE_FIRST, True)]
    # a collision (two inputs, one id) is no one-to-one recoding
    assert id_inputs([lookup("hash", ids % 2 + (ids > 5))], [ids, mask]) == []


@pytest.mark.filterwarnings("ignore:attention module 'canine.final_char_encoder")
@pytest.mark.parametrize("return_maps", [False, True], ids=["streamed", "blocks"])
def test_canine_first_molecule_is_a_copy_of_cls_whose_own_share_is_kept_apart(return_maps):
    # the classifier reads molecule 0, a copy of character 0 ([CLS]) made by a junction of
    # another length (8 characters → 2 molecules): its identity is the read token's own share
    explainer, ids, mask = _explainer(_canine())
    explanation = explainer.explain(ids, target=1, additional_forward_args=(mask,),
                                    return_maps=return_maps)
    raw = explainer.explain(ids, target=1, additional_forward_args=(mask,), include_own=True,
                            return_maps=return_maps)
    assert explanation.readout_stream != explanation.sources["text"]
    own = explanation.own["text"]
    assert bool((own[:, 0] > 0.5).all()) and bool((own[:, 1:] == 0).all())
    assert bool((explanation.relevance["text"][:, 0] < 0.1).all())
    torch.testing.assert_close(explanation.relevance["text"] + own, raw.relevance["text"])
