r"""One type, one outcome: :func:`run_type` builds a type, runs the default explainer on it and
checks the result; :func:`run_isolated` does it in a forked child with a time limit, so that a
crash or a hang of one type is an outcome, not the sweep's failure.

Outcomes: ``explained`` (every independent check passed or did not apply), ``refused`` (a
``ValueError`` / ``TypeError`` / ``NotImplementedError`` / ``RuntimeError`` raised by
``captum_hetattn`` itself, its message kept), ``skipped-build`` (the type cannot be built here; not
counted), ``crash`` (any other exception, or one raised inside torch / transformers), ``hang``
(past the time limit), ``silent`` (explained, but an independent check fails).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch

from . import checks
from .build import BuildError, build

OURS = f"{os.sep}captum_hetattn{os.sep}"
REFUSALS = (ValueError, TypeError, NotImplementedError, RuntimeError)


def _short_path(filename: str) -> str:
    r"""``captum_hetattn/...`` or ``transformers/...``: no machine's prefix in the tables."""
    if OURS in filename:
        return "captum_hetattn/" + filename.split(OURS)[-1]
    return filename.split("site-packages/")[-1]


def classify_error(error: BaseException) -> tuple[str, str]:
    r"""``("refused", message)`` when ``captum_hetattn`` raised it on purpose (its innermost frame
    is ours and is a ``raise`` statement), else ``("crash", where + message)``."""
    frames = traceback.extract_tb(error.__traceback__)
    last = frames[-1] if frames else None
    message = f"{type(error).__name__}: {str(error).strip()}"
    where = f"{_short_path(last.filename)}:{last.lineno} {last.name}" if last else "?"
    ours = last is not None and OURS in last.filename and "raise" in (last.line or "")
    if ours and isinstance(error, REFUSALS):
        return "refused", f"{message} [{where}]"
    own_frames = [f for f in frames if OURS in f.filename]
    inner = own_frames[-1] if own_frames else None
    ours_at = f" (ours: {inner.filename.split(OURS)[-1]}:{inner.lineno} {inner.name})" if inner \
        else ""
    return "crash", f"{message} [{where}]{ours_at}"


def _names_a_module(message: str, model: torch.nn.Module) -> bool:
    names = [n for n, _ in model.named_modules() if n]
    classes = {type(m).__name__ for m in model.modules()}
    return any(n in message for n in names) or any(c in message for c in classes)


def _explain(case: Any, **options: Any) -> Any:
    from captum_hetattn import HeterogenousAttentionAttribution

    explainer = HeterogenousAttentionAttribution(case.forward_func, model=case.model)
    args = case.additional_forward_args or None
    return explainer, explainer.explain(case.inputs, target=case.target,
                                        additional_forward_args=args, **options)


def _model_is_deterministic(case: Any) -> bool:
    with torch.no_grad():
        first, second = (case.forward_func(*case.inputs, *case.additional_forward_args)
                         for _ in range(2))
    return bool(torch.equal(first, second))


def _model_is_per_example(case: Any) -> bool:
    r"""Whether the model's own scores for the batch equal its scores per example (MoE capacity,
    batch statistics and random draws make some models depend on the batch)."""
    with torch.no_grad():
        torch.manual_seed(0)
        batch = case.forward_func(*case.inputs, *case.additional_forward_args)
        for index in range(batch.shape[0]):
            one = case.example(index)
            torch.manual_seed(0)
            alone = one.forward_func(*one.inputs, *one.additional_forward_args)
            if not torch.allclose(alone[0], batch[index], rtol=1e-4, atol=1e-5):
                return False
    return True


def _zero_by_correction(case: Any, verdict: tuple[str, str]) -> tuple[str, str]:
    r"""An all-zero explanation is the rule's own answer when every read gradient of a map is
    ``≤ 0`` (the correction keeps ``∇A⁺``): then the uncorrected run is not all zero."""
    if verdict[0] != "fail" or "all zero" not in verdict[1]:
        return verdict
    _, plain = _explain(case, correction="none")
    if checks.finite_and_nonzero(plain)[0] == "fail":
        return verdict
    return "n/a", f"{verdict[1]}, but not with correction='none': every ∇A it reads is ≤ 0"


