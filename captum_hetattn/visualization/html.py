r"""HTML pieces of an offline report: relevance-coloured tokens, inlined PNG images and a complete
page with no external resource."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from torch import Tensor

from captum_hetattn.visualization.colors import (
    READOUT_FACE,
    READOUT_TEXT,
    as_vector,
    readout_index,
    relevance_scale,
)


def text_html(tokens: Sequence[str], relevance: Tensor, readout_token: int | None = None) -> str:
    r"""Tokens as HTML spans, green for positive and red for negative relevance (max-scaled).

    Args:
        tokens: the token labels.
        relevance: ``(n,)`` relevance, ``n ≥ len(tokens)``.
        readout_token: index of the readout token: drawn grey and left out of the scale (its
            own share, 1 for attention methods, would wash out every other token), or None.

    Returns:
        str: one ``<span>`` per token (its value in the ``title`` tooltip); the readout token's
        span has ``class="readout"``.

    Examples::

        >>> explanation = explainer.explain(inputs, target=label)
        >>> text_html(words, explanation.relevance["text"][0],
        ...           readout_token=explanation_readout_token(explanation, "text", 0))
    """
    values = as_vector(relevance)
    scale = relevance_scale(values[: len(tokens)], readout_token=readout_token) or 1.0
    readout = readout_index(readout_token, len(tokens))
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values.tolist(), strict=False)):
        if i == readout:
            spans.append(
                f'<span class="readout" style="background:{READOUT_FACE};color:{READOUT_TEXT};'
                'padding:1px 3px;margin:1px;border-radius:3px;font-style:italic" '
                f'title="readout token (own share {value:.3g} left out)">'
                f"{html.escape(token)}</span>"
            )
            continue
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
    """An ``<img>`` with the PNG inlined as a ``data:`` URL."""
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


__all__ = ["REPORT_STYLE", "png_tag", "report_html", "text_html"]
