r"""The default call on 44 architectures nobody wrote engine code for (``tests/arch_zoo.py``).

For every architecture, with ``HeterogenousAttentionAttribution(forward_func, model=model)`` and
no hand-made graph: it runs; every recorded call has the type the architecture's own table says;
every source gets non-zero relevance and every input the score depends on non-zero attribution;
recorded maps equal the model's eager ``output_attentions`` and recorded gradients equal
``autograd.grad`` through an independent softmax collector; a batch of 2 equals two single calls;
padding gets zero and the real tokens equal the unpadded run; the model comes back as it was.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from arch_zoo import ARCHS, Arch
from test_capture import SoftmaxCollector
from torch import Tensor, nn

from captum_hetattn import AttentionRecorder, HeterogenousAttentionAttribution

# Architectures whose checks here run on one example (none left: Qwen2-VL's packed vision tower,
# laid out by whose rows each example's score reads, runs its batch of 2 here too).
ONE_EXAMPLE_AT_A_TIME: dict[str, str] = {}
SUPPORTED = sorted(ARCHS)  # LLaVA-NeXT's crops (B·crops sequences), once refused, are tiles now


def _mobilevitv2():
    """MobileViTV2's separable self-attention: a softmax over the patches of one context score
    each, ``(B, 1, pixels, patches)``, that no (query token, key token) map holds."""
    import transformers

    config = transformers.MobileViTV2Config(image_size=64, num_labels=3, width_multiplier=0.25)
    torch.manual_seed(0)
    model = transformers.MobileViTV2ForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, (lambda p: model(pixel_values=p).logits), pixels


# Layouts the engine reports instead of guessing (families from the model-type sweep's
# refusals): a NotImplementedError naming the module.
UNMAPPABLE = {
    "mobilevitv2": (_mobilevitv2, "mobilevitv2.encoder.layer.2.transformer.layer.0.attention"),
}


def _example(arch: Arch, index: int) -> Arch:
    """Example ``index`` of a batch-of-2 architecture as a batch of one."""
    batch = arch.inputs[0].shape[0]
    packed = "no-batch-slice" in arch.notes

    def pick(value):
        if not isinstance(value, Tensor) or value.dim() == 0:
            return value
        if value.shape[0] == batch:
            return value[index : index + 1]
        if packed and value.shape[0] % batch == 0:  # packed rows, example b owns a block
            rows = value.shape[0] // batch
            return value[index * rows : (index + 1) * rows]
        return value

    return Arch(
        arch.name, arch.model, arch.forward_func, tuple(pick(x) for x in arch.inputs),
        tuple(pick(x) for x in arch.additional_forward_args), arch.target, arch.feeds,
        arch.types, None, None, arch.notes,
    )


def _explain(arch: Arch, explainer=None):
    explainer = explainer or HeterogenousAttentionAttribution(arch.forward_func, model=arch.model)
    args = arch.additional_forward_args or None
    explanation = explainer.explain(arch.inputs, target=arch.target, additional_forward_args=args)
    attribution = explainer.attribute(
        arch.inputs, target=arch.target, additional_forward_args=args
    )
    return explainer, explanation, attribution


def _state(model: nn.Module):
    """What an explanation must leave as it was."""
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    implementations = [
        getattr(getattr(m, "config", None), "_attn_implementation_internal", None)
        for m in model.modules()
    ]
    grads = [p.grad is not None for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    return hooks, implementations, model.training, any(grads), flags


@pytest.fixture(scope="module", params=SUPPORTED)
def case(request):
    arch = ARCHS[request.param]()
    if arch.name in ONE_EXAMPLE_AT_A_TIME:
        arch = _example(arch, 0)
    with torch.no_grad():  # transformers installs its own output-capturing hooks on a first call
        arch.forward_func(*arch.inputs, *arch.additional_forward_args)
    before = _state(arch.model)
    explainer, explanation, attribution = _explain(arch)
    assert _state(arch.model) == before, "the model was not restored"
    return arch, explainer, explanation, attribution


def test_types_sources_and_inputs(case):
    arch, explainer, explanation, attribution = case
    # every call typed as the architecture's table says (the table covers every module that ran)
    for call in explanation.calls:
        expected = [t for pattern, t in arch.types.items() if re.search(pattern, call.name)]
        assert expected == [call.type], (call.name, call.query, call.key, call.type, expected)
    assert explanation.calls, "no attention call was explained"
    # no source is exactly zero, for any example — but a source made of read tokens only (an
    # attention-pooling probe read alone) holds nothing but their own share, which is out of
    # ``relevance`` (Explanation.own): its raw row must be non-zero
    for name, relevance in explanation.relevance.items():
        stream = explanation.sources[name]
        weights, own = explanation.readout.get(stream), explanation.own.get(stream)
        if (weights is not None and weights.shape == relevance.shape
                and bool((weights != 0).all())):
            relevance = relevance + own
        assert relevance.abs().sum(dim=1).gt(0).all(), f"source '{name}' is all zero"
        assert torch.isfinite(relevance).all()
    # every input the score depends on gets attribution, shaped like the input
    for position, tensor in enumerate(arch.inputs):
        assert attribution[position].shape == tensor.shape
    for position in arch.feeds:
        per_example = attribution[position].abs().flatten(1).sum(dim=1)
        assert per_example.gt(0).all(), f"input {position} got zero attribution"


def _scores(arch: Arch) -> Tensor:
    torch.manual_seed(0)
    return arch.forward_func(*arch.inputs, *arch.additional_forward_args)[:, arch.target].sum()


EXACT: dict[str, str] = {}


def _is_map(tensor: Tensor) -> bool:
    """Whether an ``output_attentions`` entry is an attention map: ``(..., n_q, n_k)``,
    non-negative, each row summing to 1 (or 0 where a mask hides every key). Qwen2-VL's
    vision tower records the output of its attention modules under ``attentions``
    (``VisionAttention`` returns no weights): ``(rows, hidden)`` values, not a map."""
    if tensor.dim() < 3 or not bool((tensor >= 0).all()):
        return False
    sums = tensor.double().sum(dim=-1)
    return bool(((sums - 1).abs() < 1e-4).logical_or(sums == 0).all())


def test_recorded_maps_and_gradients_are_exact(case):
    arch, *_ = case
    with AttentionRecorder(arch.model) as recorder:
        recorder.compute_gradients(_scores(arch))
    records = recorder.records
    if arch.output_attentions is not None:
        reference = [a for a in arch.output_attentions() if a is not None and _is_map(a)]
        recorded = [r.attention for r in records]
        for attention in reference:
            assert any(
                a.shape == attention.shape and torch.allclose(a, attention, atol=1e-6)
                for a in recorded
            ), f"an eager output_attentions map of {arch.name} was not recorded"
    # gradients: eager attention, softmax outputs collected by the test, autograd.grad
    model = arch.model
    if not hasattr(model, "set_attn_implementation"):
        return
    configs = [m.config for m in model.modules()
               if hasattr(getattr(m, "config", None), "_attn_implementation_internal")]
    previous = [c._attn_implementation_internal for c in configs]
    try:
        for config in configs:
            config._attn_implementation_internal = "eager"
        collector = SoftmaxCollector()
        with collector:
            scores = _scores(arch)
    finally:
        for config, implementation in zip(configs, previous, strict=True):
            config._attn_implementation_internal = implementation
    maps = collector.maps
    if [tuple(m.shape) for m in maps] != [r.shape for r in records]:
        return  # softmaxes the recorder does not see as calls (pooling heads, MHA kernels)
    grads = torch.autograd.grad(scores, maps, allow_unused=True)
    for record, attention, grad in zip(records, maps, grads, strict=True):
        torch.testing.assert_close(record.attention, attention.detach(), atol=1e-6, rtol=0)
        expected = torch.zeros_like(attention) if grad is None else grad
        torch.testing.assert_close(record.gradient, expected, atol=1e-6, rtol=1e-5)
    EXACT[arch.name] = "gradients"


def test_batch_of_two_equals_two_single_calls(case):
    arch, explainer, explanation, attribution = case
    if arch.inputs[0].shape[0] < 2:
        return  # explained one example at a time (see ONE_EXAMPLE_AT_A_TIME)
    for index in range(2):
        single = _example(arch, index)
        _, one, one_attr = _explain(single, explainer)
        # ViLT draws its patch order per forward (and per batch size): only the relevance laid
        # out on the pixels is comparable there, not the order of the patch tokens
        shuffled = "patch order random" in arch.notes
        for name, relevance in explanation.relevance.items():
            if not shuffled:
                torch.testing.assert_close(one.relevance[name][0], relevance[index], atol=2e-5,
                                           rtol=1e-4)
        for position in arch.feeds:
            torch.testing.assert_close(one_attr[position][0].float(),
                                       attribution[position][index].float(), atol=2e-5,
                                       rtol=1e-4)


def test_padding_gets_zero_and_real_tokens_equal_the_unpadded_run(case):
    arch, *_ = case
    if ARCHS[arch.name]().padded is None:
        return
    padded, unpadded, position, pads = ARCHS[arch.name]().padded()
    # the same score as the full case (target 0 is a padding token with a constant logit in
    # models whose embeddings are tied to the head)
    padded, unpadded = (replace(c, target=arch.target) for c in (padded, unpadded))
    _, _, with_pads = _explain(padded)
    _, _, without = _explain(unpadded)
    assert with_pads[position][0, pads].abs().sum() == 0
    real = [i for i in range(with_pads[position].shape[1]) if i not in pads]
    torch.testing.assert_close(with_pads[position][:, real].float(), without[position].float(),
                               atol=2e-5, rtol=1e-4)


def test_coverage_of_the_catalogue():
    assert len(SUPPORTED) >= 30
    required = {"llava", "qwen2_vl", "idefics3", "smolvlm", "paligemma", "blip2_opt", "clip",
                "siglip", "visual_bert", "vilt", "lxmert", "detr", "bart", "t5", "whisper",
                "gpt2", "llama", "handwritten_vqa", "interleaved_towers"}
    assert required <= set(SUPPORTED)
    padded = [name for name in SUPPORTED if ARCHS[name]().padded is not None]
    assert len(padded) >= 8


@pytest.mark.parametrize("name", sorted(UNMAPPABLE))
def test_layouts_the_engine_cannot_map_are_errors_naming_the_module(name):
    build, module = UNMAPPABLE[name]
    model, forward, inputs = build()
    before = _state(model)
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with pytest.raises(NotImplementedError, match=re.escape(f"'{module}'")):
        explainer.explain(inputs, target=1)
    assert _state(model) == before, "the model was not restored"


def test_exact_gradient_checks_ran_on_most_architectures():
    # filled by test_recorded_maps_and_gradients_are_exact (pytest runs this file in order)
    if len(EXACT) < len(SUPPORTED) // 2:
        pytest.skip("run with the whole module to count the exactness checks")
    assert len(EXACT) >= 25, sorted(EXACT)
    print(f"exact gradients checked on {len(EXACT)} architectures")
