r"""Drawing an :class:`~captum_hetattn.hf.result.HFExplanation`: notebook HTML (coloured words
from :func:`~captum_hetattn.visualization.text_html`, picture overlays drawn with Captum's
``visualize_image_attr`` through :func:`~captum_hetattn.visualization.draw_overlay`), and the
inputs of Captum's own visualisers."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from captum.attr import visualization as viz
from matplotlib.patches import Rectangle

from captum_hetattn.visualization import draw_overlay, figure_png, png_tag, text_html

if TYPE_CHECKING:
    from captum_hetattn.hf.result import CaptumViews, HFExplanation, Row


def overlay_png(row: Row) -> bytes:
    """The row's picture beside its relevance overlay (and its box, for a detection)."""
    assert row.image is not None and row.pixels is not None
    figure, (left, right) = plt.subplots(1, 2, figsize=(4.4, 2.4))
    left.imshow(row.image)
    left.set_axis_off()
    left.set_title("input", fontsize=8)
    draw_overlay(right, row.image, row.pixels[..., None], "relevance")
    if row.target.box is not None:
        x0, y0, x1, y1 = row.target.box
        for axis in (left, right):
            axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2,
                                     edgecolor="#d62728"))
    return figure_png(figure)


def row_html(row: Row) -> str:
    """One row: its target, its coloured words, its picture overlay."""
    parts = [f"<div style='font-weight:600;margin-top:8px'>{html.escape(row.target.title())}"
             "</div>"]
    if row.words:
        words = [word for word, _ in row.words]
        scores = torch.tensor([score for _, score in row.words], dtype=torch.float64)
        parts.append(f"<div style='line-height:1.9'>{text_html(words, scores)}</div>")
    if row.image is not None and row.pixels is not None:
        parts.append(png_tag(overlay_png(row), f"relevance of {row.target.label}"))
    return "<div class='hetattn-row'>" + "".join(parts) + "</div>"


def explanation_html(result: HFExplanation, max_rows: int = 12) -> str:
    """The whole result as HTML (the first ``max_rows`` rows)."""
    rows = [row_html(row) for row in result.rows[:max_rows]]
    if len(result.rows) > max_rows:
        rows.append(f"<div>… {len(result.rows) - max_rows} more rows (result.rows)</div>")
    head = (f"<div style='color:#555'>{html.escape(result.task)}: {len(result.rows)} "
            "explained target(s); green = relevance for the target, red = against</div>")
    return "<div>" + head + "".join(rows) + "</div>"


def show(result: HFExplanation, max_rows: int = 12) -> None:
    """Display in a notebook; print the targets and words elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:  # no IPython at all
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(HTML(explanation_html(result, max_rows)))
        return
    for row in result.rows[:max_rows]:
        print(row.target.title())
        if row.words:
            print("  " + " ".join(f"{word}({score:+.3g})" for word, score in row.words))
        if row.pixels is not None:
            print(f"  pixels {row.pixels.shape[0]}×{row.pixels.shape[1]}, "
                  f"max {float(np.abs(row.pixels).max()):.3g}")


def _record(row: Row) -> viz.VisualizationDataRecord:
    scores = torch.tensor([score for _, score in row.words or []], dtype=torch.float64)
    top = float(scores.abs().max()) if scores.numel() else 0.0
    normalised = scores / top if top > 0 else scores
    label = row.target.title()
    return viz.VisualizationDataRecord(
        normalised, row.target.score if row.target.score is not None else 0.0, label, label,
        label, float(scores.sum()), [word for word, _ in row.words or []], None)


def captum_views(result: HFExplanation) -> CaptumViews:
    """The rows as ``VisualizationDataRecord`` s and ``visualize_image_attr`` arrays."""
    from captum_hetattn.hf.result import CaptumViews

    records = [_record(row) for row in result.rows if row.words]
    pictured = [row for row in result.rows if row.pixels is not None and row.image is not None]
    heatmaps = [np.asarray(row.pixels, dtype=np.float32)[..., None] for row in pictured]
    images = [np.asarray(row.image, dtype=np.float32) / 255.0 for row in pictured]
    return CaptumViews(records, heatmaps, images)


__all__ = ["captum_views", "explanation_html", "overlay_png", "row_html", "show"]
