"""Per-call overhead: structural answers kept between calls (capture/memo.py) equal fresh ones
and are asked afresh when the model changes; the garbage collector is deferred during a call
and restored; a call leaves no reference cycle and no growth over many calls."""

import gc
import warnings

import pytest
import torch
from tiny_models import SelfAttention
from torch import nn

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.capture.memo import StructureMemo, module_signature


class _TokenWise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, hidden):
        return self.proj(hidden)


class _Running(_TokenWise):
    """Mixes tokens: a causal running mean before the projection."""

    def forward(self, hidden):
        steps = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[:, None]
        return self.proj(hidden.cumsum(1) / steps)


class _GateAttention(nn.Module):
    """Tracked by its class name, computes no softmax (LXMERT's ``LxmertAttentionOutput``
    shape): whether it mixes tokens is asked by a backward pass, or answered by the memo."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _TokenWise()

    def forward(self, hidden):
        return hidden + self.inner(hidden)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(4, 16), nn.Linear(16, 3)
        self.first, self.gate, self.second = SelfAttention(), _GateAttention(), SelfAttention()

    def forward(self, x):
        hidden = self.embed(x)
        hidden = hidden + self.first(hidden)
        hidden = self.gate(hidden)
        hidden = hidden + self.second(hidden)
        return self.head(hidden.mean(1))


def _attribute(explainer, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = explainer.attribute(x, target=1)
    return out, sorted({str(w.message) for w in caught if "left out" in str(w.message)})


def _setup():
    torch.manual_seed(0)
    model = _Model().eval()
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1))
    return model, x, HeterogenousAttentionAttribution(model)


def test_a_cached_answer_gives_what_a_fresh_explainer_gives():
    model, x, explainer = _setup()
    first, _ = _attribute(explainer, x)
    assert explainer.structures.misses >= 1 and explainer.structures.hits == 0
    second, second_warned = _attribute(explainer, x)
    assert explainer.structures.hits >= 1
    fresh, fresh_warned = _attribute(HeterogenousAttentionAttribution(model), x)
    assert torch.equal(second, fresh) and torch.equal(first, fresh)
    assert second_warned == fresh_warned


@pytest.mark.parametrize("change", ["swap", "hook", "train", "forward", "shape"])
def test_a_changed_model_is_asked_afresh(change):
    """A swapped submodule that mixes tokens is reported as such on the next call of the same
    explainer (as a fresh explainer reports it); other changes give another key."""
    model, x, explainer = _setup()
    _, warned = _attribute(explainer, x)
    assert not any("'gate'" in w for w in warned)  # token-wise: not reported
    before = module_signature(model.gate)
    if change == "swap":
        model.gate.inner = _Running()
    elif change == "hook":
        model.gate.inner.register_forward_hook(lambda *args: None)
    elif change == "train":
        model.gate.inner.train()
    elif change == "forward":
        model.gate.inner.forward = _Running.forward.__get__(model.gate.inner)
    if change != "shape":
        assert module_signature(model.gate) != before
    misses = explainer.structures.misses
    y = x[:, :5] if change == "shape" else x
    ours, warned = _attribute(explainer, y)
    assert explainer.structures.misses > misses  # asked again, not read from the memo
    fresh, fresh_warned = _attribute(HeterogenousAttentionAttribution(model), y)
    assert torch.equal(ours, fresh) and warned == fresh_warned
    if change in ("swap", "forward"):
        assert any("'gate'" in w and "no softmax over tokens" in w for w in warned), warned


def test_memo_holds_modules_weakly_and_boundedly():
    memo = StructureMemo()
    module = nn.Linear(2, 2)
    for key in range(40):
        memo.put(module, key, True)
    assert memo.get(module, 0) is None and memo.get(module, 39) is True
    del module
    gc.collect()
    assert len(memo._answers) == 0


def test_collector_is_restored_and_a_call_leaves_no_cycle():
    model, x, explainer = _setup()
    explainer.attribute(x, target=1)
    assert gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        explainer.attribute(x, target=1)
        assert not gc.isenabled()  # a state the caller chose is left alone
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()  # the call's objects were freed by reference counting
        kinds = sorted({type(o).__name__ for o in gc.garbage})
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
        gc.enable()
    assert found == 0, kinds
    with pytest.raises(ValueError):
        explainer.attribute(x, target=1, correction="nonsense")
    assert gc.isenabled()
    with pytest.raises(RuntimeError):  # an error inside the forward: the collector is back on
        explainer.attribute(torch.randn(2, 6, 5), target=1)
    assert gc.isenabled()


def test_many_calls_keep_no_objects():
    model, x, explainer = _setup()
    for _ in range(3):
        explainer.attribute(x, target=1)
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(50):
        explainer.attribute(x, target=1)
    gc.collect()
    assert len(gc.get_objects()) - before < 50


def test_one_walk_is_read_inside_the_block_only():
    from captum_hetattn.capture.memo import modules_of, named_modules_of, walk_kept

    model = _Model()
    with walk_kept(model):
        first = named_modules_of(model)
        assert named_modules_of(model) is first  # the kept walk
        assert modules_of(model) == [m for _, m in model.named_modules()]
    model.extra = nn.Linear(2, 2)  # outside the block: walked afresh
    assert "extra" in dict(named_modules_of(model))


def test_lxmert_warm_call_equals_a_fresh_explainer():
    """LXMERT's ``LxmertAttentionOutput`` modules (tracked by name, no softmax) are answered
    by the memo on the second call: relevance equal to the bit to a fresh explainer's."""
    from captum_hetattn.bench.cases import build_lxmert

    case = build_lxmert(2, quick=True)
    first = case.ours()
    warm = case.ours()
    assert case._explainer.structures.hits > 0
    fresh = HeterogenousAttentionAttribution(case.forward, model=case.model).attribute(
        case.inputs, target=case.target, additional_forward_args=case.extra)
    for a, b, c in zip(first, warm, fresh, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)
