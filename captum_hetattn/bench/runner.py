r"""``captum-hetattn bench``: the scale benchmarks, written to ``benchmarks/results.md``.

The runner: options, the sections in order, sections left out by ``only`` carried over from an
earlier run, the markdown and JSON written, and the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from captum_hetattn.bench.cases import worker
from captum_hetattn.bench.long_context import bench_long_context
from captum_hetattn.bench.machine import cores, load_average, machine, torch_threads
from captum_hetattn.bench.report import (
    SECTIONS,
    TITLES,
    Options,
    Section,
    earlier_sections,
    headline_markdown,
    report_markdown,
    write_headline,
)
from captum_hetattn.bench.sections import (
    bench_batch,
    bench_evaluation,
    bench_integrated_gradients,
    bench_many_targets,
)
from captum_hetattn.bench.windowed import bench_windowed

DEFAULT_LENGTHS: tuple[int, ...] = (512, 2048, 4096, 8192)
QUICK_LENGTHS: tuple[int, ...] = (64,)


RUNNERS: dict[str, Callable[[Options], Section]] = {
    "batch": bench_batch,
    "long_context": bench_long_context,
    "many_targets": bench_many_targets,
    "integrated_gradients": bench_integrated_gradients,
    "evaluation": bench_evaluation,
    "windowed": bench_windowed,
}


def run_benchmarks(
    out: str | Path = "benchmarks/results.md",
    quick: bool = False,
    only: Sequence[str] | None = None,
    *,
    repeats: int | None = None,
    threads: int | None = None,
    budget_s: float | None = None,
    lengths: Sequence[int] | None = None,
    device: str | None = None,
    eval_n: int | None = None,
    eval_repeats: int | None = None,
    log: Callable[[str], None] = print,
    readme: str | Path | None = None,
) -> dict[str, Any]:
    r"""Run the benchmarks and write ``out`` (markdown) and ``out`` with ``.json`` (numbers).

    Args:
        out: the markdown report.
        quick: tiny models and sizes (a smoke test of the harness; numbers mean nothing).
        only: section keys to run (:data:`SECTIONS`); the others keep the figures of an earlier
            run written to ``out`` in the same mode (noted as carried over), or are listed as
            not run — so a long benchmark can be run in parts.
        repeats: timed runs per median (default 5; quick 1).
        threads: torch threads (default: every core this process may use; quick: 1).
        budget_s: longest a long-context measurement may take (default 900 s; quick 120 s);
            lengths predicted to exceed it are skipped and reported.
        lengths: long-context token counts (default 512, 2048, 4096, 8192; quick 64).
        device: ``"cpu"`` or ``"cuda"`` (default: cuda when there is one).
        eval_n / eval_repeats: examples and runs of the evaluation throughput (default 1000 / 5;
            quick 8 / 1).
        log: where progress lines go.
        readme: a README whose headline block (between :data:`~.report.HEADLINE_START` and
            :data:`~.report.HEADLINE_END`) gets this run's headline table.

    Returns:
        ``{"machine": ..., "options": ..., "sections": {key: {...}}}`` (also written as JSON).
    """
    chosen = list(SECTIONS if only is None else only)
    unknown = [key for key in chosen if key not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(SECTIONS)}")
    opts = _options(quick, repeats, threads, budget_s, lengths, device, eval_n, eval_repeats)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    load_start = load_average()
    began = time.perf_counter()
    sections: dict[str, Section] = {}
    with torch_threads(opts.threads):
        for key in SECTIONS:
            if key not in chosen:
                continue
            log(f"bench: {TITLES[key]} ...")
            start = time.perf_counter()
            sections[key] = RUNNERS[key](opts)
            sections[key].seconds = time.perf_counter() - start
            log(f"bench: {key} done in {sections[key].seconds:.1f} s")
    total = time.perf_counter() - began
    load_end = load_average()
    stamp = f"{info['date']}, commit {info['commit'] or '?'}, load {load_start:.1f}–{load_end:.1f}"
    saved = {key: {"title": s.title, "target": s.target, "header": s.header, "rows": s.rows,
                   "notes": s.notes, "data": s.data, "seconds": s.seconds, "run": stamp}
             for key, s in sections.items()}
    _carry_over(out, opts.quick, sections, saved)
    data = {
        "machine": info,
        "options": vars(opts),
        "load_average": [load_start, load_end],
        "total_seconds": total,
        "sections": {key: saved[key] for key in SECTIONS if key in saved},
    }
    headline = headline_markdown(data)
    out.write_text(report_markdown(info, opts, sections, chosen, total, load_start, load_end,
                                   headline))
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    if readme is not None:
        write_headline(Path(readme), headline)
    return data


def _options(quick: bool, repeats: int | None, threads: int | None, budget_s: float | None,
             lengths: Sequence[int] | None, device: str | None, eval_n: int | None,
             eval_repeats: int | None) -> Options:
    """The options of a run, defaults filled in (smaller ones in quick mode)."""
    repeats = repeats if repeats is not None else (1 if quick else 5)
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int ≥ 1, got {repeats!r}")
    return Options(
        quick=quick,
        repeats=repeats,
        threads=threads or (1 if quick else cores()),
        budget_s=float(budget_s if budget_s is not None else (120 if quick else 900)),
        lengths=tuple(lengths or (QUICK_LENGTHS if quick else DEFAULT_LENGTHS)),
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        eval_n=eval_n or (8 if quick else 1000),
        eval_repeats=eval_repeats or (1 if quick else 5),
    )


def _carry_over(out: Path, quick: bool, sections: dict[str, Section],
                saved: dict[str, dict[str, Any]]) -> None:
    """Sections left out by ``only`` keep an earlier run's figures (noted as carried over)."""
    for key, earlier in earlier_sections(out, quick).items():
        if key not in sections:
            saved[key] = earlier
            sections[key] = Section(key, earlier["title"], earlier["target"], earlier["header"],
                                    earlier["rows"], earlier["notes"] + [
                                        f"Carried over from an earlier run ({earlier['run']})."],
                                    earlier["data"], earlier["seconds"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``captum-hetattn bench`` (also ``python -m captum_hetattn.bench``)."""
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.md"),
                        help="the report (Markdown; its data beside it as .json)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models: check the harness in seconds (numbers mean nothing)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                        help="run these sections only (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per median (5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds a long-context measurement may take (default 900)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="long-context tokens (default 512 2048 4096 8192)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where the models run (default: cpu)")
    parser.add_argument("--eval-n", type=int, default=None,
                        help="examples of the evaluation-speed section")
    parser.add_argument("--eval-repeats", type=int, default=None,
                        help="runs per median of the evaluation-speed section")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also write the headline table into this README's "
                             "bench-headline block")


def run_from_args(args: argparse.Namespace) -> int:
    """Run what :func:`add_arguments` parsed; print where the report went."""
    data = run_benchmarks(
        args.out, quick=args.quick, only=args.only, repeats=args.repeats, threads=args.threads,
        budget_s=args.budget, lengths=args.lengths, device=args.device, eval_n=args.eval_n,
        eval_repeats=args.eval_repeats, readme=args.readme,
    )
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')} "
          f"({data['total_seconds']:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    r"""``python -m captum_hetattn.bench`` (and ``--worker SPEC``: one long-context
    measurement, printed as JSON).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        int: the exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:  # one long-context measurement in a fresh process
        print(json.dumps(worker(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m captum_hetattn.bench",
                                     description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


__all__ = ["DEFAULT_LENGTHS", "QUICK_LENGTHS", "RUNNERS", "add_arguments", "main",
           "run_benchmarks", "run_from_args"]