def _run_checks(case: Any, explanation: Any, stage: Any,
                results: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    r"""Every check into ``results`` (filled as they run: a later one that raises leaves the
    earlier verdicts)."""
    results.update(finite=_zero_by_correction(case, checks.finite_and_nonzero(explanation)),
                   padding=checks.padding_is_zero(explanation, case),
                   types=checks.node_types(explanation, case))
    if not explanation.relevance:
        return results
    stage("explain(return_maps=True)")
    _, with_maps = _explain(case, return_maps=True)
    results["rule"] = checks.paper_rule(with_maps)
    if not _model_is_deterministic(case):  # ViTMAE's random masking: no two runs agree
        random = ("n/a", "the model's forward draws random numbers")
        results.update({"maps-call": random, "eager": random, "batch": random})
        return results
    # float32 sums over a state that starts at the identity: errors scale with the raw row
    # (relevance + the read tokens' own share, ~1), not with the context relevance alone
    scale = max(float((r + checks._own_of(explanation, n)).abs().max())
                for n, r in explanation.relevance.items())
    missing = sorted(set(explanation.relevance) ^ set(with_maps.relevance))
    same = not missing and all(
        checks._close(with_maps.relevance[n], r, rtol=1e-4, atol=1e-6 * scale)
        for n, r in explanation.relevance.items())
    results["maps-call"] = ("ok", "") if same else (
        "fail", f"return_maps=True changes the sources {missing}" if missing
        else "return_maps=True changes relevance")
    stage("eager reference")
    results["eager"] = checks.eager_maps(with_maps, case)
    stage("unpadded")
    results["unpadded"] = checks.unpadded_equals(explanation, case, lambda one: _explain(one)[1])
    stage("batch == singles")
    if "packed" in " ".join(case.notes) and getattr(case, "singles", None) is not None:
        # packed examples cannot be sliced off the batch: the builder gives them
        singles = [_explain(one)[1] for one in case.singles()]
        results["batch"] = checks.batch_equals_singles(explanation, singles)
    elif "packed" in " ".join(case.notes):
        results["batch"] = ("n/a", "the examples are packed into one sequence")
    elif _model_is_per_example(case):
        try:
            singles = [_explain(case.example(i))[1] for i in range(case.inputs[0].shape[0])]
        except REFUSALS as error:  # the batch was explained: its examples must be too
            if classify_error(error)[0] != "refused":
                raise
            results["batch"] = ("fail", f"an example alone is refused: {str(error)[:200]}")
            return results
        results["batch"] = checks.batch_equals_singles(explanation, singles)
    else:
        results["batch"] = ("n/a", "the model's own scores depend on the batch")
    return results


def run_type(model_type: str, stage: Any = lambda _: None,
             make: Callable[[str], Any] | None = None) -> dict[str, Any]:
    r"""Build ``model_type`` (with ``make``, default :func:`build`), explain it with every default
    and check it: a result dict with ``outcome``, ``reason``, the class used, checks, our warnings
    and timings."""
    result: dict[str, Any] = {"type": model_type}
    start = time.perf_counter()
    stage("build")
    try:
        case = (make or build)(model_type)
    except BuildError as error:
        return {**result, "outcome": "skipped-build", "reason": str(error)}
    result.update(head=case.head, cls=case.class_name, build_s=time.perf_counter() - start)
    before = checks.state(case.model)
    stage("explain")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _, explanation = _explain(case)
        except Exception as error:  # noqa: BLE001 - every error is an outcome
            outcome, reason = classify_error(error)
            result.update(outcome=outcome, reason=reason, explain_s=time.perf_counter() - start)
            if outcome == "refused":
                result["names_module"] = _names_a_module(str(error), case.model)
                restored = checks.restored(before, case.model)
                if restored[0] == "fail":
                    result.update(outcome="silent", reason=f"not restored after a refusal: "
                                  f"{restored[1]}; {reason}")
            return result
    result["explain_s"] = time.perf_counter() - start
    result["warnings"] = sorted({str(w.message)[:300] for w in caught
                                 if OURS in str(w.filename) or "captum_hetattn" in str(w.message)})
    result["calls"] = len(explanation.calls)
    result["streams"] = dict(explanation.streams)
    stage({**result, "outcome": "explained"})  # kept by the parent if the checks run out of time
    found = {"restored": checks.restored(before, case.model)}
    try:
        _run_checks(case, explanation, stage, found)
    except Exception as error:  # noqa: BLE001 - a check that cannot run is recorded
        outcome, reason = classify_error(error)
        # an error inside our package while checking (the single examples' explain) is ours;
        # one in the harness or the model only leaves the checks unfinished
        inside = any(OURS in frame.filename for frame in traceback.extract_tb(
            error.__traceback__))
        found["checks"] = ("fail" if inside and outcome == "crash" else "n/a",
                           f"{outcome}: {reason}")
    result["checks"] = {k: list(v) for k, v in found.items()}
    failed = [f"{k}: {v[1]}" for k, v in found.items() if v[0] == "fail"]
    result["outcome"] = "silent" if failed else "explained"
    result["reason"] = "; ".join(failed)
    return result


def _child(model_type: str, connection: Any, make: Callable[[str], Any] | None = None) -> None:
    torch.set_num_threads(1)
    try:
        result = run_type(model_type, lambda name: connection.send(
            ("partial", name) if isinstance(name, dict) else ("stage", name)), make)
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        outcome, reason = classify_error(error)
        result = {"type": model_type, "outcome": outcome, "reason": f"harness: {reason}"}
    connection.send(("result", result))
    connection.close()


class _Running:
    r"""One forked child working on one type."""

    def __init__(self, model_type: str, make: Callable[[str], Any] | None = None) -> None:
        context = multiprocessing.get_context("fork")
        self.connection, child = context.Pipe(duplex=False)
        self.process = context.Process(target=_child, args=(model_type, child, make),
                                       daemon=True)
        self.type, self.stage, self.result, self.partial = model_type, "start", None, None
        self.start = self.stage_start = time.perf_counter()
        self.process.start()
        child.close()

    def read(self) -> None:
        while self.result is None and self.connection.poll(0):
            try:
                kind, value = self.connection.recv()
            except EOFError:
                self._finish(None)
                return
            if kind == "stage":
                self.stage, self.stage_start = value, time.perf_counter()
            elif kind == "partial":
                self.partial = value
            else:
                self._finish(value)

    def check(self, timeout: float, explain_timeout: float) -> bool:
        r"""Whether the child is done: a result, a death, the default explain past
        ``explain_timeout`` (a hang) or the whole type past ``timeout``."""
        self.read()
        if self.result is not None:
            return True
        if not self.process.is_alive():
            self.process.join(1)
            self.read()
            if self.result is None:
                self._finish({"type": self.type, "outcome": "crash", "reason": (
                    f"the process died (exit code {self.process.exitcode}) in stage "
                    f"'{self.stage}'")})
            return True
        now = time.perf_counter()
        if self.stage == "explain" and now - self.stage_start > explain_timeout:
            self._finish({"type": self.type, "outcome": "hang", "reason": (
                f"the default explain ran past {explain_timeout:.0f} s")})
            return True
        if now - self.start > timeout:
            if self.partial is not None:  # explained; a check ran out of time
                self._finish({**self.partial, "checks_incomplete": True, "reason": (
                    f"checks incomplete: past {timeout:.0f} s in stage '{self.stage}'")})
            else:
                outcome = "skipped-build" if self.stage in ("start", "build") else "hang"
                self._finish({"type": self.type, "outcome": outcome,
                              "reason": f"past {timeout:.0f} s in stage '{self.stage}'"})
            return True
        return False

    def _finish(self, result: dict[str, Any] | None) -> None:
        if result is None:
            result = {"type": self.type, "outcome": "crash",
                      "reason": f"the child closed its pipe in stage '{self.stage}'"}
        result["seconds"] = round(time.perf_counter() - self.start, 2)
        self.result = result
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.connection.close()


def run_many(types: list[str], workers: int = 2, timeout: float = 180.0,
             done: Any = lambda result: None, explain_timeout: float = 60.0,
             make: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    r"""Every type in a forked child, ``workers`` at a time (built with ``make``, default
    :func:`build`); ``done(result)`` is called as each one finishes. The parent stays
    single-threaded (a fork never copies a held lock)."""
    from multiprocessing.connection import wait

    pending, running, results = list(types), [], []
    while pending or running:
        while pending and len(running) < workers:
            running.append(_Running(pending.pop(0), make))
        wait([r.connection for r in running] + [r.process.sentinel for r in running], 1.0)
        for item in list(running):
            if item.check(timeout, explain_timeout):
                running.remove(item)
                results.append(item.result)
                done(item.result)
    return results


def run_isolated(model_type: str, timeout: float = 180.0) -> dict[str, Any]:
    r""":func:`run_type` in a forked child with a time limit."""
    return run_many([model_type], 1, timeout)[0]
