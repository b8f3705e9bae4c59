"""Flash capture (sdpa in the forward, maps built in the backward) and the streaming adjoint
(readout rows propagated during the backward) equal eager capture with full-matrix flows."""

from dataclasses import replace

import pytest
import torch
from arch_zoo import ARCHS
from test_architectures import ONE_EXAMPLE_AT_A_TIME, SUPPORTED, _example

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.capture.backends.flash import FlashAttention, FlashBackend, attention_map

FLASHED: dict[str, int] = {}
STREAMED: dict[str, bool] = {}


def _relevance(arch, capture, correction, return_maps=True):
    explainer = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model,
                                                 capture=capture)
    explanation = explainer.explain(arch.inputs, target=arch.target, correction=correction,
                                    additional_forward_args=arch.additional_forward_args or None,
                                    return_maps=return_maps)
    return explanation


@pytest.fixture
def count_streams(monkeypatch):
    from captum_hetattn.engine import streaming as attribution

    results = []
    original = attribution.Streaming.result

    def counted(self):
        value = original(self)
        results.append(value is not None)
        return value

    monkeypatch.setattr(attribution.Streaming, "result", counted)
    return results


def _same(eager, flash):
    assert eager.relevance.keys() == flash.relevance.keys()
    for source, value in eager.relevance.items():
        torch.testing.assert_close(flash.relevance[source], value, atol=1e-5, rtol=1e-4)
    if flash.call_maps is None:
        return
    for a, b in zip(eager.call_maps, flash.call_maps, strict=True):
        assert (a.name, a.call_index) == (b.name, b.call_index)
        torch.testing.assert_close(b.attention, a.attention, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.gradient, a.gradient, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", SUPPORTED)
def test_flash_capture_equals_eager_capture(name, count_flash, count_streams):
    arch = ARCHS[name]()
    if name in ONE_EXAMPLE_AT_A_TIME:
        arch = _example(arch, 0)
    with torch.no_grad():  # transformers installs its output-capturing hooks on a first call
        arch.forward_func(*arch.inputs, *arch.additional_forward_args)
    # eager maps kept to the end and full flows, against flash capture streamed where it can
    eager = _relevance(arch, "eager", "full")
    _same(eager, _relevance(arch, "flash", "full", return_maps=False))
    FLASHED[name] = len(count_flash)
    STREAMED[name] = any(count_streams)
    if arch.padded is not None:  # padded inputs: masks reach the kernel
        padded = replace(arch.padded()[0], target=arch.target)
        _same(_relevance(padded, "eager", "pos"),
              _relevance(padded, "flash", "pos", return_maps=False))


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "bart", "t5", "llava", "swin"])
def test_flash_maps_and_gradients_equal_eager_ones(name):
    if name == "swin":
        from test_layouts import _swin

        model, pixels = _swin()
        arch = ARCHS["vit"]()
        arch = replace(arch, model=model, inputs=(pixels,), additional_forward_args=(),
                       forward_func=lambda x: model(pixel_values=x).logits, target=1)
    else:
        arch = ARCHS[name]()
    _same(_relevance(arch, "eager", "full"), _relevance(arch, "flash", "full"))


def test_flash_capture_is_used_where_the_interface_runs():
    """The comparison above is not vacuous: most families ran through the flash path and the
    streaming adjoint, among them causal decoders and encoder-decoders."""
    if len(FLASHED) < len(SUPPORTED):
        pytest.skip("needs the parametrised comparison to have run first")
    flashed = {name for name, count in FLASHED.items() if count}
    assert {"bert", "gpt2", "llama", "qwen2_gqa", "bart", "vit", "clip", "whisper"} <= flashed
    assert len(flashed) >= len(SUPPORTED) // 2, sorted(set(SUPPORTED) - flashed)
    streamed = {name for name, used in STREAMED.items() if used}
    assert {"bert", "gpt2", "bart", "vit", "t5", "detr"} <= streamed
    assert len(streamed) >= len(SUPPORTED) // 2, sorted(set(SUPPORTED) - streamed)


