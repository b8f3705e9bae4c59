r"""Recordings from several threads: one model is recorded by one thread at a time (a second
recording waits, a nested one in the same thread is refused), different models are recorded
concurrently, and everything a recording changes is restored whatever the order threads leave in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from tiny_models import BUILDERS, run
from torch import Tensor, nn

from captum_hetattn import HeterogenousAttentionAttribution, capture
from captum_hetattn.capture import AttentionRecorder

pytestmark = pytest.mark.filterwarnings("ignore")

THREADS = 2
ROUNDS = 3  # attributions per thread
WAIT = 0.3  # seconds a blocked recording is given to (wrongly) get through


def implementations(model: nn.Module) -> list[tuple[str, Any]]:
    found = []
    for name, module in model.named_modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal"):
            found.append((name, cfg._attn_implementation_internal))
    return found


def hooks(model: nn.Module) -> list[tuple[str, int, int]]:
    return [
        (n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()
    ]


def registry_keys() -> set[str]:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return set(AttentionInterface._global_mapping) | set(AttentionMaskInterface._global_mapping)


def state(model: nn.Module) -> dict[str, Any]:
    return dict(
        implementations=implementations(model),
        hooks=hooks(model),
        registry=registry_keys(),
        fastpath=torch.backends.mha.get_fastpath_enabled(),
        modes=torch._C._len_torch_function_stack(),
    )


def assert_restored(model: nn.Module, before: dict[str, Any], inputs: dict[str, Any],
                    reference: Any) -> None:
    assert state(model) == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not any("hetattn" in impl for _, impl in implementations(model) if impl)
    assert capture._CLAIMS == {}
    with torch.no_grad():
        out = run(model, inputs)  # a plain forward still works, and gives what it gave
    assert torch.allclose(first_tensor(out), first_tensor(reference))


def first_tensor(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out[0]


def explainer_for(model: nn.Module, inputs: dict[str, Any]):
    """A fresh explainer on ``model``, and the call that explains ``inputs`` with it."""
    keys = list(inputs)
    values = list(inputs.values())

    def forward(*args: Tensor) -> Tensor:
        return first_tensor(model(**dict(zip(keys, args, strict=True))))[:, 0, :3]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    return lambda: explainer.attribute(
        values[0], target=1, additional_forward_args=tuple(values[1:])
    )


def in_threads(work: list[Callable[[], Any]]) -> list[list[Any]]:
    """Run each callable ``ROUNDS`` times in a thread of its own, all starting together;
    each thread's results (or the exceptions raised), in order."""
    start = threading.Barrier(len(work))
    results: list[list[Any]] = [[] for _ in work]

    def loop(i: int) -> None:
        start.wait()
        for _ in range(ROUNDS):
            try:
                results[i].append(work[i]())
            except Exception as err:  # noqa: BLE001 - counted by the test
                results[i].append(err)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive(), "a recording thread hung"
    return results


# ------------------------------------------------------------------ one model, two threads


@pytest.mark.parametrize("family", ["bert", "visual_bert"])  # interface / softmax interception
def test_two_threads_on_one_model_give_the_serial_results(family):
    model, inputs = BUILDERS[family]()
    with torch.no_grad():
        plain = run(model, inputs)
    before = state(model)
    serial = explainer_for(model, inputs)()
    results = in_threads([explainer_for(model, inputs) for _ in range(THREADS)])
    flat = [r for per_thread in results for r in per_thread]
    errors = [r for r in flat if isinstance(r, BaseException)]
    assert not errors, errors
    wrong = [r for r in flat if not torch.allclose(r, serial, atol=1e-6)]
    assert len(flat) == THREADS * ROUNDS and not wrong
    assert_restored(model, before, inputs, plain)


def test_a_second_recording_of_the_model_waits_for_the_first():
    model, inputs = BUILDERS["bert"]()
    entered, done = threading.Event(), threading.Event()
    records: list[int] = []

    def second() -> None:
        with AttentionRecorder(model) as rec:
            entered.set()
            run(model, inputs)
        records.append(len(rec.records))
        done.set()

    with AttentionRecorder(model) as first:
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(WAIT)  # blocked while this recording runs
        run(model, inputs)
    thread.join(timeout=60)
    assert done.is_set() and entered.is_set()
    assert len(first.records) == records[0] == 2  # each got its own calls, once


def test_a_model_that_wraps_the_same_modules_waits_too():
    model, inputs = BUILDERS["bert"]()
    wrapper = nn.ModuleDict({"inner": model.encoder})  # shares the attention modules
    entered = threading.Event()

    def second() -> None:
        with AttentionRecorder(wrapper):
            entered.set()

    with AttentionRecorder(model):
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(WAIT)
    thread.join(timeout=60)
    assert entered.is_set()


