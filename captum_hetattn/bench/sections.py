r"""The benchmark sections measured in this process: one attribution vs a plain forward+backward,
many targets, Integrated Gradients, and the evaluation runner's throughput."""

from __future__ import annotations

import inspect
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from captum_hetattn.bench.cases import (
    Case,
    build_bart,
    build_bert,
    build_detr,
    build_lxmert,
    build_vit,
    median_times,
    sync_for,
    to_device,
)
from captum_hetattn.bench.machine import cores, torch_threads
from captum_hetattn.bench.report import TARGETS, TITLES, Options, Section, batch_goal, met

EVALUATION_METHODS: tuple[str, ...] = ("ours (pos)", "GAE", "rollout")


def bench_batch(opts: Options) -> Section:
    """One attribution vs a plain forward+backward and vs the floor (forward + gradients to
    every attention call, no parameter gradients): ViT, BERT, LXMERT at batch 1 and 8."""
    section = Section("batch", TITLES["batch"], TARGETS["batch"],
                      ["model", "batch", "attention", "plain fwd+bwd (s)", "floor (s)",
                       "ours (s)", "ours / plain", "ours / floor", "met"])
    builders = (build_vit, build_bert, build_lxmert)
    for build in builders:
        for batch in (1, 8):
            case = build(batch, opts.quick)
            to_device(case, opts.device)
            times = median_times({"plain": case.plain, "floor": case.floor, "ours": case.ours},
                                 opts.repeats, sync_for(opts.device))
            ratio = times["ours"] / times["plain"]
            over_floor = times["ours"] / times["floor"]
            section.rows.append([case.name, str(batch), case.attention, f"{times['plain']:.4f}",
                                 f"{times['floor']:.4f}", f"{times['ours']:.4f}",
                                 f"{ratio:.2f}", f"{over_floor:.2f}",
                                 met(ratio, batch_goal(case.name))])
            section.data.append({"model": case.name, "batch": batch, **times, "ratio": ratio,
                                 "ratio_floor": over_floor})
            del case
    section.notes.append(
        "plain = forward + `.backward()` of the target logit into the parameters under the "
        "model's default attention (LXMERT's is hand-written); floor = forward + "
        "`torch.autograd.grad` of the same logit to every attention call's output (the fused "
        "kernel's context, or a hand-written softmax's probabilities), no parameter gradients: "
        "the least any method needing every layer's attention gradient pays (DESIGN §8); ours = "
        "`HeterogenousAttentionAttribution(forward, model=model).attribute(inputs, target=...)`"
        " with default options (input-shaped output). The three run in turn within each repeat."
    )
    return section


def _max_difference(batched: Any, looped: list[Any]) -> float:
    """Largest difference between the batched and the looped attributions (NaN: shapes differ)."""
    first = batched[0] if isinstance(batched, tuple) else batched
    parts = [x[0] if isinstance(x, tuple) else x for x in looped]
    stacked = torch.stack(parts, dim=1)  # (B, K, ...)
    if tuple(first.shape) != tuple(stacked.shape):
        return math.nan
    return float((first - stacked).abs().max())


def bench_many_targets(opts: Options) -> Section:
    """``targets=[...]`` in one call vs a loop of calls: BART and DETR."""
    section = Section("many_targets", TITLES["many_targets"], TARGETS["many_targets"],
                      ["model", "targets", "looped (s)", "batched (s)", "batched / looped",
                       "max abs difference", "met"])
    from captum_hetattn import HeterogenousAttentionAttribution

    available = "targets" in inspect.signature(
        HeterogenousAttentionAttribution.attribute).parameters
    count = 4 if opts.quick else 20
    for build in (build_bart, build_detr):
        case, targets = build(opts.quick, count)
        to_device(case, opts.device)
        if not available:
            section.rows.append([case.name, str(len(targets)), "—", "—", "not available", "—",
                                 "—"])
            continue

        def looped(case: Case = case, targets: list = targets) -> list[Any]:
            return [case.ours(target=t) for t in targets]

        def batched(case: Case = case, targets: list = targets) -> Any:
            return case.ours(target=None, targets=targets)

        times = median_times({"looped": looped, "batched": batched}, opts.repeats,
                             sync_for(opts.device))
        ratio = times["batched"] / times["looped"]
        difference = _max_difference(batched(), looped())
        section.rows.append([case.name, str(len(targets)), f"{times['looped']:.3f}",
                             f"{times['batched']:.3f}", f"{ratio:.2f}", f"{difference:.1e}",
                             met(ratio, 0.6)])
        section.data.append({"model": case.name, **times, "ratio": ratio,
                             "max_difference": difference})
    if not available:
        section.notes.append("`attribute` has no `targets` keyword in this version: not measured.")
    section.notes.append(
        f"BART: targets (decoder position, next token id) for {count} positions of one input "
        f"(teacher forcing); DETR: (query, class) for queries 0–{count - 1}. Looped = one "
        "`attribute` call per target; batched = one call with `targets=[...]`."
    )
    return section


