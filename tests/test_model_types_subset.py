r"""A fast, varied subset of the model-type sweep (``make sweep``, ``tests/model_types/``): each
type built tiny from its shrunk default config, explained with every default and checked against
independent references (eager maps and gradients, the paper's rule recomputed, batch == single
examples, padding zero, the model restored). The checks themselves are shown to fail on a wrong
explanation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from model_types import checks
from model_types.build import build
from model_types.run import classify_error, run_type

# type -> the checks that must hold (not merely "n/a") on it; one type per family
SUBSET: dict[str, tuple[str, ...]] = {
    "bert": ("eager", "rule", "batch", "padding"),  # text encoder, [CLS] through a pooler
    "electra": ("eager", "rule", "batch", "padding"),
    "gpt2": ("eager", "rule", "batch", "padding"),  # decoder, fused qkv Conv1D
    "llama": ("eager", "rule", "batch", "padding"),  # decoder, rotary, GQA-ready
    "qwen2": ("eager", "rule", "batch", "padding"),
    "mistral": ("eager", "rule", "batch", "padding"),  # sliding window
    "bart": ("eager", "batch"),  # encoder-decoder
    "t5": ("batch",),  # position bias into the flash mask
    "marian": ("eager", "batch"),
    "vit": ("eager", "rule", "batch"),  # vision
    "deit": ("eager", "batch"),
    "dinov2": ("eager", "rule", "batch"),
    "swin": ("batch",),  # shifted windows
    "wav2vec2": ("eager", "rule", "batch"),  # audio frames
    "whisper": ("eager", "batch"),  # audio encoder-decoder
    "parakeet_rnnt": ("eager", "rule", "batch", "padding"),  # conformer + RNN-T joint
    "musicgen": ("eager", "rule", "batch", "padding"),  # audio-token decoder LM
    "audio-spectrogram-transformer": ("eager", "rule", "batch"),  # spectrogram patches
    "videomae": ("eager", "rule", "batch"),  # video tubelets
    "llava": ("eager", "batch"),  # multimodal LM (text-only call)
    "blip": ("eager", "batch"),  # dual encoder: text and pixels, per-example product
    "lxmert": ("types", "eager", "batch"),  # two streams, cross-attention (tests/arch_zoo.py)
    "xlm-roberta-xl": ("eager", "rule", "batch", "padding"),
    "conditional_detr": ("eager", "batch"),  # detector on a ResNet backbone, learned queries
    "d_fine": ("eager", "batch"),  # RT-DETR-like: hybrid encoder, deformable decoder
    "sapiens2": ("eager", "rule", "batch"),  # grouped-query ViT with register tokens
    "vjepa2": ("eager", "batch"),  # video tubelets, a predictor over context + mask tokens
    "nemotron": ("eager", "rule", "batch", "padding"),  # partial rotary, grouped keys
    "bros": ("eager", "rule", "batch", "padding"),  # layout: a box per token beside the ids
    "timesfm": ("eager", "rule", "batch"),  # time series: patches of a padded series
    "siglip2": ("eager", "batch", "padding"),  # NaFlex patch rows; mean-pooled, head unused
    "gemma4_vision": ("eager", "batch", "padding"),  # patch positions, pooled rows stacked
    "sam3_lite_text_text_model": ("eager", "batch", "padding"),  # RepMixer convs around attention
    "clvp": ("eager", "batch", "padding"),  # text encoder beside a speech decoder's argmax ids
    "granite4_vision": ("eager", "batch", "padding"),  # deepstack: image rows added into the LM
    "voxtral_realtime_text": ("eager", "rule", "batch", "padding"),  # time-conditioned norms
    "lilt": ("eager", "rule", "batch", "padding"),  # two maps per call, the layout reads one
}
REFUSED = {"mamba": "no attention call"}  # no attention at all: refused by name


@pytest.mark.parametrize("model_type", sorted(SUBSET))
def test_type_is_explained_and_checked(model_type, one_thread):
    result = run_type(model_type)
    assert result["outcome"] == "explained", result
    found = result["checks"]
    for name in SUBSET[model_type]:
        assert found[name][0] == "ok", (name, found[name], result)
    assert found["restored"][0] == "ok"


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_type_without_attention_is_refused_by_name(model_type, one_thread):
    result = run_type(model_type)
    assert result["outcome"] == "refused", result
    assert REFUSED[model_type] in result["reason"] and result["names_module"], result


def _explained(case, **options):
    from captum_hetattn import HeterogenousAttentionAttribution

    explainer = HeterogenousAttentionAttribution(case.forward_func, model=case.model)
    return explainer.explain(case.inputs, target=case.target,
                             additional_forward_args=case.additional_forward_args or None,
                             **options)


def test_the_checks_catch_a_wrong_explanation(one_thread):
    """Each independent check fails on an explanation that is wrong in its way."""
    case = build("bert")
    right = _explained(case, return_maps=True)
    assert checks.paper_rule(right)[0] == "ok" and checks.eager_maps(right, case)[0] == "ok"
    # another correction than the default's "pos": the rule recomputed no longer agrees
    assert checks.paper_rule(_explained(case, correction="abs", return_maps=True))[0] == "fail"
    # a map shifted by a constant is no eager softmax; a gradient scaled is not the eager one
    first = right.call_maps[0]
    shifted = [replace(first, attention=first.attention.roll(1, dims=-1))] + right.call_maps[1:]
    assert checks.eager_maps(replace(right, call_maps=shifted), case)[0] == "fail"
    scaled = [replace(first, gradient=first.gradient * 2)] + right.call_maps[1:]
    assert checks.eager_maps(replace(right, call_maps=scaled), case)[0] == "fail"
    # example 0's relevance given to example 1
    swapped = {n: r.flip(0) for n, r in right.relevance.items()}
    singles = [_explained(case.example(i)) for i in range(2)]
    assert checks.batch_equals_singles(right, singles)[0] == "ok"
    assert checks.batch_equals_singles(replace(right, relevance=swapped), singles)[0] == "fail"
    # relevance on a masked token, and a hook left behind
    leaked = {n: r + (case.mask == 0).float() for n, r in right.relevance.items()}
    assert checks.padding_is_zero(replace(right, relevance=leaked), case)[0] == "fail"
    before = checks.state(case.model)
    handle = case.model.register_forward_hook(lambda *args: None)
    try:
        assert checks.restored(before, case.model)[0] == "fail"
    finally:
        handle.remove()


def test_the_eager_check_reads_the_models_own_sdpa_run_where_eager_differs(one_thread):
    """Grounding-DINO's text mask is boolean: sdpa keeps the ``True`` keys (each token sees its
    phrase), transformers' eager function adds it to the scores. The recorded maps are the sdpa
    run's; the check compares them with that run's sdpa calls written out, and still fails on a
    wrong map."""
    case = build("grounding-dino")
    right = _explained(case, return_maps=True)
    verdict = checks.eager_maps(right, case)
    assert verdict[0] == "ok" and "written out" in verdict[1], verdict
    first = next(c for c in right.call_maps if "text_backbone" in c.name)
    shifted = [replace(c, attention=c.attention.roll(1, dims=-1)) if c is first else c
               for c in right.call_maps]
    assert checks.eager_maps(replace(right, call_maps=shifted), case)[0] == "fail"


def test_errors_are_told_apart_by_where_they_are_raised():
    """Our own ``raise`` of a ValueError is a refusal; an error from inside torch, or one of our
    lines that is not a raise, is a crash."""
    from captum_hetattn import HeterogenousAttentionAttribution

    model = torch.nn.Linear(3, 3)
    with pytest.raises(Exception) as ours:
        HeterogenousAttentionAttribution(model, model=model).explain(torch.randn(2, 3), target=0)
    assert classify_error(ours.value)[0] == "refused"
    with pytest.raises(RuntimeError) as inside:
        torch.stack([torch.zeros(2), torch.zeros(3)])
    assert classify_error(inside.value)[0] == "crash"


def test_readme_states_what_the_last_sweep_measured():
    """The README's "Model types swept" line is the summary of ``results.json``, and that file
    covers every model type of the installed transformers (re-run ``make sweep`` after an
    upgrade)."""
    import json

    from model_types.sweep import README, RESULTS, all_types, summary

    results = json.loads(RESULTS.read_text())
    assert sorted(r["type"] for r in results) == all_types()
    assert f"**{summary(results)}.**" in README.read_text()
