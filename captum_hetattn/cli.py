r"""``captum-hetattn``: demo report, evaluation and single explanations on the bundled zoo.

- ``captum-hetattn demo [--out DIR]``: on the trained two-stream VQA model, explain a few
  held-out examples with every method, evaluate all methods on a few hundred examples, write an
  offline HTML report, PNG figures and ``metrics.json``, and print the method table. The report
  also holds ours as image + text figures, the logical inspection of yes/no questions
  (``Contrast(yes, no)`` under ``full``: red/blue maps) and, inline, the head view, model view
  and relevance flow of one example (:mod:`captum_hetattn.visualization.views`).
- ``captum-hetattn evaluate --model NAME [--methods ...] [--n N]``: the table for any zoo model;
  ``--nproc N [--out-dir DIR]`` shards the examples over processes (resumable from ``DIR``);
  ``--task segmentation`` (``shapes_detr``) / ``--task logical`` (``shapes_vqa``): the paper's
  experiments in kind.
- ``captum-hetattn bench [--only ...] [--quick]``: the scale benchmarks, written to
  ``benchmarks/results.md``.
- ``captum-hetattn explain --model NAME [--index I] [--method M]``: token relevance of one
  example, printed (and drawn with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from captum_hetattn import bench
from captum_hetattn.evaluation import distributed, evaluate
from captum_hetattn.evaluation.demo import (
    DEMO_MODEL,
    DISPLAY_SEED,
    explain_examples,
    run_vqa_demo,
)
from captum_hetattn.evaluation.methods import check_method_names, methods_for, select_methods
from captum_hetattn.visualization.figures import figure_png
from captum_hetattn.visualization.report import method_figure, write_demo_report
from captum_hetattn.zoo import REGISTRY, load

DEMO_EXAMPLES = 300  # held-out examples of the demo's method table
DETECTION_SCENES = 60  # held-out scenes of the detection demo (shapes_detr)


def run_demo(out: Path, n: int, n_show: int, seed: int, with_ig: bool = True) -> dict:
    r"""Write the demo report into ``out``; print the method table.

    Args:
        out: the report's folder (made when missing).
        n: examples of the method table.
        n_show: examples drawn in the report.
        seed: the evaluation's seed.
        with_ig: also IntegratedGradients.

    Returns:
        dict: the metrics written to ``metrics.json``.
    """
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    demo = run_vqa_demo(n, n_show, seed, with_ig=with_ig)
    metrics = write_demo_report(out, demo, n=n, seed=seed, started=start)
    print(demo.evaluation.table())
    print(f"\nreport: {out / 'report.html'}  ({metrics['seconds']:.0f} s)")
    return metrics


#: ``explain --index`` draws that many examples first (they come in order from the seed)
EXPLAIN_INDEX_LIMIT = 10_000


def run_explain(name: str, index: int, method_name: str, seed: int, out: Path | None) -> None:
    r"""Print one method's token relevance of one zoo example (and draw it into ``out``).

    Args:
        name: the zoo model.
        index: which example (drawn with ``seed``).
        method_name: a display name of :func:`~captum_hetattn.evaluation.standard_methods`.
        seed: the examples' seed.
        out: a folder for the figure, or None.
    """
    zoo = load(name)
    methods = select_methods([method_name])
    example = zoo.make_examples(index + 1, seed)[index]
    relevance = explain_examples(zoo, [example], methods)
    print(example.description or f"example {index} of {name}")
    for stream, values in relevance[method_name].items():
        labels = example.tokens.get(stream) or [str(i) for i in range(values.shape[1])]
        pairs = ", ".join(f"{t}={v:.3g}" for t, v in zip(labels, values[0].tolist(), strict=False))
        print(f"  {stream}: {pairs}")
    if not relevance[method_name]:
        raise ValueError(f"method '{method_name}' produced no relevance for {name} example {index}")
    if out is not None:
        figure = method_figure(zoo, example, method_name, relevance[method_name])
        if figure is None:
            raise ValueError(f"no figure can be drawn for {name} with {method_name} (no picture "
                             "or no image relevance); leave out --out")
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}_{index}.png").write_bytes(figure_png(figure))
        print(f"figure: {out / f'{name}_{index}.png'}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default where there is one to show (not ``None``, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    r"""The ``captum-hetattn`` parser and its commands' parsers (``--help`` of each lists every
    option with what it does and its default).

    Returns:
        ``(parser, {command: subparser})``.
    """
    parser = argparse.ArgumentParser(
        prog="captum-hetattn", description=__doc__.split("\n")[0].replace("``", ""),
        epilog="captum-hetattn COMMAND --help: that command's options and their defaults")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = _HelpFormatter
    built = {
        "demo": commands.add_parser(
            "demo", formatter_class=formatter, help="the main job: report on the bundled VQA model",
            description="Explain held-out examples of the bundled model with every method, score "
                        "every method, write an offline HTML report, figures and metrics.json."),
        "evaluate": commands.add_parser(
            "evaluate", formatter_class=formatter, help="method table for a zoo model",
            description="Score attribution methods on a zoo model's held-out examples (pointing "
                        "game, relevance mass, AUC, segmentation IoU, perturbation AUCs)."),
        "bench": commands.add_parser(
            "bench", formatter_class=formatter,
            help="scale benchmarks -> benchmarks/results.md"),
        "explain": commands.add_parser(
            "explain", formatter_class=formatter, help="token relevance of one zoo example",
            description="Print the token relevance of one held-out example of a zoo model "
                        "(and draw it with --out)."),
    }
    _demo_arguments(built["demo"])
    _evaluate_arguments(built["evaluate"])
    bench.add_arguments(built["bench"])
    _explain_arguments(built["explain"])
    return parser, built


def _method_names() -> str:
    from captum_hetattn.evaluation.methods import standard_methods

    return ", ".join(repr(name) for name in standard_methods())


def _demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--out", type=Path, default=Path("hetattn-report"),
                      help="the report's folder")
    demo.add_argument("--n", type=int, default=None,
                      help=f"examples for the method table (default {DEMO_EXAMPLES}); with "
                           f"--model shapes_detr, held-out scenes (default {DETECTION_SCENES})")
    demo.add_argument("--show", type=int, default=6, help="examples drawn in the report")
    demo.add_argument("--seed", type=int, default=12345, help="seed of the held-out examples")
    demo.add_argument("--no-ig", action="store_true", help="skip IntegratedGradients")
    demo.add_argument("--force", action="store_true", help="write into a non-empty --out")
    demo.add_argument("--model", choices=[DEMO_MODEL, "shapes_detr"], default=DEMO_MODEL,
                      help="shapes_detr: the detection report (the paper's segmentation "
                           "Tables 1-2, Fig. 2-4-like figures, logical inspection)")


def _evaluate_arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--model", choices=sorted(REGISTRY), default=DEMO_MODEL,
                    help="the zoo model")
    ev.add_argument("--methods", nargs="*", default=None, metavar="METHOD",
                    help=f"methods to score, by name ({_method_names()}); default: every one "
                         "that applies to the model (Captum's gradient methods need float "
                         "inputs)")
    ev.add_argument("--n", type=int, default=200, help="held-out examples")
    ev.add_argument("--seed", type=int, default=12345, help="seed of the held-out examples")
    ev.add_argument("--no-perturbation", action="store_true",
                    help="skip the perturbation tests (the slowest part)")
    ev.add_argument("--json", type=Path, default=None, help="also write the result here")
    ev.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    ev.add_argument("--task", choices=["methods", "segmentation", "logical"], default="methods",
                    help="segmentation: the paper's Tables 1-2 (--model shapes_detr); logical: "
                         "logical inspection (--model shapes_vqa)")
    ev.add_argument("--out", type=Path, default=None, help="figures of --task segmentation")
    distributed.add_arguments(ev, with_common=False)  # --nproc, --out-dir, --shard-size


def _explain_arguments(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("--model", choices=sorted(REGISTRY), default=DEMO_MODEL,
                    help="the zoo model")
    ex.add_argument("--index", type=int, default=0, help="which held-out example")
    ex.add_argument("--method", default="ours (pos)", metavar="METHOD",
                    help=f"the method, by name ({_method_names()})")
    ex.add_argument("--seed", type=int, default=DISPLAY_SEED,
                    help="seed of the held-out examples")
    ex.add_argument("--out", type=Path, default=None,
                    help="a folder: also draw the example there (PNG)")


def main(argv: Sequence[str] | None = None) -> int:
    r"""``captum-hetattn``: parse the command line, check it, run the command.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        int: the exit status (1 on a reported error).
    """
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    problem = _check_arguments(args)
    if problem:
        commands[args.command].error(problem)
    torch.manual_seed(0)
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as err:
        print(f"captum-hetattn {args.command}: error: {err}", file=sys.stderr)
        return 1


def _check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, found before any work starts."""
    for key, low in (("n", 1), ("show", 0), ("seed", 0), ("index", 0), ("nproc", 1),
                     ("shard_size", 1), ("repeats", 1)):
        value = getattr(args, key, None)
        if value is not None and value < low:
            return f"--{key} must be ≥ {low}, got {value}"
    if getattr(args, "methods", None) or getattr(args, "method", None):
        problem = check_method_names(args.methods if args.command == "evaluate" else [args.method])
        if problem:
            return problem
    task = getattr(args, "task", "methods")
    needs = {"segmentation": "shapes_detr", "logical": DEMO_MODEL}.get(task)
    if args.command == "evaluate" and needs is not None and args.model != needs:
        return f"--task {task} needs --model {needs}, got {args.model}"
    if args.command == "evaluate" and task == "methods" and args.model == "shapes_detr":
        return "shapes_detr is evaluated with --task segmentation"
    if args.command == "evaluate" and task != "methods" and distributed.wants_distributed(args):
        return "--nproc / --out-dir work with --task methods"
    if args.command == "evaluate" and args.out is not None:
        problem = _writable_dir(args.out, True)
        if problem:
            return problem
    force = getattr(args, "force", False)
    if args.command == "demo":
        return _writable_dir(args.out, force)
    if args.command == "evaluate" and args.json is not None:
        if args.json.exists() and not force:
            return f"{args.json} exists; pass --force to overwrite it"
        return _writable_dir(args.json.parent, True, "--json's folder")
    if args.command == "explain" and args.index >= EXPLAIN_INDEX_LIMIT:
        return (f"--index must be < {EXPLAIN_INDEX_LIMIT}, got {args.index}: explain draws "
                "examples 0..index in order from --seed (pick another --seed for others)")
    if args.command == "explain" and args.out is not None:
        return _writable_dir(args.out, True)
    return None


