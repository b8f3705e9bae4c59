r"""Head view: lines from query tokens to the key tokens they attend to, per call and head."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from captum_hetattn import CallMaps, Explanation
from captum_hetattn.visualization.views._base import (
    MAP_NAMES,
    MAP_TITLES,
    CallRef,
    GridSpec,
    View,
    call_label,
    check_example,
    patch_grids,
    readout_note,
    readout_of,
    require_maps,
    resolve_call,
    rounded,
    short_labels,
    token_labels,
)


def check_maps(maps: Sequence[str] | str) -> list[str]:
    chosen = [maps] if isinstance(maps, str) else list(maps)
    unknown = [m for m in chosen if m not in MAP_NAMES]
    if unknown or not chosen:
        raise ValueError(f"maps must name some of {MAP_NAMES}, not {unknown or chosen!r}")
    return list(dict.fromkeys(chosen))


def call_data(maps: CallMaps, example: int, chosen: Sequence[str], short: str) -> dict[str, Any]:
    """One call's maps of one example for the page: ``(H, n_query, n_key)`` per map, with the
    scale lines are drawn against (largest magnitude over the heads) and whether it is signed."""
    entry: dict[str, Any] = {
        "name": maps.name, "index": maps.call_index, "type": maps.type, "query": maps.query,
        "key": maps.key, "label": call_label(maps), "short": short,
        "heads": int(maps.attention.shape[1]), "maps": {}, "scale": {}, "signed": {},
    }
    for name in chosen:
        values = getattr(maps, name)[example].detach().float().cpu()
        values = torch.nan_to_num(values)
        top = float(values.abs().max()) if values.numel() else 0.0
        entry["maps"][name] = rounded(values)
        entry["scale"][name] = top if top > 0 else 1.0
        entry["signed"][name] = bool((values < 0).any()) or name == "gradient"
    return entry


def head_data(
    explanation: Explanation,
    tokens: Mapping[str, Sequence[str]] | None,
    chosen: Sequence[str],
    example: int,
    grids: Mapping[str, GridSpec] | Sequence[Any] | None,
    calls: Sequence[CallRef] | None,
) -> dict[str, Any]:
    call_maps = require_maps(explanation)
    example = check_example(explanation, example)
    positions = (list(range(len(call_maps))) if calls is None
                 else list(dict.fromkeys(resolve_call(call_maps, c) for c in calls)))
    if not positions:
        raise ValueError("calls= selects no call")
    labels = token_labels(explanation, tokens)
    short = short_labels([call_label(m) for m in call_maps])
    used = {s for p in positions for s in (call_maps[p].query, call_maps[p].key)}
    return {
        "tokens": {s: labels[s] for s in used},
        "grids": {s: g for s, g in patch_grids(explanation, grids).items() if s in used},
        "calls": [call_data(call_maps[p], example, chosen, short[p]) for p in positions],
        "positions": positions,
        "maps": list(chosen),
        "titles": {m: MAP_TITLES[m] for m in chosen},
        "note": readout_note(explanation, example),
        "readout": readout_of(explanation, example),
        "example": example,
    }


def head_view(
    explanation: Explanation,
    tokens: Mapping[str, Sequence[str]] | None = None,
    *,
    layer: CallRef | None = None,
    example: int = 0,
    maps: Sequence[str] = ("attention", "corrected", "gradient"),
    grids: Mapping[str, GridSpec] | Sequence[Any] | None = None,
    head: int | None = None,
    calls: Sequence[CallRef] | None = None,
) -> View:
    r"""Head view (after bertviz): for one attention call (layer) and its heads, a line from each
    query token (left column, the query stream) to each key token (right column, the key stream)
    it attends to, its opacity proportional to the weight. Works the same for self-attention and
    for cross-attention between any two streams.

    In the page: the selector picks the call, the coloured squares pick the heads (all, or one:
    click a square; click it again for all), the toggle switches between the raw map ``A``, the
    corrected map ``f(G) ⊙ A`` of each head (whose head mean is the ``Ā`` the rules propagate)
    and the gradient ``∂objective/∂A`` (red positive, blue negative). Clicking a token keeps only
    its lines; clicking it again shows all. Long streams keep a fixed row height and scroll.
    Streams given in ``grids`` are also drawn as a grid of patch cells (coloured by the weight
    the visible lines carry; clicking a cell selects its token).

    Args:
        explanation: from ``explain(..., return_maps=True)``.
        tokens: token labels per stream, ``{stream: [label, ...]}`` (e.g. a zoo example's
            ``tokens``); streams left out are labelled ``"#0"``, ``"#1"``, ...
        layer: the call shown first: a position in ``explanation.call_maps``, a module name
            or ``(module name, call index)``. Default: the first call.
        example: which example of the batch.
        maps: the maps to embed and toggle between, of ``"attention"``, ``"corrected"``,
            ``"gradient"`` (fewer maps, smaller page).
        grids: image streams to draw as patch grids: ``{stream: (rows, cols)}`` (the grid is the
            stream's last ``rows * cols`` tokens), ``{stream: (prefix, rows, cols)}``,
            ``{stream: PatchGrid}``, or a sequence of input mappings whose
            :class:`~captum_hetattn.mapping.PatchGrid` entries are used.
        head: the head shown first (default: all heads).
        calls: embed only these calls (same forms as ``layer``); default all. A page holds every
            embedded call's maps, so this keeps pages of large models small.

    Returns:
        View: with ``_repr_html_()`` (inline in Jupyter), ``.html`` and ``.save(path)``.

    Examples::

        >>> from captum_hetattn import HeterogenousAttentionAttribution
        >>> from captum_hetattn.visualization.views import head_view
        >>> explanation = HeterogenousAttentionAttribution(model).explain(
        ...     inputs, target=3, return_maps=True)
        >>> head_view(explanation, {"text": words, "image": patches},
        ...           layer="lxmert.encoder.x_layers.0.visual_attention.att",
        ...           grids={"image": (4, 4)}).save("heads.html")
    """
    chosen = check_maps(maps)
    data = head_data(explanation, tokens, chosen, example, grids, calls)
    call_maps = require_maps(explanation)
    first = 0
    if layer is not None:
        position = resolve_call(call_maps, layer)
        if position not in data["positions"]:
            raise ValueError(f"layer={layer!r} is not among calls={list(calls or ())!r}")
        first = data["positions"].index(position)
    if head is not None:
        heads = data["calls"][first]["heads"]
        if not isinstance(head, int) or not -heads <= head < heads:
            raise ValueError(f"head={head!r} is out of range: the call has {heads} heads")
        head %= heads
    data["initial"] = {"call": first, "head": head, "map": chosen[0]}
    title = f"Head view — {data['calls'][first]['label']}"
    return View("head", title, data, scripts=("head.js",))