def test_a_failing_recording_in_one_thread_leaves_the_other_thread_correct():
    model, inputs = BUILDERS["visual_bert"]()
    with torch.no_grad():
        plain = run(model, inputs)
    before = state(model)
    serial = explainer_for(model, inputs)()
    # too short a mask: the hand-written attention fails adding it to its scores, mode active
    # (values of 2: a 0/1 mask of the wrong length is refused before the forward)
    bad = dict(inputs, attention_mask=inputs["attention_mask"][:, :4] * 2)
    results = in_threads([explainer_for(model, bad), explainer_for(model, inputs)])
    assert all(isinstance(r, RuntimeError) for r in results[0])
    assert all(isinstance(r, Tensor) and torch.allclose(r, serial, atol=1e-6)
               for r in results[1])
    assert_restored(model, before, inputs, plain)


# ------------------------------------------------------------------ nested in one thread


def test_nested_recording_of_the_same_model_raises_a_clear_error():
    model, inputs = BUILDERS["bert"]()
    with torch.no_grad():
        plain = run(model, inputs)
    before = state(model)
    with AttentionRecorder(model) as outer:
        during = state(model)
        with pytest.raises(RuntimeError, match="BertModel is already being recorded"):
            AttentionRecorder(model).__enter__()
        wrapper = nn.Sequential(model.encoder)
        with pytest.raises(RuntimeError, match="Sequential shares .* with BertModel, which is"):
            AttentionRecorder(wrapper).__enter__()
        assert state(model) == during  # the refused recordings changed nothing
        run(model, inputs)
    assert len(outer.records) == 2  # the outer recording kept working
    assert_restored(model, before, inputs, plain)


def test_nested_recordings_of_two_different_models_still_work():
    first, first_inputs = BUILDERS["bert"]()
    second, second_inputs = BUILDERS["vit"]()
    with AttentionRecorder(first) as a, AttentionRecorder(second) as b:
        run(first, first_inputs)
        run(second, second_inputs)
    assert [r.name for r in a.records] == [
        "encoder.layer.0.attention.self", "encoder.layer.1.attention.self"
    ]
    assert len(b.records) == 2 and all(r.name.startswith("layers.") for r in b.records)


# ------------------------------------------------------------------ two models, two threads


def test_two_models_are_recorded_concurrently():
    first, first_inputs = BUILDERS["bert"]()
    second, second_inputs = BUILDERS["visual_bert"]()
    finished = threading.Event()

    def other() -> None:
        with AttentionRecorder(second) as rec:
            run(second, second_inputs)
        assert len(rec.records) == 2
        finished.set()

    with AttentionRecorder(first) as rec:
        thread = threading.Thread(target=other)
        thread.start()
        assert finished.wait(60)  # not blocked by this recording
        run(first, first_inputs)
    thread.join(timeout=60)
    assert len(rec.records) == 2


def test_two_models_in_two_threads_give_the_serial_results():
    built = [BUILDERS["bert"](), BUILDERS["visual_bert"](), BUILDERS["vit"]()]
    befores = [state(m) for m, _ in built]
    with torch.no_grad():
        plains = [run(m, x) for m, x in built]
    serial = [explainer_for(m, x)() for m, x in built]
    results = in_threads([explainer_for(m, x) for m, x in built])
    for expected, got in zip(serial, results, strict=True):
        assert all(isinstance(r, Tensor) and torch.allclose(r, expected, atol=1e-6) for r in got)
    for (model, inputs), before, plain in zip(built, befores, plains, strict=True):
        assert_restored(model, before, inputs, plain)


@pytest.mark.parametrize("initially", [True, False])
def test_fast_path_flag_restored_whichever_thread_leaves_first(initially):
    """The flag is process-wide: A disables it, B enters (sees it disabled), A leaves first.
    It must stay disabled while B records and come back as it was once B leaves."""
    (one, one_inputs), (two, two_inputs) = BUILDERS["torch_transformer"](), (
        BUILDERS["torch_transformer"]()
    )
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(initially)
    try:
        a_in, b_in, a_out = (threading.Event() for _ in range(3))
        seen: dict[str, bool] = {}
        counts: dict[str, int] = {}

        def a() -> None:
            with AttentionRecorder(one) as rec:
                a_in.set()
                b_in.wait(60)
                run(one, one_inputs)
            counts["a"] = len(rec.records)
            a_out.set()

        def b() -> None:
            a_in.wait(60)
            with AttentionRecorder(two) as rec:
                b_in.set()
                a_out.wait(60)
                seen["while b records"] = torch.backends.mha.get_fastpath_enabled()
                run(two, two_inputs)  # still records every layer: no fused path
            counts["b"] = len(rec.records)

        threads = [threading.Thread(target=f) for f in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert seen == {"while b records": False}
        assert counts == {"a": 6, "b": 6}  # 2 encoder self, 2 decoder self, 2 decoder cross
        assert torch.backends.mha.get_fastpath_enabled() is initially
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
