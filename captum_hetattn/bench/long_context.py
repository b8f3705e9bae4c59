r"""The long-context section: time and peak memory of ours vs the plain forward+backward, each
measured in a fresh process (:func:`run_worker`), lengths predicted to exceed the time budget or
the free memory skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from captum_hetattn.bench.machine import memory_gib
from captum_hetattn.bench.report import TARGETS, TITLES, Options, Section


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One measurement in a fresh process (``cases.py --worker``); ``{"error": ...}`` when it
    fails or runs past ``timeout`` seconds."""
    # run cases.py as a script: the plain side then never imports captum_hetattn
    script = Path(__file__).resolve().with_name("cases.py")
    command = [sys.executable, str(script), "--worker", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout:.0f} s (the time budget)"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        killed = done.returncode < 0 or done.returncode == 137
        why = "killed (out of memory?)" if killed else f"exit status {done.returncode}"
        return {"error": f"{why}: {tail[0][:200]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_long_context(opts: Options) -> Section:
    r"""Time and peak memory of ours vs the plain forward+backward at ``opts.lengths`` tokens
    (BERT-base, BERT-mini, GPT-2 small; BERT only in quick mode), each in a fresh process.

    Args:
        opts: the run's options.

    Returns:
        Section: one row per model and length; skipped lengths noted.
    """
    section = Section(
        "long_context", TITLES["long_context"], TARGETS["long_context"],
        ["model", "tokens", "plain (s)", "ours (s)", "time ratio", "plain peak (MiB)",
         "ours peak (MiB)", "memory ratio", "Δ plain / Δ ours (MiB)", "met"],
    )
    free_mib = memory_gib("MemAvailable") * 1024
    # quick: BERT only (each process pays ~3 s of importing transformers)
    models = ("bert",) if opts.quick else ("bert", "bert_mini", "gpt2")
    ready = _run_at_once(models, opts) if opts.quick else {}
    if opts.quick:
        section.notes.append("Quick mode: BERT only (GPT-2 small runs in the full benchmark).")
    for model in models:
        measured: dict[str, list[tuple[int, dict[str, Any]]]] = {"plain": [], "ours": []}
        for tokens in sorted(opts.lengths):
            results: dict[str, dict[str, Any]] = {}
            for mode in ("plain", "ours"):
                skip = _skip_reason(mode, results, measured[mode], tokens, opts, free_mib)
                if skip:
                    results[mode] = {"error": skip}
                    continue
                results[mode] = ready.get((model, tokens, mode)) or run_worker(
                    _spec(opts, model, tokens, mode), opts.budget_s)
                if "error" not in results[mode]:
                    measured[mode].append((tokens, results[mode]))
            _add_row(section, opts, model, tokens, results["plain"], results["ours"])
    memory = "torch.cuda.max_memory_allocated" if opts.device == "cuda" else \
        "peak RSS (VmHWM) of a fresh process"
    at_once = "; quick mode starts them all at once" if opts.quick else ""
    section.notes.insert(0, (
        f"Each cell is one fresh process (build the model at batch 1, warm up, {opts.repeats} "
        f"timed runs{at_once}): memory = {memory}, including the model; Δ = peak minus the "
        "process's peak after building the model and inputs. Ours = `attribute` with default "
        "options."
    ))
    return section


def _spec(opts: Options, model: str, tokens: int, mode: str) -> dict[str, Any]:
    """What one worker process measures."""
    return {"model": model, "tokens": tokens, "mode": mode, "quick": opts.quick,
            "repeats": opts.repeats, "threads": opts.threads, "device": opts.device}


def _run_at_once(models: tuple[str, ...],
                 opts: Options) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Tiny sizes: every process started at once (memory is per process anyway)."""
    from concurrent.futures import ThreadPoolExecutor

    keys = [(m, t, mode) for m in models for t in opts.lengths for mode in ("plain", "ours")]
    with ThreadPoolExecutor(len(keys)) as pool:
        futures = {k: pool.submit(run_worker, _spec(opts, *k), opts.budget_s) for k in keys}
    return {k: f.result() for k, f in futures.items()}


def _skip_reason(mode: str, results: dict[str, dict[str, Any]],
                 measured: list[tuple[int, dict[str, Any]]], tokens: int, opts: Options,
                 free_mib: float) -> str | None:
    """Why ``mode`` is not run at ``tokens`` (the plain run failed, or the time or memory
    predicted from the lengths measured so far is too much), or None."""
    if mode == "ours" and "error" in results.get("plain", {}):
        return "not run: the plain run did not finish"
    if not measured:
        return None
    points = measured[-2:]
    seconds = _extrapolate([(t, r["seconds"]) for t, r in points], tokens)
    predicted_s = seconds * (opts.repeats + 1) + 5
    grown = _extrapolate(
        [(t, max(r["peak_mib"] - r["baseline_mib"], 0)) for t, r in points], tokens)
    if predicted_s > opts.budget_s:
        return (f"skipped: ~{predicted_s:.0f} s predicted (a + b·n² through "
                f"the measured lengths) > budget {opts.budget_s:.0f} s")
    if opts.device == "cpu" and grown > 0.8 * free_mib:
        return (f"skipped: ~{grown / 1024:.1f} GiB predicted > 80% of the "
                f"{free_mib / 1024:.1f} GiB free")
    return None


def _add_row(section: Section, opts: Options, model: str, tokens: int, plain: dict[str, Any],
             ours: dict[str, Any]) -> None:
    """One model and length: times, peaks and ratios (or why a side is missing)."""
    name = {"bert": "BERT-base", "bert_mini": "BERT-mini", "gpt2": "GPT-2 small"}[model]
    if opts.quick:
        name += " (tiny)"
    row = [name, str(tokens)]
    if "error" in plain or "error" in ours:
        row += [_cell(plain, "seconds"), _cell(ours, "seconds"), "—",
                _cell(plain, "peak_mib", 0), _cell(ours, "peak_mib", 0), "—", "—", "—"]
        for mode, value in (("plain", plain), ("ours", ours)):
            if "error" in value:
                section.notes.append(f"{name}, {tokens} tokens, {mode}: {value['error']}")
    else:
        time_ratio = ours["seconds"] / plain["seconds"]
        memory_ratio = ours["peak_mib"] / plain["peak_mib"]
        met = "—"
        if tokens >= 2048:  # the goals: time ≤ 1.0× at 2048 tokens, ≤ 1.5× beyond
            bound = 1.0 if tokens == 2048 else 1.5
            met = "yes" if time_ratio <= bound and memory_ratio <= 1.3 else "**no**"
        row += [f"{plain['seconds']:.3f}", f"{ours['seconds']:.3f}", f"{time_ratio:.2f}",
                f"{plain['peak_mib']:.0f}", f"{ours['peak_mib']:.0f}",
                f"{memory_ratio:.2f}",
                f"{plain['peak_mib'] - plain['baseline_mib']:.0f} / "
                f"{ours['peak_mib'] - ours['baseline_mib']:.0f}", met]
    section.rows.append(row)
    section.data.append({"model": name, "tokens": tokens, "plain": plain, "ours": ours})


def _extrapolate(points: list[tuple[int, float]], n: int) -> float:
    """``a + b·n²`` through the last two measured points (``b·n²`` through one); never less than
    the last value. Attention's share grows with n², the rest (weights, projections) slower, so
    this errs on the high side: a length is skipped too early rather than run out of memory."""
    (n1, v1) = points[-1]
    if len(points) == 1 or points[0][0] == n1:
        return v1 * (n / n1) ** 2
    (n0, v0) = points[0]
    b = max((v1 - v0) / (n1**2 - n0**2), 0.0)
    return max(v1 + b * (n**2 - n1**2), v1)


def _cell(result: dict[str, Any], key: str, digits: int = 3) -> str:
    if "error" in result:
        return "skipped" if result["error"].startswith(("skipped", "not run")) else "failed"
    return f"{result[key]:.{digits}f}"


__all__ = ["bench_long_context", "run_worker"]
