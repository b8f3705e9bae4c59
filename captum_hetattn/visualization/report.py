r"""The report of ``captum-hetattn demo`` (the two-stream VQA model): every method's image overlay
and text row per example, ours as image + text figures, the perturbation curves and the method
table, the logical inspection's red/blue maps and, inline, the head view, model view and relevance
flow of one example. The work it draws is :func:`captum_hetattn.evaluation.demo.run_vqa_demo`.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor

from captum_hetattn import Explanation, PatchGrid
from captum_hetattn.visualization.colors import explanation_readout_token
from captum_hetattn.visualization.figures import (
    draw_overlay,
    figure_png,
    grid_heatmap,
    plot_explanation,
    plot_image,
    plot_image_text,
)
from captum_hetattn.visualization.html import png_tag, report_html, text_html

if TYPE_CHECKING:
    from captum_hetattn.evaluation.demo import DemoRun, Inspection
    from captum_hetattn.evaluation.runner import EvaluationResult
    from captum_hetattn.zoo import Example, ZooModel


def image_grid(zoo: ZooModel, n_tokens: int) -> PatchGrid | None:
    r"""How the image stream's tokens lie over the picture (from the model's input mapping).

    Args:
        zoo: the zoo model.
        n_tokens: the image stream's token count.

    Returns:
        PatchGrid or None: None when neither a mapping nor a square count gives one.
    """
    for mapping in zoo.input_mappings or ():
        if isinstance(mapping, PatchGrid):
            return mapping
    side = int(round(n_tokens**0.5))
    if side * side == n_tokens:  # one region per grid cell (shapes_vqa)
        return PatchGrid("image", prefix_tokens=0, grid=(side, side), interpolation="nearest")
    return None


#: pictures per row of :func:`example_figure`
THUMBNAILS_PER_ROW = 6


def example_figure(
    zoo: ZooModel, example: Example, index: int, relevance: dict[str, dict[str, Tensor]]
) -> bytes | None:
    r"""The picture with each method's image relevance blended over it.

    Args:
        zoo: the zoo model.
        example: the example drawn.
        index: its row in ``relevance``.
        relevance: method → stream → ``(B, n_stream)`` relevance.

    Returns:
        bytes or None: the PNG; None when the example has no picture.
    """
    if example.image is None:
        return None
    methods = [m for m in relevance if "image" in relevance[m]]
    # at most THUMBNAILS_PER_ROW pictures a row: the report shows the figure at its own size,
    # so the titles stay readable (12 in one row were shrunk to ~6 px)
    columns = min(THUMBNAILS_PER_ROW, 1 + len(methods))
    rows = -(-(1 + len(methods)) // columns)
    figure, grid_axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.3 * rows),
                                     squeeze=False)
    axes = list(grid_axes.flat)
    for unused in axes[1 + len(methods):]:
        unused.set_axis_off()
    axes[0].imshow(example.image)
    axes[0].set_axis_off()
    axes[0].set_title("input", fontsize=8)
    for axis, method in zip(axes[1:], methods, strict=False):
        tokens = relevance[method]["image"][index]
        grid = image_grid(zoo, tokens.shape[0])
        if grid is None:
            axis.set_axis_off()
            continue
        heat = grid_heatmap(tokens, example.image.shape[:2], grid)
        draw_overlay(axis, example.image, heat, method)
    return figure_png(figure)


def method_figure(
    zoo: ZooModel, example: Example, method: str, relevance: Mapping[str, Tensor]
) -> Figure | None:
    r"""One method's relevance of one example (``captum-hetattn explain --out``): the picture
    with its relevance blended over it and a colour bar, beside the text tokens coloured by
    their relevance where the example has text.

    Args:
        zoo: the zoo model.
        example: the example drawn.
        method: the method's name (the title).
        relevance: stream → ``(1, n_stream)`` relevance of the example.

    Returns:
        The figure; None when the example has no picture or the method no image relevance.
    """
    image = relevance.get("image")
    if example.image is None or image is None:
        return None
    grid = image_grid(zoo, image.shape[1])
    title = f"{method}: {example.description}" if example.description else method
    tokens, text = example.tokens.get("text"), relevance.get("text")
    if not tokens or text is None:
        return plot_image(example.image, image[0], grid=grid, title=title)
    return plot_image_text(example.image, image[0], tokens, text[0], grid=grid, title=title)


def image_text_figure(
    zoo: ZooModel, example: Example, index: int, explanation: Explanation
) -> bytes | None:
    r"""Ours (pos) of one example: the image overlay beside the coloured question tokens, the
    readout token greyed.

    Args:
        zoo: the zoo model.
        example: the example drawn.
        index: its row in ``explanation``.
        explanation: ours (pos).

    Returns:
        bytes or None: the PNG; None without a picture or text.
    """
    tokens = example.tokens.get("text")
    if example.image is None or not tokens or "text" not in explanation.relevance:
        return None
    image = explanation.relevance.get("image")
    grid = image_grid(zoo, image.shape[1]) if image is not None else None
    figure = plot_explanation(explanation, index, example.image, tokens, grid=grid,
                              title=f"ours (pos): {example.description}")
    return figure_png(figure)


def logical_inspection_figure(zoo: ZooModel, inspection: Inspection) -> bytes:
    r"""The paper's Fig. 8 on yes/no questions: red = evidence for "yes", blue = for "no".

    Args:
        zoo: the zoo model.
        inspection: ``Contrast(yes, no)`` under ``full`` on the questions.

    Returns:
        bytes: the PNG, one row per question.
    """
    examples, explanation = inspection.examples, inspection.explanation
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
            f"{example.description}   (logit yes − no: {float(inspection.margin[row]):+.2f})",
            fontsize=8,
        )
    figure.tight_layout()
    return figure_png(figure)


def views_html(zoo: ZooModel, example: Example, explanation: Explanation, index: int) -> str:
    r"""Head view, model view and relevance flow of one example, inline (no external file).

    Args:
        zoo: the zoo model.
        example: the example (its tokens label the views).
        explanation: with ``call_maps``.
        index: the example's row in ``explanation``.

    Returns:
        str: the HTML.
    """
    from captum_hetattn.visualization.views import head_view, model_view, relevance_flow

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
    r"""Accuracy while removing tokens, per stream: most relevant first (positive) and least
    relevant first (negative), one curve per method.

    Args:
        result: the method table.

    Returns:
        bytes: the PNG.
    """
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
    r"""The method table as an HTML ``<table>`` (one row per method and stream measured).

    Args:
        result: the method table.

    Returns:
        str: the HTML.
    """
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


def example_section(demo: DemoRun, index: int, figures: Path) -> str:
    r"""One shown example: every method's image overlay, text rows and ours as image + text;
    its figures written into ``figures``.

    Args:
        demo: the demo's results.
        index: which shown example.
        figures: the report's figure folder.

    Returns:
        str: the example's ``<div>``.
    """
    example, relevance = demo.shown[index], demo.relevance
    png = example_figure(demo.zoo, example, index, relevance)
    parts = [f"<h3>Example {index}: {example.description}</h3>"]
    if png is not None:
        (figures / f"example_{index}.png").write_bytes(png)
        parts.append(png_tag(png, f"example {index}"))
    text_tokens = example.tokens.get("text")
    if text_tokens:
        # the readout token's own share (1 for the attention methods) would wash out the rest
        readout = explanation_readout_token(demo.explanation, "text", index)
        rows = "".join(
            f"<tr><td class='name'>{m}</td><td class='name'>"
            f"{text_html(text_tokens, relevance[m]['text'][index], readout)}</td></tr>"
            for m in relevance if "text" in relevance[m]
        )
        parts.append(f"<table>{rows}</table>")
    combined = image_text_figure(demo.zoo, example, index, demo.explanation)
    if combined is not None:
        (figures / f"example_{index}_image_text.png").write_bytes(combined)
        parts.append(png_tag(combined, f"example {index}: image and text"))
    return f"<div class='example'>{''.join(parts)}</div>"


def _table_sections(result: EvaluationResult, curves: bytes) -> list[str]:
    return [
        "<h2>Method table</h2>",
        f"<p>Model accuracy on these examples: {result.model_score:.3f}. Pointing game: share of "
        "examples whose most relevant token is evidence (chance: evidence share). Perturbation: "
        "accuracy while removing tokens, most relevant first (positive, lower AUC is better) or "
        "least relevant first (negative, higher is better).</p>",
        table_html(result),
        png_tag(curves, "perturbation curves"),
    ]


def _inspection_sections(inspection: bytes) -> list[str]:
    return [
        "<h2 id='logical-inspection'>Logical inspection: why “yes” rather than “no”?</h2>",
        "<p>Objective <code>Contrast(yes, no)</code> (logit of “yes” minus logit of “no”) "
        "under the <code>full</code> correction, so the sign survives: <b style='color:#c00'>"
        "red</b> is evidence for “yes”, <b style='color:#00c'>blue</b> evidence for “no” "
        "(the paper's Fig. 8). Each stream has its own symmetric scale.</p>",
        png_tag(inspection, "logical inspection"),
    ]


def write_demo_report(out: Path, demo: DemoRun, *, n: int, seed: int,
                      started: float) -> dict[str, Any]:
    r"""Draw the demo and write ``report.html``, ``figures/*.png`` and ``metrics.json`` into
    ``out`` (which exists, with its ``figures`` folder).

    Args:
        out: the report's folder.
        demo: the demo's results (:func:`~captum_hetattn.evaluation.demo.run_vqa_demo`).
        n: examples of the method table.
        seed: the evaluation's seed.
        started: ``time.perf_counter()`` when the demo began (the metrics' ``seconds``).

    Returns:
        dict: the metrics (``model``, ``evaluation``, ``methods``, ``seconds``).
    """
    figures, zoo, result = out / "figures", demo.zoo, demo.evaluation
    sections = [
        f"<p>Model <b>{zoo.name}</b> (LXMERT architecture trained on synthetic shapes; see "
        "<code>captum_hetattn.zoo</code>). Every method explains the same examples; the table "
        f"scores all of them on the same {n} held-out examples (seed {seed}).</p>"
    ]
    examples = [example_section(demo, index, figures) for index in range(len(demo.shown))]
    inspection = (logical_inspection_figure(zoo, demo.inspection)
                  if demo.inspection is not None else None)
    if inspection is not None:
        (figures / "logical_inspection.png").write_bytes(inspection)
    views = views_html(zoo, demo.views_example, demo.explanation, 0)
    curves = curves_figure(result)
    (figures / "perturbation_curves.png").write_bytes(curves)
    sections += [
        *_table_sections(result, curves),
        "<h2>Examples</h2>",
        "<p>Text rows and the image + text figures (ours, pos correction) leave the readout "
        "token's own share out (drawn grey): its identity entry would swamp every other token.</p>",
        *examples,
    ]
    if inspection is not None:
        sections += _inspection_sections(inspection)
    sections += [
        "<h2 id='views'>Interactive views</h2>",
        f"<p>Ours (pos) on “{demo.views_example.description}”.</p>",
        views,
    ]
    metrics = {
        "model": zoo.name,
        "evaluation": result.to_dict(),
        "methods": list(demo.methods),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "report.html").write_text(report_html("captum-hetattn demo", sections))
    return metrics


def write_detection_report(out: Path, segmentation: Mapping[str, Any],
                           logical: Mapping[str, Any]) -> Path:
    r"""The report of ``captum-hetattn demo --model shapes_detr``: the segmentation experiment's
    tables and figures, then the logical inspection's scores and figure.

    Args:
        out: the report's folder (exists).
        segmentation: from :func:`~captum_hetattn.evaluation.run_segmentation`.
        logical: from :func:`~captum_hetattn.evaluation.run_logical_inspection`.

    Returns:
        Path: ``out / "report.html"``, written.
    """
    from captum_hetattn.evaluation.logical import format_logical
    from captum_hetattn.evaluation.segmentation import format_tables, tables_html

    captions = {
        "relevance": "Relevance of each explained query (rows: methods; columns: the first "
                     "queries of the held-out scenes, not chosen), like the paper's Fig. 2.",
        "otsu": "Masks at Otsu's threshold (Table 1), like the paper's Fig. 3.",
        "0.3 otsu": "Masks at 0.3 × Otsu's threshold (Table 2), like the paper's Fig. 4.",
    }
    sections = [
        "<p>Weakly supervised segmentation with the <code>shapes_detr</code> Conditional DETR "
        "(paper §5.1): every query with class probability &gt; 0.5 is explained; its image "
        "relevance is min-max scaled, binarised, upsampled and scored with pycocotools as an "
        "instance mask (IoU from 0.2). The paper's COCO numbers are in brackets; our scenes "
        "are synthetic, so compare the order of the methods, not the values.</p>",
        f"<pre>{html.escape(format_tables(segmentation).split(chr(10))[0])}</pre>",
        tables_html(segmentation),
    ]
    for kind, png in segmentation["figure_png"].items():
        sections.append(f"<div class='example'><p>{html.escape(captions[kind])}</p>"
                        f"{png_tag(png, kind)}</div>")
    sections.append("<h2>Logical inspection (shapes_vqa, paper §5.2, Fig. 8)</h2>")
    sections.append(f"<pre>{html.escape(format_logical(logical))}</pre>")
    if logical.get("figure_png"):
        sections.append(png_tag(logical["figure_png"], "logical inspection"))
    path = out / "report.html"
    path.write_text(report_html("captum-hetattn: detection demo", sections))
    return path


__all__ = [
    "curves_figure",
    "example_figure",
    "example_section",
    "image_grid",
    "method_figure",
    "image_text_figure",
    "logical_inspection_figure",
    "table_html",
    "views_html",
    "write_demo_report",
    "write_detection_report",
]
