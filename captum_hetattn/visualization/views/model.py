r"""Model view: a thumbnail heat map for every captured call × head, grouped by node type and
stream pair; a click opens the head view of that call and head."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from captum_hetattn import Explanation
from captum_hetattn.visualization.views._base import GridSpec, View
from captum_hetattn.visualization.views.head import check_maps, head_data

TYPE_NAMES = {"A": "TypeA (self-attention)", "B": "TypeB (cross-attention)",
              "C": "TypeC (self-attention over fused streams)"}


def model_view(
    explanation: Explanation,
    tokens: Mapping[str, Sequence[str]] | None = None,
    *,
    example: int = 0,
    map: str = "corrected",
    grids: Mapping[str, GridSpec] | Sequence[Any] | None = None,
) -> View:
    r"""Model view (after bertviz): one small heat map (rows: query tokens, columns: key tokens)
    per head of every captured attention call, in sections by node type and stream pair (e.g.
    "TypeB: text ← image"), calls in call order. Each thumbnail is scaled to its own largest
    magnitude (the tooltip gives it); signed maps are red (positive) / blue (negative). Clicking a
    thumbnail opens the head view of that call and head below the section list.

    Args:
        explanation: from ``explain(..., return_maps=True)``.
        tokens: token labels per stream (for the opened head view); see
            :func:`~captum_hetattn.visualization.views.head_view`.
        example: which example of the batch.
        map: ``"corrected"`` (``f(G) ⊙ A`` per head, default), ``"attention"`` (raw ``A``) or
            ``"gradient"`` (``∂objective/∂A``).
        grids: image streams to draw as patch grids in the opened head view; see
            :func:`~captum_hetattn.visualization.views.head_view`.

    Returns:
        View: with ``_repr_html_()``, ``.html`` and ``.save(path)``.

    Examples::

        >>> from captum_hetattn.visualization.views import model_view
        >>> model_view(explanation, {"text": words}, map="attention").save("model.html")
    """
    chosen = check_maps([map])
    data = head_data(explanation, tokens, chosen, example, grids, None)
    sections: list[dict[str, Any]] = []
    where: dict[tuple[str, str, str], dict[str, Any]] = {}
    for i, call in enumerate(data["calls"]):
        key = (call["type"], call["query"], call["key"])
        if key not in where:
            title = f"Type{call['type']}: {call['query']} \u2190 {call['key']}"
            where[key] = {"title": title, "about": TYPE_NAMES.get(call["type"], ""),
                          "calls": []}
            sections.append(where[key])
        where[key]["calls"].append(i)
    data["sections"] = sections
    data["initial"] = {"call": 0, "head": None, "map": chosen[0]}
    return View("model", f"Model view — {data['titles'][map]}", data,
                scripts=("head.js", "model.js"))