def bench_integrated_gradients(opts: Options) -> Section:
    """Captum's ``IntegratedGradients(n_steps=50)`` vs ours on ViT-base."""
    from captum.attr import IntegratedGradients

    section = Section("integrated_gradients", TITLES["integrated_gradients"],
                      TARGETS["integrated_gradients"],
                      ["model", "ours (s)", "IntegratedGradients n_steps=50 (s)", "IG / ours",
                       "met"])
    case = build_vit(1, opts.quick)
    to_device(case, opts.device)
    ig = IntegratedGradients(case.forward)
    times = median_times(
        {"ours": case.ours,
         "ig": lambda: ig.attribute(case.inputs[0], target=case.target, n_steps=50,
                                    internal_batch_size=10)},
        opts.repeats, sync_for(opts.device),
    )
    ratio = times["ig"] / times["ours"]
    section.rows.append([case.name, f"{times['ours']:.3f}", f"{times['ig']:.3f}",
                         f"{ratio:.1f}", met(ratio, 40, below=False)])
    section.data.append({"model": case.name, **times, "ratio": ratio})
    section.notes.append("Batch 1, `internal_batch_size=10`.")
    return section


def bench_evaluation(opts: Options) -> Section:
    """Examples per second of the evaluation runner, in process and over 1 and 2 processes."""
    from captum_hetattn.evaluation import evaluate, standard_methods
    from captum_hetattn.evaluation.distributed import evaluate_distributed
    from captum_hetattn.zoo import load

    section = Section("evaluation", TITLES["evaluation"], TARGETS["evaluation"],
                      ["runner", "processes", "threads each", "wall (s)", "examples / s",
                       "vs one process"])
    methods = list(EVALUATION_METHODS[:1] if opts.quick else EVALUATION_METHODS)
    n = opts.eval_n
    shard = max(4, math.ceil(n / 4))  # two shards per rank: few calls, little per-call cost
    every = standard_methods(include_integrated_gradients=False)
    zoo = load("shapes_vqa")
    scratch = Path(tempfile.mkdtemp(prefix="hetattn-bench-"))
    runs = {"evaluate": [], "1": [], "2": []}
    try:
        for repeat in range(opts.eval_repeats):
            start = time.perf_counter()
            with torch_threads(opts.threads):
                evaluate(zoo, {m: every[m] for m in methods}, n=n, seed=12345, progress=False)
            runs["evaluate"].append(time.perf_counter() - start)
            for nproc in (2,) if opts.quick else (1, 2):
                out = scratch / f"run-{repeat}-{nproc}"
                start = time.perf_counter()
                evaluate_distributed("shapes_vqa", methods, n=n, seed=12345, out_dir=out,
                                     nproc=nproc, shard_size=shard)
                runs[str(nproc)].append(time.perf_counter() - start)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = statistics.median(runs["evaluate"])
    in_process = opts.threads
    for label, key, processes, threads in (
        ("`evaluate` (in process)", "evaluate", 1, in_process),
        ("`evaluate_distributed`, in process", "1", 1, in_process),
        ("`evaluate_distributed`, worker processes", "2", 2, max(1, cores() // 2)),
    ):
        if not runs[key]:
            continue
        wall = statistics.median(runs[key])
        section.rows.append([label, str(processes), str(threads), f"{wall:.2f}",
                             f"{n / wall:.1f}", f"{base / wall:.2f}×"])
        section.data.append({"runner": key, "processes": processes, "wall_s": wall,
                             "examples_per_s": n / wall, "runs": runs[key]})
    section.notes.append(
        f"shapes_vqa, {n} examples, seed 12345, methods {methods}, perturbation tests on, "
        f"shards of {shard}; median of {opts.eval_repeats} runs; wall clock includes starting "
        "the worker processes (each imports torch and transformers and loads the model) and "
        "writing the shards."
    )
    return section


__all__ = ["EVALUATION_METHODS", "bench_batch", "bench_evaluation", "bench_integrated_gradients",
           "bench_many_targets"]
