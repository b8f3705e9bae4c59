r"""The cost guard of the layout probes: no call runs for minutes where the forward takes
milliseconds (issue 19).

A call whose slots are not its hidden states' tokens (CvT's and MobileViT's convolutional
projections) used to be probed against every enclosing layer and the model input, forty
second-order passes each, before its refusal: about 400 backward passes per call. One row that
reads several tokens rules a candidate out in one first-order pass now, and which projection
row each score entry reads is probed once per call. Past a budget of passes per call
(``capture.LAYOUT_PASSES``) a call is left out with a warning naming it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_issue19_named import tiny_mobilevit

from captum_hetattn import HeterogenousAttentionAttribution, capture
from captum_hetattn.binding import probe_budget

transformers = pytest.importorskip("transformers")


class _Passes:
    r"""Counts every ``torch.autograd.grad`` while installed, and the most passes one call's
    layout probes had spent when one ran (:func:`probe_budget.spent`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.total = 0
        self.most_in_one_call = 0
        grad = torch.autograd.grad

        def counted(*args, **kwargs):
            self.total += 1
            self.most_in_one_call = max(self.most_in_one_call, probe_budget.spent() or 0)
            return grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", counted)


def _explain(model, inputs, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = HeterogenousAttentionAttribution(model, model=model).explain(inputs, **kwargs)
    return out, [str(w.message) for w in caught]


def _attention_names(model: torch.nn.Module, suffix: str) -> list[str]:
    return [name for name, _ in model.named_modules() if name.endswith(suffix)]


def _pixels(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_cvt_is_refused_by_name_in_a_few_dozen_passes_per_call(monkeypatch):
    """Six attention calls whose queries come from a depthwise convolution: refused naming each
    module and how many tokens one query slot reads, in under 40 passes a call (about 400
    each before)."""
    torch.manual_seed(0)
    config = transformers.CvtConfig(embed_dim=[8, 16, 16], num_heads=[1, 2, 2], depth=[1, 2, 3],
                                    drop_path_rate=[0.0, 0.0, 0.0], num_labels=3)
    model = transformers.CvtForImageClassification(config).eval()
    passes = _Passes(monkeypatch)
    with pytest.raises(ValueError) as refused:
        _explain(model, _pixels(), target=1)
    text = str(refused.value)
    attention = _attention_names(model, "attention.attention")
    assert len(attention) == 6 and all(f"'{n}'" in text for n in attention), text
    assert "computed from several tokens of its own hidden states (one reads" in text, text
    assert passes.total <= 40 * len(attention), passes.total


def test_mobilevit_outcome_unchanged_in_a_few_dozen_passes_per_call(monkeypatch):
    """MobileViT: its first transformer's calls are laid out as tiles of the unfolded patches,
    the later ones refused (their slots mix tokens); the outcome (the vanished-gradient
    refusal, naming the module) is as before, in under 60 passes a call (about 250 before)."""
    model = tiny_mobilevit()
    passes = _Passes(monkeypatch)
    with pytest.raises(ValueError) as refused:
        _explain(model, _pixels(), target=0)
    text = str(refused.value)
    assert "'mobilevit.encoder.layer.2.transformer.layer." in text, text
    assert "too small" in text and "per element" in text
    calls = _attention_names(model, "attention.attention")
    assert passes.total <= 60 * len(calls), (passes.total, len(calls))


def _swin():
    """Stage 0 windowed (8×8 tokens, 4×4 windows: laid out by probes), stage 1 one window of
    its 4×4 tokens (a plain map: never probed)."""
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[2, 1],
                                     num_heads=[1, 2], window_size=4, num_labels=3)
    return transformers.SwinForImageClassification(config).eval()


def test_past_the_budget_a_call_is_left_out_by_name(monkeypatch):
    """With ``LAYOUT_PASSES = 8`` the windowed calls (which take dozens of passes) are left
    out with a warning naming each and the setting, no call's probes run past 8 passes, and
    the plain call is still explained; with the default every call is explained."""
    model = _swin()
    windowed = [f"swin.encoder.layers.0.blocks.{k}.attention" for k in (0, 1)]
    full, _ = _explain(model, _pixels(), target=1)
    assert {c.name for c in full.calls} >= set(windowed)

    monkeypatch.setattr(capture, "LAYOUT_PASSES", 8)
    passes = _Passes(monkeypatch)
    out, messages = _explain(model, _pixels(), target=1)
    assert 0 < passes.most_in_one_call <= 8
    left = [m for m in messages if "LAYOUT_PASSES" in m]
    assert all(any(f"'{n}'" in m for m in left) for n in windowed), left
    names = {c.name for c in out.calls}
    assert not names & set(windowed) and names, names
    assert all(torch.isfinite(r).all() for r in out.relevance.values())


def test_budget_exceeded_is_raised_only_inside_a_call_being_laid_out(monkeypatch):
    """Outside :func:`probe_budget.layout_budget` passes are not counted; inside, the pass past
    the limit raises before it runs."""
    monkeypatch.setattr(capture, "LAYOUT_PASSES", 2)
    x = torch.randn(3, requires_grad=True)
    for _ in range(4):
        probe_budget.backward((x * x).sum(), x)
    with probe_budget.layout_budget():
        probe_budget.backward((x * x).sum(), x)
        probe_budget.backward((x * x).sum(), x)
        assert probe_budget.spent() == 2
        with pytest.raises(probe_budget.LayoutBudgetExceeded) as over:
            probe_budget.backward((x * x).sum(), x)
    assert probe_budget.spent() is None
    assert "LAYOUT_PASSES" in over.value.reason()
