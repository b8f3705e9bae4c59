"""Bad token ids and masks that used to pass through raw from the model (issue 19): each is a
ValueError naming the input or the module at fault, and the model is restored."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from captum_hetattn import HeterogenousAttentionAttribution


def _bert():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=3)).eval()
    return model, lambda i, m=None: model(input_ids=i, attention_mask=m).logits


def _llama():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32)).eval()
    return model, lambda i, m=None: model(input_ids=i, attention_mask=m).logits[:, -1]


IDS = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
EMBEDDINGS = {"bert": "bert.embeddings.word_embeddings", "llama": "model.embed_tokens"}


def _restored(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()) and (
        model.config._attn_implementation_internal in (None, "eager", "sdpa"))


@pytest.mark.parametrize("build", [_bert, _llama], ids=["bert", "llama"])
@pytest.mark.parametrize("bad", [57, 50, -1])
def test_ids_outside_the_vocabulary_name_the_embedding(build, bad):
    model, func = build()
    ids = IDS.clone()
    ids[1, 2] = bad
    explainer = HeterogenousAttentionAttribution(func, model=model)
    name = EMBEDDINGS[build.__name__.strip("_")]
    with pytest.raises(ValueError, match=rf"embedding '{name}' has 50 rows \(ids 0 to 49\) but "
                                         rf"is handed id {bad} at \(1, 2\) \(example 1\)"):
        explainer.attribute(ids, target=1)
    assert _restored(model)
    assert explainer.attribute(IDS, target=1).shape == IDS.shape  # and the next call works


@pytest.mark.parametrize("build", [_bert, _llama], ids=["bert", "llama"])
@pytest.mark.parametrize("length", [5, 7])
def test_a_mask_of_another_length_names_it(build, length):
    """BERT explained a 5-entry mask for 6 tokens without a word; Llama gave a misleading
    'reads only padding'."""
    model, func = build()
    explainer = HeterogenousAttentionAttribution(func, model=model)
    for mask in (torch.ones(2, length, dtype=torch.long), torch.ones(2, length, dtype=torch.bool),
                 torch.ones(2, length)):
        with pytest.raises(ValueError, match=rf"additional_forward_args\[0\] of shape \(2, "
                                             rf"{length}\) looks like an attention mask.*input 0,"
                                             r" shape \(2, 6\)\) have 6 tokens.*shape \(2, 6\)"):
            explainer.attribute(IDS, target=1, additional_forward_args=(mask,))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 2:4] = 0  # padding in the middle: both models read a real token
    assert explainer.attribute(IDS, target=1, additional_forward_args=(mask,)).shape == (2, 6)


def test_a_mask_the_size_of_another_input_is_not_refused():
    """Region features with their own mask (LXMERT's visual_attention_mask): its length is the
    float input's token count, not the ids'."""
    from captum_hetattn.engine.checks import check_mask_lengths

    check_mask_lengths((IDS, torch.randn(2, 4, 8)), (torch.ones(2, 6), torch.ones(2, 4)))
    check_mask_lengths((IDS, torch.randint(3, 50, (2, 3))), (torch.ones(2, 3),))  # seq2seq
    with pytest.raises(ValueError, match=r"input 1 of shape \(2, 4\) looks like"):
        check_mask_lengths((IDS, torch.ones(2, 4, dtype=torch.bool)), ())


@pytest.mark.parametrize("shape", [(1, 1, 6), (2, 1, 6)])
def test_ids_with_a_dimension_too_many_are_refused_before_the_forward(shape):
    model, func = _bert()
    explainer = HeterogenousAttentionAttribution(func, model=model)
    ids = torch.randint(3, 50, shape)
    with pytest.raises(ValueError, match=rf"input 0 of shape \({', '.join(map(str, shape))}\) "
                                         r"holds integer ids with a dimension of size 1 too many: "
                                         r"token ids are \(batch, tokens\).*ids\[:, 0\]"):
        explainer.attribute(ids, target=1)
