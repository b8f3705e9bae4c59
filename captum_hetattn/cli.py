r"""``captum-hetattn``: demo report, evaluation and single explanations on the bundled zoo.

- ``captum-hetattn demo [--out DIR]``: on the trained two-stream VQA model, explain a few
  held-out examples with every method, evaluate all methods on a few hundred examples, write an
  offline HTML report, PNG figures and ``metrics.json``, and print the method table. The report
  also holds ours as image + text figures, the logical inspection of yes/no questions
  (``Contrast(yes, no)`` under ``full``: red/blue maps) and, inline, the head view, model view
  and relevance flow of one example (:mod:`captum_hetattn.views`).
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

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from captum_hetattn import bench
from captum_hetattn.attribution import Explanation, HeterogenousAttentionAttribution
from captum_hetattn.evaluation import EvaluationResult, distributed, evaluate, standard_methods
from captum_hetattn.evaluation.methods import Method
from captum_hetattn.mapping import PatchGrid
from captum_hetattn.objectives import Contrast
from captum_hetattn.visualization import (
    draw_overlay,
    explanation_readout_token,
    figure_png,
    grid_heatmap,
    plot_explanation,
    png_tag,
    report_html,
    text_html,
)
from captum_hetattn.zoo import REGISTRY, Example, ZooModel, load

DEMO_MODEL = "shapes_vqa"
DISPLAY_SEED = 2024  # examples drawn for pictures; the table uses the evaluation seed
#: examples drawn (with DISPLAY_SEED) to find yes/no questions for the logical inspection
INSPECTION_POOL = 24


def image_grid(zoo: ZooModel, n_tokens: int) -> PatchGrid | None:
    """How the image stream's tokens lie over the picture (from the model's input mapping)."""
    for mapping in zoo.input_mappings or ():
        if isinstance(mapping, PatchGrid):
            return mapping
    side = int(round(n_tokens**0.5))
    if side * side == n_tokens:  # one region per grid cell (shapes_vqa)
        return PatchGrid("image", prefix_tokens=0, grid=(side, side), interpolation="nearest")
    return None


def select_methods(names: Sequence[str] | None, with_ig: bool = True) -> dict[str, Method]:
    methods = standard_methods(include_integrated_gradients=with_ig)
    if not names:
        return methods
    unknown = [n for n in names if n not in methods]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {sorted(methods)}")
    return {n: methods[n] for n in names}


def explain_examples(
    zoo: ZooModel, examples: list[Example], methods: dict[str, Method]
) -> dict[str, dict[str, Tensor]]:
    batch = zoo.collate(examples)
    return {name: method(zoo, batch) for name, method in methods.items()}


def example_figure(
    zoo: ZooModel, example: Example, index: int, relevance: dict[str, dict[str, Tensor]]
) -> bytes | None:
    """The picture with each method's image relevance blended over it."""
    if example.image is None:
        return None
    methods = [m for m in relevance if "image" in relevance[m]]
    columns = 1 + len(methods)
    figure, axes = plt.subplots(1, columns, figsize=(1.9 * columns, 2.3))
    axes[0].imshow(example.image)
    axes[0].set_axis_off()
    axes[0].set_title("input", fontsize=8)
    for axis, method in zip(axes[1:], methods, strict=True):
        tokens = relevance[method]["image"][index]
        grid = image_grid(zoo, tokens.shape[0])
        if grid is None:
            axis.set_axis_off()
            continue
        heat = grid_heatmap(tokens, example.image.shape[:2], grid)
        draw_overlay(axis, example.image, heat, method)
    return figure_png(figure)


def explainer(zoo: ZooModel) -> HeterogenousAttentionAttribution:
    return HeterogenousAttentionAttribution(
        zoo.forward_func, model=zoo.model, graph=zoo.graph, input_mappings=zoo.input_mappings
    )


def explain_with_maps(zoo: ZooModel, examples: list[Example]) -> Explanation:
    """Ours (pos) on ``examples`` with every call's maps kept (for the views)."""
    batch = zoo.collate(examples)
    return explainer(zoo).explain(
        batch.inputs, target=batch.targets, additional_forward_args=batch.additional_forward_args,
        correction="pos", return_maps=True,
    )


def image_text_figure(
    zoo: ZooModel, example: Example, index: int, explanation: Explanation
) -> bytes | None:
    """Ours (pos) of one example: the image overlay beside the coloured question tokens, the
    readout token greyed."""
    tokens = example.tokens.get("text")
    if example.image is None or not tokens or "text" not in explanation.relevance:
        return None
    image = explanation.relevance.get("image")
    grid = image_grid(zoo, image.shape[1]) if image is not None else None
    figure = plot_explanation(explanation, index, example.image, tokens, grid=grid,
                              title=f"ours (pos): {example.description}")
    return figure_png(figure)


