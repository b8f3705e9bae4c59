r"""Pictures of token relevance: image overlays drawn with ``captum.attr.visualization``, text as
coloured HTML, and a self-contained (offline) HTML report with figures inlined as base64 PNG."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are written, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from captum.attr import visualization as viz  # noqa: E402
from torch import Tensor  # noqa: E402

from captum_hetattn.mapping import PatchGrid, to_heatmap  # noqa: E402


def grid_heatmap(relevance: Tensor, image_hw: tuple[int, int], grid: PatchGrid) -> np.ndarray:
    """``(n_tokens,)`` relevance of one example → ``H × W × 1`` heat map over the image."""
    height, width = image_hw
    placeholder = torch.zeros(1, 1, height, width)
    return to_heatmap(grid.to_input(relevance[None].float(), placeholder, 0))


def draw_overlay(axis: plt.Axes, image: np.ndarray, heat: np.ndarray, title: str) -> None:
    """Blend ``heat`` over ``image`` on ``axis`` with Captum's ``visualize_image_attr``."""
    axis.set_axis_off()
    axis.set_title(title, fontsize=8)
    if not np.any(heat):  # Captum cannot normalise an all-zero map
        axis.imshow(image)
        return
    sign = "absolute_value" if (heat < 0).any() else "positive"
    viz.visualize_image_attr(
        heat, image.astype(np.float32) / 255.0, method="blended_heat_map", sign=sign,
        plt_fig_axis=(axis.figure, axis), use_pyplot=False, alpha_overlay=0.55,
    )
    axis.set_title(title, fontsize=8)


def figure_png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def text_html(tokens: Sequence[str], relevance: Tensor) -> str:
    """Tokens as HTML spans, green for positive and red for negative relevance (max-scaled)."""
    values = relevance.detach().float()
    scale = float(values.abs().max()) or 1.0
    spans = []
    for token, value in zip(tokens, values.tolist(), strict=False):
        strength = min(abs(value) / scale, 1.0)
        colour = (
            f"rgba(0,160,60,{strength:.2f})" if value >= 0 else f"rgba(220,40,40,{strength:.2f})"
        )
        spans.append(
            f'<span style="background:{colour};padding:1px 3px;margin:1px;border-radius:3px" '
            f'title="{value:.3g}">{html.escape(token)}</span>'
        )
    return " ".join(spans)


def png_tag(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


REPORT_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:12px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0} td.name,th.name{text-align:left}
img{max-width:100%} .example{margin:18px 0;padding:8px;border-top:1px solid #ddd}
"""


def report_html(title: str, sections: Sequence[str]) -> str:
    """A complete offline HTML page (no external resource) from body sections."""
    body = "\n".join(sections)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{REPORT_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
        "</body></html>"
    )