def test_flash_function_gradients_and_its_maps():
    """The autograd function against the eager formula: outputs, input gradients (also of a
    learned additive mask such as a position bias), and the (A, G) pair it hands over."""
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, n, 4, generator=gen, dtype=torch.float64,
                                     requires_grad=True) for n in (5, 6, 6))
    mask = torch.randn(1, 3, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    probe = torch.zeros((), requires_grad=True)
    handed = []
    output = FlashAttention.apply(query, key, value, mask, probe, 0.5,
                                  lambda a, g, *_: handed.append((a, g)))
    attention = attention_map(query, key, mask, 0.5)
    reference = attention @ value
    torch.testing.assert_close(output, reference)
    weights = torch.randn(reference.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((output * weights).sum(), (query, key, value, mask, probe))
    expected = torch.autograd.grad((reference * weights).sum(), (query, key, value, mask))
    for a, b in zip(got, expected, strict=False):
        torch.testing.assert_close(a, b)
    assert float(got[-1]) == 0.0
    (maps, gradient), = handed
    torch.testing.assert_close(maps, attention.detach())
    (exact,) = torch.autograd.grad((attention @ value.detach() * weights).sum(), attention)
    torch.testing.assert_close(gradient, exact)
    for chunk_mask in (mask, mask[:, :1]):  # per-head and broadcast masks, by chunks of heads
        outputs = [FlashAttention.apply(query, key, value, chunk_mask, probe, 0.5,
                                        lambda *_: None, chunk) for chunk in (None, 1, 2)]
        grads = [torch.autograd.grad((o * weights).sum(), (query, key, value, chunk_mask))
                 for o in outputs]
        for other in grads[1:]:
            for a, b in zip(other, grads[0], strict=True):
                torch.testing.assert_close(a, b)
    assert torch.autograd.gradgradcheck(
        lambda q, k, v: FlashAttention.apply(q, k, v, None, probe, 0.5, lambda *_: None),
        (query, key, value))


def test_flash_class_that_differs_from_its_eager_function_is_captured_eagerly():
    """A module whose eager function does more than sdpa computes (here: a soft-capping it
    does not announce) fails the first-call check and is recorded eagerly."""
    import transformers as tf
    from transformers.models.bert import modeling_bert

    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=20, vocab_size=30)
    model = tf.BertModel(config).eval()
    ids = torch.randint(3, 30, (2, 5))
    original = modeling_bert.eager_attention_forward

    def capped(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        scores = torch.tanh(query @ key.transpose(2, 3) * scaling / 2) * 2
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, :, : key.shape[-2]]
        weights = scores.softmax(-1)
        return (weights @ value).transpose(1, 2).contiguous(), weights

    modeling_bert.eager_attention_forward = capped
    try:
        from captum_hetattn.capture import introspect
        introspect.hf_eager_function.cache_clear()
        forward = lambda i: model(input_ids=i).last_hidden_state[:, 0]  # noqa: E731
        flash = HeterogenousAttentionAttribution(forward, model=model).explain(ids, target=0)
        eager = HeterogenousAttentionAttribution(forward, model=model, capture="eager").explain(
            ids, target=0)
        torch.testing.assert_close(flash.relevance["text"], eager.relevance["text"])
    finally:
        modeling_bert.eager_attention_forward = original
        introspect.hf_eager_function.cache_clear()


@pytest.mark.parametrize("name", ["bert", "gpt2", "qwen2_gqa", "bart"])
def test_flash_backward_by_chunks_of_heads_equals_the_whole_map(name, monkeypatch):
    """A budget of one head's map per chunk: maps reduced chunk by chunk (or assembled for
    return_maps) give what the whole map gives."""
    from captum_hetattn import capture

    arch = ARCHS[name]()
    whole = _relevance(arch, "flash", "full")
    reduced_by_chunks = []
    original = FlashBackend._on_flash

    def spy(self, entry, attention, gradient, first=0, heads=None):
        reduced_by_chunks.append(attention.shape[1] < (heads or attention.shape[1]))
        return original(self, entry, attention, gradient, first, heads)

    monkeypatch.setattr(FlashBackend, "_on_flash", spy)
    n = arch.inputs[0].shape[-1]
    monkeypatch.setattr(capture, "FLASH_BUDGET", arch.inputs[0].shape[0] * n * n)
    chunked = _relevance(arch, "flash", "full")  # return_maps: chunks assembled
    explainer = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model)
    plain = explainer.explain(arch.inputs, target=arch.target, correction="full",
                              additional_forward_args=arch.additional_forward_args or None)
    assert any(reduced_by_chunks)
    _same(whole, chunked)
    for source, value in whole.relevance.items():
        torch.testing.assert_close(plain.relevance[source], value, atol=1e-5, rtol=1e-4)