def yes_no_examples(pool: list[Example]) -> list[Example]:
    """The first example of ``pool`` whose answer is "yes" and the first whose answer is "no"
    (fewer when the pool lacks one)."""
    from captum_hetattn.zoo.shapes_vqa import ANSWER_ID

    chosen: list[Example] = []
    for answer in ("yes", "no"):
        chosen += [e for e in pool if e.label == ANSWER_ID[answer]][:1]
    return chosen


def logical_inspection_figure(zoo: ZooModel, examples: list[Example]) -> bytes | None:
    r"""The paper's Fig. 8 on yes/no questions: ``Contrast(yes, no)`` under the ``full``
    correction, red = evidence for "yes", blue = evidence for "no"."""
    from captum_hetattn.zoo.shapes_vqa import ANSWER_ID

    if not examples or any(e.image is None or not e.tokens.get("text") for e in examples):
        return None
    batch = zoo.collate(examples)
    objective = Contrast(ANSWER_ID["yes"], ANSWER_ID["no"])
    explanation = explainer(zoo).explain(
        batch.inputs, objective=objective, correction="full",
        additional_forward_args=batch.additional_forward_args,
    )
    with torch.no_grad():
        margin = objective(zoo.forward_func(*batch.inputs, *batch.additional_forward_args))
    image = explanation.relevance.get("image")
    grid = image_grid(zoo, image.shape[1]) if image is not None else None
    figure, axes = plt.subplots(
        len(examples), 3, figsize=(8.0, 2.7 * len(examples)), squeeze=False,
        gridspec_kw={"width_ratios": (1.0, 1.0, 1.6)},
    )
    for row, example in enumerate(examples):
        plot_explanation(
            explanation, row, example.image, example.tokens["text"], signed=True, grid=grid,
            answers=("yes", "no"), axes=list(axes[row]),
        )
        axes[row][2].set_title(
            f"{example.description}   (logit yes − no: {float(margin[row]):+.2f})", fontsize=8
        )
    figure.tight_layout()
    return figure_png(figure)


def views_html(zoo: ZooModel, example: Example, explanation: Explanation, index: int) -> str:
    """Head view, model view and relevance flow of one example, inline (no external file)."""
    from captum_hetattn.views import head_view, model_view, relevance_flow

    grids = {}
    image = explanation.relevance.get("image")
    if image is not None:
        grid = image_grid(zoo, image.shape[1])
        if grid is not None:
            grids["image"] = grid
    tokens = {s: list(t) for s, t in example.tokens.items() if t}
    parts = [
        "<h3>Head view</h3><p>Per attention call and head: lines from query tokens to the key "
        "tokens they attend to (raw A, corrected f(G)⊙A, or the gradient).</p>",
        head_view(explanation, tokens, example=index, grids=grids)._repr_html_(),
        "<h3>Model view</h3><p>Every head of every call, by node type and stream pair; click a "
        "thumbnail for its head view.</p>",
        model_view(explanation, tokens, example=index, grids=grids)._repr_html_(),
        "<h3>Relevance flow</h3><p>How the readout's relevance is shared between the sources "
        "after each step of the layer graph (the readout token's own share left out).</p>",
        relevance_flow(explanation, example=index)._repr_html_(),
    ]
    return "".join(parts)


def curves_figure(result: EvaluationResult) -> bytes:
    streams = sorted({s for m in result.methods for s, v in m.streams.items() if v.fractions})
    figure, axes = plt.subplots(
        len(streams) or 1, 2, figsize=(10, 3.2 * max(len(streams), 1)), squeeze=False
    )
    for row, stream in enumerate(streams):
        for column, kind in enumerate(("positive", "negative")):
            axis = axes[row][column]
            for entry in result.methods:
                scores = entry.streams.get(stream)
                if scores is None or not scores.fractions:
                    continue
                curve = getattr(scores, f"{kind}_curve")
                axis.plot(scores.fractions, curve, marker=".", label=entry.method)
            better = "lower" if kind == "positive" else "higher"
            axis.set_title(f"{stream}: {kind} perturbation ({better} is better)", fontsize=9)
            axis.set_xlabel("fraction of tokens removed")
            axis.set_ylabel("accuracy")
    if streams:
        axes[0][1].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    return figure_png(figure)