def _writable_dir(path: Path, force: bool, what: str = "--out") -> str | None:
    if path.exists() and not path.is_dir():
        return f"{what} {path} is a file, not a folder"
    # a folder holding an earlier report is this command's own: rewritten without asking
    own = (path / "report.html").exists()
    if path.is_dir() and any(path.iterdir()) and not (force or own):
        return f"{what} {path} is not empty; pass --force to write into it"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{what} {path} cannot be made: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK):
        return f"{what} {path} cannot be written ({existing} is not writable)"
    return None


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo" and args.model == "shapes_detr":
        from captum_hetattn.evaluation.logical import format_logical
        from captum_hetattn.evaluation.segmentation import format_tables, run_detection_demo

        result = run_detection_demo(args.out, n=args.n or DETECTION_SCENES, seed=args.seed)
        print(format_tables(result["segmentation"], with_paper=True))
        print(format_logical(result["logical"]))
        print(f"\nreport: {result['report']}  ({result['seconds']:.0f} s)")
    elif args.command == "demo":
        run_demo(args.out, args.n or DEMO_EXAMPLES, args.show, args.seed, with_ig=not args.no_ig)
    elif args.command == "evaluate" and args.task in ("segmentation", "logical"):
        from captum_hetattn.evaluation.logical import format_logical, run_logical_inspection
        from captum_hetattn.evaluation.segmentation import format_tables, run_segmentation

        if args.task == "segmentation":
            found = run_segmentation(args.model, n=args.n, seed=args.seed, out_dir=args.out)
            print(format_tables(found, with_paper=True))
        else:
            found = run_logical_inspection(args.model, n=args.n, seed=args.seed)
            print(format_logical(found))
        if args.json:
            args.json.write_text(json.dumps(
                {k: v for k, v in found.items() if k != "figure_png"}, indent=1))
    elif args.command == "evaluate":
        zoo = load(args.model)
        methods = methods_for(zoo, args.methods)  # no gradient methods on token ids alone
        if distributed.wants_distributed(args):  # shards over processes, resumable
            result = distributed.evaluate_cli(args, list(methods))
        else:
            result = evaluate(zoo, methods, n=args.n, seed=args.seed,
                              perturbation=not args.no_perturbation)
        print(result.table())
        if args.json:
            args.json.write_text(json.dumps(result.to_dict(), indent=1))
    elif args.command == "bench":
        return bench.run_from_args(args)
    else:
        run_explain(args.model, args.index, args.method, args.seed, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
