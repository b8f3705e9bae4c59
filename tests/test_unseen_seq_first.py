r"""Sequence-first hidden states ``(n, B, C)`` (XLNet, FSMT) when the token count equals the
batch: the sizes cannot tell them from batch-first ``(B, n, C)``, so the layout is read from
dependence (``capture/introspect.py: probed_token_dim``, run when a call returns). Before that
probe the layout was read batch-first: XLNet's last-token summary was refused for example 0
with a wrong reason, a mean summary got transposed weights silently (found by
``tests/model_types/variants.py``: ``xlnet@tokens2``). Batch-first models at ``n == B`` stay
exact (flash and eager capture), and a layout no dependence tells is refused by name."""

from __future__ import annotations

import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution


def _xlnet(summary: str) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.XLNetConfig(vocab_size=99, d_model=32, n_layer=2, n_head=2,
                                      d_inner=64, summary_type=summary, num_labels=3)
    return transformers.XLNetForSequenceClassification(config).eval()


@pytest.mark.parametrize("summary", ["last", "mean"])
def test_sequence_first_with_as_many_tokens_as_examples(summary: str) -> None:
    model = _xlnet(summary)
    explainer = HeterogenousAttentionAttribution(lambda ids: model(input_ids=ids).logits,
                                                 model=model)
    ids = torch.randint(5, 90, (2, 2), generator=torch.Generator().manual_seed(1))
    (batch,) = explainer.explain(ids, target=1).relevance.values()
    for index in range(2):
        (alone,) = explainer.explain(ids[index:index + 1], target=1).relevance.values()
        torch.testing.assert_close(batch[index:index + 1], alone, rtol=1e-5, atol=1e-9)


def test_sequence_first_with_more_tokens_than_examples_is_exact() -> None:
    model = _xlnet("last")
    explainer = HeterogenousAttentionAttribution(lambda ids: model(input_ids=ids).logits,
                                                 model=model)
    ids = torch.randint(5, 90, (2, 3), generator=torch.Generator().manual_seed(1))
    (batch,) = explainer.explain(ids, target=1).relevance.values()
    for index in range(2):
        (alone,) = explainer.explain(ids[index:index + 1], target=1).relevance.values()
        torch.testing.assert_close(batch[index:index + 1], alone, rtol=1e-5, atol=1e-9)


def _batch_equals_singles(explainer: HeterogenousAttentionAttribution, inputs: torch.Tensor,
                          **kwargs) -> None:
    batch = explainer.explain(inputs, **kwargs).relevance
    for index in range(inputs.shape[0]):
        alone = explainer.explain(inputs[index:index + 1], **kwargs).relevance
        assert batch.keys() == alone.keys()
        for name, value in alone.items():
            torch.testing.assert_close(batch[name][index:index + 1], value, rtol=1e-5,
                                       atol=1e-9)


def _text_model(kind: str) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    if kind == "bert":
        config = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=37, num_labels=3)
        return tf.BertForSequenceClassification(config).eval()
    if kind == "gpt2":
        config = tf.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                               num_labels=3, pad_token_id=0)
        return tf.GPT2ForSequenceClassification(config).eval()
    config = tf.FSMTConfig(langs=["en", "de"], src_vocab_size=99, tgt_vocab_size=99,
                           d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=37, decoder_ffn_dim=37, pad_token_id=1,
                           decoder_start_token_id=2)
    return tf.FSMTForConditionalGeneration(config).eval()


@pytest.mark.parametrize("capture", ["flash", "eager"])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "fsmt"])
@pytest.mark.parametrize("n", [2, 3])
def test_as_many_tokens_as_examples_is_exact(kind: str, n: int, capture: str,
                                             monkeypatch) -> None:
    r"""Batch-first (BERT, GPT-2) and sequence-first (FSMT: encoder, causal decoder and cross
    attention) hidden states at ``n`` tokens and ``n`` examples, through the flash capture (the
    tests' default) and the eager one: the batch is explained as each example alone."""
    from captum_hetattn import capture as capture_module

    if capture == "eager":
        monkeypatch.setattr(capture_module, "FLASH_MIN_ENTRIES", 2**20)
    model = _text_model(kind)
    if kind == "fsmt":
        def forward(ids: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids, decoder_input_ids=ids).logits[:, -1]
    else:
        def forward(ids: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids).logits
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    ids = torch.randint(5, 90, (n, n), generator=torch.Generator().manual_seed(n))
    _batch_equals_singles(explainer, ids, target=1)