def table_html(result: EvaluationResult) -> str:
    head = (
        "<tr><th class='name'>method</th><th>stream</th><th>pointing game</th><th>chance</th>"
        "<th>relevance mass</th><th>evidence AUC</th><th>IoU (Otsu)</th><th>IoU (0.3 Otsu)</th>"
        "<th>positive AUC ↓</th>"
        "<th>negative AUC ↑</th><th>ms / example</th></tr>"
    )
    rows = []
    for entry in result.methods:
        for stream, s in entry.streams.items():
            if s.pointing_game != s.pointing_game and s.positive_auc != s.positive_auc:
                continue  # nothing measured on this stream
            cells = [s.pointing_game, s.pointing_chance, s.relevance_mass, s.evidence_auc,
                     s.segmentation_iou, s.segmentation_iou_03]
            cells_text = [f"{v:.3f}" if v == v else "—" for v in cells]
            aucs = [f"{v:.1f}" if v == v else "—" for v in (s.positive_auc, s.negative_auc)]
            rows.append(
                f"<tr><td class='name'>{entry.method}</td><td>{stream}</td>"
                + "".join(f"<td>{c}</td>" for c in cells_text + aucs)
                + f"<td>{entry.seconds_per_example * 1000:.2f}</td></tr>"
            )
    return f"<table>{head}{''.join(rows)}</table>"


