r"""Drawing an :class:`~captum_hetattn.hf.result.HFExplanation`: notebook HTML (coloured words
from :func:`~captum_hetattn.visualization.text_html`, picture overlays drawn with Captum's
``visualize_image_attr`` through :func:`~captum_hetattn.visualization.draw_overlay`), and the
inputs of Captum's own visualisers."""

from __future__ import annotations

import html
import io
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from captum.attr import visualization as viz
from matplotlib.patches import Rectangle

from captum_hetattn.visualization import draw_overlay, png_tag, text_html

if TYPE_CHECKING:
    from captum_hetattn.hf.result import CaptumViews, HFExplanation, Row


def overlay_png(row: Row) -> bytes:
    """The row's picture beside its relevance overlay (and its box, for a detection)."""
    assert row.image is not None and row.pixels is not None
    figure, (left, right) = plt.subplots(1, 2, figsize=(3.6, 1.9))
    left.imshow(row.image)
    left.set_axis_off()
    left.set_title("input", fontsize=8)
    draw_overlay(right, row.image, row.pixels[..., None], "relevance")
    if row.target.box is not None:
        x0, y0, x1, y1 = row.target.box
        for axis in (left, right):
            axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.2,
                                     edgecolor="#d62728"))
    return _png(figure)


#: drawn between the prompt's words and the tokens generated before the explained one
SEPARATOR = "‖"


def text_items(row: Row) -> list[tuple[str, float]]:
    """The row's words, then (for a generated token) the tokens generated before it, after
    :data:`SEPARATOR` (score 0): one list, so one colour scale."""
    items = list(row.words or [])
    generated = getattr(row, "generated", None)  # rows of explain_generation
    if generated:
        items += [(SEPARATOR, 0.0), *generated]
    return items


def audio_png(row: Row) -> bytes:
    """A strip of the row's relevance over the audio's frames (seconds where known)."""
    values = np.asarray(getattr(row, "audio", None), dtype=np.float64)
    times = getattr(row, "audio_times", None)
    x = np.arange(len(values)) if times is None else np.asarray(times, dtype=np.float64)
    figure, axis = plt.subplots(figsize=(3.6, 0.9))
    axis.fill_between(x, values, step="post", color="#2ca02c", alpha=0.7)
    axis.set_xlabel("seconds" if times is not None else "frame", fontsize=7)
    axis.tick_params(labelsize=6)
    axis.set_yticks([])
    return _png(figure)


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()  # small: a notebook shows many rows
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def row_html(row: Row) -> str:
    """One row: its target, its coloured words (and earlier generated tokens), its picture
    overlay, its audio strip."""
    parts = [f"<div style='font-weight:600;margin-top:8px'>{html.escape(row.target.title())}"
             "</div>"]
    items = text_items(row)
    if items:
        tokens = [token for token, _ in items]
        scores = torch.tensor([score for _, score in items], dtype=torch.float64)
        parts.append(f"<div style='line-height:1.9'>{text_html(tokens, scores)}</div>")
    if row.image is not None and row.pixels is not None:
        parts.append(png_tag(overlay_png(row), f"relevance of {row.target.label}"))
    if getattr(row, "audio", None) is not None:
        parts.append(png_tag(audio_png(row), f"audio relevance of {row.target.label}"))
    return "<div class='hetattn-row'>" + "".join(parts) + "</div>"


class Page(str):
    """HTML that a notebook draws."""

    def _repr_html_(self) -> str:
        return str(self)


def token_labels(result: HFExplanation, example: int) -> dict[str, list[str]]:
    """Token labels of the example's ids, for the views: every stream as long as the ids."""
    ids = result.inputs.get("input_ids")
    tokenizer = result.tokenizer
    if ids is None or tokenizer is None:
        return {}
    labels = [str(t) for t in tokenizer.convert_ids_to_tokens(ids[example].tolist())]
    return {stream: labels for stream, size in result.explanation.streams.items()
            if size == len(labels)}


def views_html(result: HFExplanation, example: int = 0) -> str:
    r"""The model view (every head of every call; a click opens its head view) and the
    relevance flow of one example, from ``hf.explain(..., return_maps=True)``.

    Raises:
        ValueError: the explanation kept no maps.
    """
    from captum_hetattn.visualization.views import model_view, relevance_flow

    explanation = result.explanation
    if explanation.call_maps is None:
        raise ValueError("the attention views need the maps: pass return_maps=True to "
                         "hf.explain (one target per example)")
    parts = [model_view(explanation, token_labels(result, example),
                        example=example)._repr_html_()]
    if explanation.flow is not None:
        parts.append(relevance_flow(explanation, example=example)._repr_html_())
    return "".join(parts)


def explanation_html(result: HFExplanation, max_rows: int = 12) -> str:
    """The whole result as HTML (the first ``max_rows`` rows; the attention views folded
    under each example's first row where the maps were kept)."""
    rows = []
    for row in result.rows[:max_rows]:
        rows.append(row_html(row))
        if result.explanation.call_maps is not None and result.example(
                row.target.example)[0] is row:
            rows.append("<details><summary>attention views (model view, relevance flow)"
                        f"</summary>{views_html(result, row.target.example)}</details>")
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
        items = text_items(row)
        if items:
            print("  " + " ".join(f"{word}({score:+.3g})" for word, score in items))
        if row.pixels is not None:
            print(f"  pixels {row.pixels.shape[0]}×{row.pixels.shape[1]}, "
                  f"max {float(np.abs(row.pixels).max()):.3g}")


def _record(row: Row) -> viz.VisualizationDataRecord:
    items = text_items(row)
    scores = torch.tensor([score for _, score in items], dtype=torch.float64)
    top = float(scores.abs().max()) if scores.numel() else 0.0
    normalised = scores / top if top > 0 else scores
    label = row.target.title()
    return viz.VisualizationDataRecord(
        normalised, row.target.score if row.target.score is not None else 0.0, label, label,
        label, float(scores.sum()), [word for word, _ in items], None)


def captum_views(result: HFExplanation) -> CaptumViews:
    """The rows as ``VisualizationDataRecord`` s and ``visualize_image_attr`` arrays."""
    from captum_hetattn.hf.result import CaptumViews

    records = [_record(row) for row in result.rows if text_items(row)]
    pictured = [row for row in result.rows if row.pixels is not None and row.image is not None]
    heatmaps = [np.asarray(row.pixels, dtype=np.float32)[..., None] for row in pictured]
    images = [np.asarray(row.image, dtype=np.float32) / 255.0 for row in pictured]
    return CaptumViews(records, heatmaps, images)


__all__ = ["SEPARATOR", "audio_png", "captum_views", "explanation_html", "overlay_png",
           "row_html", "show", "text_items", "token_labels", "views_html", "Page"]