@pytest.mark.parametrize("padded", [[[1, 0], [1, 1]], [[0, 1], [1, 1]], [[1, 1], [1, 0]]])
def test_a_padded_first_example_leaves_the_layout_to_the_next(padded: list) -> None:
    r"""FSMT at 2 tokens x 2 examples whose first example has one real token: its map reaches
    only that token (a padded query's row is constant), which both layouts allow; the next
    example tells, and the batch is explained as each example alone."""
    model = _text_model("fsmt")
    mask = torch.tensor(padded)
    explainer = HeterogenousAttentionAttribution(
        lambda ids, mask: model(input_ids=ids, attention_mask=mask,
                                decoder_input_ids=ids).logits[:, -1], model=model)
    ids = torch.randint(5, 90, (2, 2), generator=torch.Generator().manual_seed(1))
    batch = explainer.explain(ids, target=1, additional_forward_args=(mask,)).relevance
    for index in range(2):
        alone = explainer.explain(ids[index:index + 1], target=1,
                                  additional_forward_args=(mask[index:index + 1],)).relevance
        for name, value in alone.items():
            torch.testing.assert_close(batch[name][index:index + 1], value, rtol=1e-5,
                                       atol=1e-9)


@pytest.mark.parametrize("capture", ["flash", "eager"])
def test_image_tokens_as_many_as_examples_is_exact(capture: str, monkeypatch) -> None:
    r"""A ViT whose 4 patches and class token make 5 tokens, explained on 5 images."""
    import transformers as tf

    from captum_hetattn import capture as capture_module

    if capture == "eager":
        monkeypatch.setattr(capture_module, "FLASH_MIN_ENTRIES", 2**20)
    torch.manual_seed(0)
    config = tf.ViTConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=37, num_labels=3)
    model = tf.ViTForImageClassification(config).eval()
    explainer = HeterogenousAttentionAttribution(lambda x: model(pixel_values=x).logits,
                                                 model=model)
    pixels = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    _batch_equals_singles(explainer, pixels, target=1)


def test_records_read_their_layout_from_dependence() -> None:
    r"""At as many tokens as examples the recorded token dimension is the model's: 0 for
    XLNet's sequence-first hidden states, 1 for BERT's batch-first ones."""
    from captum_hetattn.capture import AttentionRecorder

    ids = torch.randint(5, 90, (2, 2), generator=torch.Generator().manual_seed(1))
    for model, expected in ((_xlnet("last"), 0), (_text_model("bert"), 1)):
        with AttentionRecorder(model, record_io=True) as recorder:
            model(input_ids=ids)
            assert recorder.records
            assert {r.token_dim for r in recorder.records} == {expected}


class _ConstantAttention(torch.nn.Module):
    r"""Sequence-first self-attention whose map is a learned table: nothing in it depends on
    the hidden states, so their layout cannot be told at as many tokens as examples."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.num_heads = 2
        self.table = torch.nn.Parameter(torch.randn(2, n, n))
        self.value = torch.nn.Linear(8, 8)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        n, batch, _ = hidden.shape
        attention = self.table.expand(batch, 2, n, n).softmax(-1)
        values = self.value(hidden).view(n, batch, 2, 4).permute(1, 2, 0, 3)
        return (attention @ values).permute(2, 0, 1, 3).reshape(n, batch, 8)


class _ConstantMapModel(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.attention = _ConstantAttention(n)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.attention(hidden.transpose(0, 1)).sum()


def test_a_layout_no_dependence_tells_is_refused_by_name() -> None:
    from captum_hetattn.capture import AttentionRecorder

    torch.manual_seed(0)
    model = _ConstantMapModel(3)
    hidden = torch.randn(3, 3, 8, requires_grad=True)
    with (AttentionRecorder(model, record_io=True, modules=["attention"]),
          pytest.raises(ValueError, match="'attention'.*as many tokens as examples")):
        model(hidden)
    with AttentionRecorder(model, record_io=True, modules=["attention"]) as recorder:
        model(torch.randn(2, 3, 8, requires_grad=True))  # the sizes tell: no probe
        assert [r.token_dim for r in recorder.records] == [0]