def run_demo(out: Path, n: int, n_show: int, seed: int, with_ig: bool = True) -> dict:
    """Write the demo report into ``out``; return the metrics."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    zoo = load(DEMO_MODEL)
    methods = select_methods(None, with_ig=with_ig)
    # the same seed draws the same examples first: the shown ones are the pool's first n_show
    pool = zoo.make_examples(max(n_show, INSPECTION_POOL), DISPLAY_SEED)
    shown = pool[:n_show]
    relevance = explain_examples(zoo, shown, methods) if shown else {}
    # ours (pos) with its maps, for the image + text figures, the readout token and the views
    maps_examples = shown or pool[:1]
    explanation = explain_with_maps(zoo, maps_examples)
    sections = [
        f"<p>Model <b>{zoo.name}</b> (LXMERT architecture trained on synthetic shapes; see "
        "<code>captum_hetattn.zoo</code>). Every method explains the same examples; the table "
        f"scores all of them on the same {n} held-out examples (seed {seed}).</p>"
    ]
    example_sections = []
    for index, example in enumerate(shown):
        png = example_figure(zoo, example, index, relevance)
        parts = [f"<h3>Example {index}: {example.description}</h3>"]
        if png is not None:
            (out / "figures" / f"example_{index}.png").write_bytes(png)
            parts.append(png_tag(png, f"example {index}"))
        text_tokens = example.tokens.get("text")
        if text_tokens:
            # the readout token's own share (1 for the attention methods) would wash out the rest
            readout = explanation_readout_token(explanation, "text", index)
            rows = "".join(
                f"<tr><td class='name'>{m}</td><td class='name'>"
                f"{text_html(text_tokens, relevance[m]['text'][index], readout)}</td></tr>"
                for m in relevance if "text" in relevance[m]
            )
            parts.append(f"<table>{rows}</table>")
        combined = image_text_figure(zoo, example, index, explanation)
        if combined is not None:
            (out / "figures" / f"example_{index}_image_text.png").write_bytes(combined)
            parts.append(png_tag(combined, f"example {index}: image and text"))
        example_sections.append(f"<div class='example'>{''.join(parts)}</div>")
    inspection = logical_inspection_figure(zoo, yes_no_examples(pool))
    if inspection is not None:
        (out / "figures" / "logical_inspection.png").write_bytes(inspection)
    views_example = maps_examples[0]
    views = views_html(zoo, views_example, explanation, 0)
    result = evaluate(zoo, methods, n=n, seed=seed)
    curves = curves_figure(result)
    (out / "figures" / "perturbation_curves.png").write_bytes(curves)
    sections += [
        "<h2>Method table</h2>",
        f"<p>Model accuracy on these examples: {result.model_score:.3f}. Pointing game: share of "
        "examples whose most relevant token is evidence (chance: evidence share). Perturbation: "
        "accuracy while removing tokens, most relevant first (positive, lower AUC is better) or "
        "least relevant first (negative, higher is better).</p>",
        table_html(result),
        png_tag(curves, "perturbation curves"),
        "<h2>Examples</h2>",
        "<p>Text rows and the image + text figures (ours, pos correction) leave the readout "
        "token's own share out (drawn grey): its identity entry would swamp every other token.</p>",
        *example_sections,
    ]
    if inspection is not None:
        sections += [
            "<h2 id='logical-inspection'>Logical inspection: why “yes” rather than “no”?</h2>",
            "<p>Objective <code>Contrast(yes, no)</code> (logit of “yes” minus logit of “no”) "
            "under the <code>full</code> correction, so the sign survives: <b style='color:#c00'>"
            "red</b> is evidence for “yes”, <b style='color:#00c'>blue</b> evidence for “no” "
            "(the paper's Fig. 8). Each stream has its own symmetric scale.</p>",
            png_tag(inspection, "logical inspection"),
        ]
    sections += [
        "<h2 id='views'>Interactive views</h2>",
        f"<p>Ours (pos) on “{views_example.description}”.</p>",
        views,
    ]
    metrics = {
        "model": zoo.name,
        "evaluation": result.to_dict(),
        "methods": list(methods),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "report.html").write_text(report_html("captum-hetattn demo", sections))
    print(result.table())
    print(f"\nreport: {out / 'report.html'}  ({metrics['seconds']:.0f} s)")
    return metrics


def run_explain(name: str, index: int, method_name: str, seed: int, out: Path | None) -> None:
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
        png = example_figure(zoo, example, 0, relevance)
        if png is None:
            raise ValueError(f"no figure can be drawn for {name} (its inputs have no picture); "
                             "leave out --out")
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}_{index}.png").write_bytes(png)
        print(f"figure: {out / f'{name}_{index}.png'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="captum-hetattn", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the main job: report on the bundled VQA model")
    demo.add_argument("--out", type=Path, default=Path("hetattn-report"))
    demo.add_argument("--n", type=int, default=300, help="examples for the method table")
    demo.add_argument("--show", type=int, default=6, help="examples drawn in the report")
    demo.add_argument("--seed", type=int, default=12345)
    demo.add_argument("--no-ig", action="store_true", help="skip IntegratedGradients")
    demo.add_argument("--force", action="store_true", help="write into a non-empty --out")
    demo.add_argument("--model", choices=[DEMO_MODEL, "shapes_detr"], default=DEMO_MODEL,
                      help="shapes_detr: the detection report (the paper's segmentation "
                           "Tables 1-2, Fig. 2-4-like figures, logical inspection)")
    ev = commands.add_parser("evaluate", help="method table for a zoo model")
    ev.add_argument("--model", choices=sorted(REGISTRY), default=DEMO_MODEL)
    ev.add_argument("--methods", nargs="*", default=None)
    ev.add_argument("--n", type=int, default=200)
    ev.add_argument("--seed", type=int, default=12345)
    ev.add_argument("--no-perturbation", action="store_true")
    ev.add_argument("--json", type=Path, default=None, help="also write the result here")
    ev.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    ev.add_argument("--task", choices=["methods", "segmentation", "logical"], default="methods",
                    help="segmentation: the paper's Tables 1-2 (--model shapes_detr); logical: "
                         "logical inspection (--model shapes_vqa)")
    ev.add_argument("--out", type=Path, default=None, help="figures of --task segmentation")
    distributed.add_arguments(ev, with_common=False)  # --nproc, --out-dir, --shard-size
    be = commands.add_parser("bench", help="scale benchmarks -> benchmarks/results.md")
    bench.add_arguments(be)
    ex = commands.add_parser("explain", help="token relevance of one zoo example")
    ex.add_argument("--model", choices=sorted(REGISTRY), default=DEMO_MODEL)
    ex.add_argument("--index", type=int, default=0)
    ex.add_argument("--method", default="ours (pos)")
    ex.add_argument("--seed", type=int, default=DISPLAY_SEED)
    ex.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    problem = _check_arguments(args)
    if problem:
        {"demo": demo, "evaluate": ev, "explain": ex, "bench": be}[args.command].error(problem)
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
        known = standard_methods(include_integrated_gradients=True)
        names = args.methods if args.command == "evaluate" else [args.method]
        unknown = [m for m in names if m not in known]
        if unknown:
            return f"unknown method(s) {unknown}; choose from {sorted(known)}"
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
    if not os.access(existing, os.W_OK):
        return f"{what} {path} cannot be written ({existing} is not writable)"
    return None


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo" and args.model == "shapes_detr":
        from captum_hetattn.evaluation.logical import format_logical
        from captum_hetattn.evaluation.segmentation import format_tables, run_detection_demo

        result = run_detection_demo(args.out, seed=args.seed)
        print(format_tables(result["segmentation"], with_paper=True))
        print(format_logical(result["logical"]))
        print(f"\nreport: {result['report']}  ({result['seconds']:.0f} s)")
    elif args.command == "demo":
        run_demo(args.out, args.n, args.show, args.seed, with_ig=not args.no_ig)
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
        methods = select_methods(args.methods)
        if distributed.wants_distributed(args):  # shards over processes, resumable
            result = distributed.evaluate_cli(args, list(methods))
        else:
            result = evaluate(load(args.model), methods, n=args.n, seed=args.seed,
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
