r"""What every view shares: the :class:`View` object (inline Jupyter display, standalone page,
file), data checks on an :class:`~captum_hetattn.Explanation`, token labels, patch
grids, and compact JSON for the page.

A view is rendered as one ``<div>`` with a unique id and one inline script (the package files in
``static/`` and the view's data as a JSON literal) that draws into that ``<div>``; the script needs
no other element, so it also runs when a notebook front end re-creates it (JupyterLab). Nothing is
loaded from the network and nothing is left in the page's global scope, so views display in an
offline Jupyter / JupyterLab and several views can share one page.
"""

from __future__ import annotations

import difflib
import html
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_hetattn import CallMaps, Explanation, PatchGrid

#: a call is named by its position in ``explanation.call_maps``, its module name (first call), or
#: ``(module name, call index)``
CallRef = int | str | tuple[str, int]
#: a patch grid: ``(rows, cols)`` (the grid is the stream's last ``rows * cols`` tokens),
#: ``(prefix, rows, cols)``, or a :class:`~captum_hetattn.mapping.PatchGrid`
GridSpec = tuple[int, int] | tuple[int, int, int] | PatchGrid

SIGNIFICANT_DIGITS = 4
MAP_NAMES = ("attention", "corrected", "gradient")
MAP_TITLES = {
    "attention": "A (raw)",
    "corrected": "f(G)⊙A",
    "gradient": "∇A (signed)",
}


def _static(name: str) -> str:
    folder = resources.files("captum_hetattn.visualization.views") / "static"
    return (folder / name).read_text(encoding="utf-8")


class View:
    r"""An interactive view: inline HTML for Jupyter, a standalone page, or a file.

    Views are made by :func:`~captum_hetattn.visualization.views.head_view`,
    :func:`~captum_hetattn.visualization.views.model_view`,
    :func:`~captum_hetattn.visualization.views.neuron_view` and
    :func:`~captum_hetattn.visualization.views.relevance_flow`; this class only renders them.

    Every rendering (:meth:`fragment`, ``_repr_html_``, :attr:`html`) gets fresh element ids, so
    the same view can be shown twice in one notebook or page.

    Args:
        kind: the view's drawing function in the page scripts (``"head"``, ``"model"``, ...).
        title: the page title.
        data: JSON-serialisable data for the drawing function.
        scripts: the files of ``static/`` to inline, in order.
    """

    def __init__(self, kind: str, title: str, data: Mapping[str, Any],
                 scripts: Sequence[str]) -> None:
        self.kind = kind
        self.title = title
        self.data = dict(data)
        self.scripts = tuple(scripts)
        self._json: str | None = None

    def _data_json(self) -> str:
        if self._json is None:
            text = json.dumps(self.data, separators=(",", ":"), allow_nan=False)
            # a JS literal safe inside <script>: no "</script>", no "<!--" (<, >, & occur in
            # strings only; U+2028/9 are escaped by ensure_ascii)
            self._json = text.replace("<", "\\u003c").replace(">", "\\u003e").replace(
                "&", "\\u0026")
        return self._json

    def fragment(self) -> str:
        r"""The view as an HTML fragment (style, data and script inline) with fresh ids.

        Returns:
            str: HTML to place anywhere in a page (e.g. a report section).
        """
        element = f"hetattn-{self.kind}-{uuid.uuid4().hex[:12]}"
        code = "\n".join(_static(name) for name in ("common.js", *self.scripts))
        return (
            f'<div class="hetattn-view hetattn-{self.kind}" id="{element}" '
            f'data-hetattn-view="{self.kind}"></div>\n'
            f"<style>{_static('views.css')}</style>\n"
            "<script>(function () {\n'use strict';\n"
            f"{code}\n"
            f"var root = document.getElementById({json.dumps(element)});\n"
            f"var data = {self._data_json()};\n"
            f"HV.{self.kind}(root, data);\n"
            "})();</script>"
        )

    def _repr_html_(self) -> str:
        return self.fragment()

    @property
    def html(self) -> str:
        r"""The view as a complete standalone HTML page (no external resource)."""
        title = html.escape(self.title)
        return (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{title}</title></head>\n<body class=\"hetattn-page\">\n"
            f"<h2 class=\"hetattn-title\">{title}</h2>\n{self.fragment()}\n</body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        r"""Write the view to one self-contained HTML file.

        Args:
            path: the file to write (``.html``).

        Returns:
            Path: ``path``.

        Examples::

            >>> head_view(explanation, tokens).save("head_view.html")
        """
        path = Path(path)
        path.write_text(self.html, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}: {self.title}>"


# ---------------------------------------------------------------- checks on the explanation


def require_maps(explanation: Explanation) -> list[CallMaps]:
    """``explanation.call_maps``, or a ValueError that says how to get them."""
    call_maps = getattr(explanation, "call_maps", None)
    if call_maps is None:
        raise ValueError(
            "explanation.call_maps is None: pass return_maps=True to explain() to keep the "
            "per-head maps the views draw"
        )
    if not call_maps:
        raise ValueError("explanation.call_maps is empty: no bound attention call to draw")
    return list(call_maps)


def batch_size(explanation: Explanation) -> int:
    if explanation.call_maps:
        return int(explanation.call_maps[0].attention.shape[0])
    return int(explanation.readout_token.shape[0])


def check_example(explanation: Explanation, example: int) -> int:
    """``example`` as a non-negative index into the batch (ValueError when out of range)."""
    size = batch_size(explanation)
    if not isinstance(example, int | np.integer) or isinstance(example, bool):
        raise ValueError(f"example must be an int, not {example!r}")
    if not -size <= example < size:
        raise ValueError(f"example={example} is out of range: the batch holds {size} example(s)")
    return int(example) % size


def call_label(maps: CallMaps) -> str:
    suffix = f" (call {maps.call_index})" if maps.call_index else ""
    return f"{maps.name}{suffix}"


def resolve_call(call_maps: Sequence[CallMaps], call: CallRef) -> int:
    r"""Position in ``call_maps`` of ``call``: an int position, a module name (its first call) or
    ``(module name, call index)``; a ValueError names an unknown call and the close ones."""
    if isinstance(call, int | np.integer) and not isinstance(call, bool):
        if not -len(call_maps) <= call < len(call_maps):
            raise ValueError(
                f"call {call} is out of range: {len(call_maps)} calls were captured")
        return int(call) % len(call_maps)
    if isinstance(call, str):
        name, index = call, None
    elif (isinstance(call, tuple) and len(call) == 2 and isinstance(call[0], str)
          and isinstance(call[1], int)):
        name, index = call
    else:
        raise ValueError(
            f"call must be an int position, a module name or (name, call_index), not {call!r}")
    found = [i for i, m in enumerate(call_maps) if m.name == name]
    if not found:
        names = list(dict.fromkeys(m.name for m in call_maps))
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"no captured attention call of module {name!r}{hint} (captured modules: "
            f"{_short_list(names)})")
    if index is None:
        return found[0]
    for i in found:
        if call_maps[i].call_index == index:
            return i
    indices = [call_maps[i].call_index for i in found]
    raise ValueError(f"module {name!r} has no call {index}: its captured calls are {indices}")


def _short_list(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(map(repr, items[:limit]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def stream_sizes(explanation: Explanation) -> dict[str, int]:
    """Tokens per stream: ``explanation.streams``, completed from the captured maps."""
    sizes = dict(getattr(explanation, "streams", None) or {})
    for maps in explanation.call_maps or ():
        sizes.setdefault(maps.query, int(maps.attention.shape[2]))
        sizes.setdefault(maps.key, int(maps.attention.shape[3]))
    return sizes


def token_labels(
    explanation: Explanation, tokens: Mapping[str, Sequence[str]] | None
) -> dict[str, list[str]]:
    r"""Labels per stream: ``tokens[stream]`` where given (checked against the stream's length),
    ``"#0"``, ``"#1"``, ... elsewhere. A source name stands for its stream when that stream holds
    only that source."""
    sizes = stream_sizes(explanation)
    labels = {stream: [f"#{i}" for i in range(n)] for stream, n in sizes.items()}
    if tokens is None:
        return labels
    if not isinstance(tokens, Mapping):
        raise ValueError(
            f"tokens must be a dict {{stream: list of labels}}, not {type(tokens).__name__}; "
            f"streams: {sorted(sizes)}")
    sources = dict(getattr(explanation, "sources", None) or {})
    for name, given in tokens.items():
        stream = name
        if stream not in sizes:
            holders = [s for s, st in sources.items() if st == sources.get(name)]
            if name in sources and holders == [name]:
                stream = sources[name]
            else:
                raise ValueError(
                    f"tokens has labels for {name!r}, which is not a stream of this explanation "
                    f"(streams: {sorted(sizes)})")
        if isinstance(given, str) or not isinstance(given, Sequence | np.ndarray):
            raise ValueError(f"tokens[{name!r}] must be a list of labels, not {given!r}")
        if len(given) != sizes[stream]:
            raise ValueError(
                f"tokens[{name!r}] has {len(given)} labels but stream {stream!r} has "
                f"{sizes[stream]} tokens")
        labels[stream] = [str(t) for t in given]
    return labels


def patch_grids(
    explanation: Explanation,
    grids: Mapping[str, GridSpec] | Sequence[Any] | None,
) -> dict[str, list[int]]:
    r"""``{stream: [prefix, rows, cols]}`` for the streams drawn as patch grids.

    ``grids`` maps a stream to ``(rows, cols)``, ``(prefix, rows, cols)`` or a
    :class:`~captum_hetattn.mapping.PatchGrid`; a sequence (e.g. a model's ``input_mappings``)
    contributes its :class:`PatchGrid` entries. A PatchGrid without ``grid`` is read as the most
    square grid after its prefix tokens.
    """
    if grids is None:
        return {}
    sizes = stream_sizes(explanation)
    if isinstance(grids, Mapping):
        items = list(grids.items())
    elif isinstance(grids, Sequence) and not isinstance(grids, str):
        items = [(g.stream, g) for g in grids if isinstance(g, PatchGrid)]
    else:
        raise ValueError(f"grids must be a dict {{stream: (rows, cols)}}, not {grids!r}")
    out: dict[str, list[int]] = {}
    for stream, spec in items:
        if stream not in sizes:
            raise ValueError(
                f"grids names {stream!r}, which is not a stream of this explanation "
                f"(streams: {sorted(sizes)})")
        n = sizes[stream]
        if isinstance(spec, PatchGrid):
            out[stream] = _grid_of_patchgrid(spec, n)
            continue
        values = tuple(int(v) for v in spec) if isinstance(spec, Sequence) else ()
        if len(values) == 2:
            values = (n - values[0] * values[1], *values)
        if len(values) != 3 or min(values[1:]) <= 0:
            raise ValueError(
                f"grids[{stream!r}] = {spec!r}: give (rows, cols), (prefix, rows, cols) or a "
                "PatchGrid")
        prefix, rows, cols = values
        if prefix < 0 or prefix + rows * cols != n:
            raise ValueError(
                f"grids[{stream!r}] = {spec!r} does not fit the stream's {n} tokens "
                f"({prefix} prefix + {rows}×{cols} cells)")
        out[stream] = [prefix, rows, cols]
    return out


def _grid_of_patchgrid(grid: PatchGrid, n: int) -> list[int]:
    prefixes = range(9) if grid.prefix_tokens is None else (grid.prefix_tokens,)
    if grid.grid is not None:
        for prefix in prefixes:
            if prefix + grid.grid[0] * grid.grid[1] == n:
                return [prefix, int(grid.grid[0]), int(grid.grid[1])]
    else:
        for prefix in prefixes:  # a square grid first, then the most square one
            side = math.isqrt(max(n - prefix, 0))
            if side > 0 and side * side == n - prefix:
                return [prefix, side, side]
        for prefix in prefixes:
            cells = n - prefix
            rows = max((r for r in range(1, math.isqrt(max(cells, 0)) + 1) if cells % r == 0),
                       default=0)
            if rows > 1:
                return [prefix, rows, cells // rows]
    raise ValueError(
        f"{grid.stream!r}: the PatchGrid (prefix_tokens={grid.prefix_tokens}, grid={grid.grid}) "
        f"does not fit the stream's {n} tokens; give grids={{{grid.stream!r}: (rows, cols)}}")


# ---------------------------------------------------------------- numbers for the page


def rounded(values: Tensor | np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> Any:
    r"""``values`` as nested lists of floats rounded to ``digits`` significant digits, values
    below ``10^-digits`` of the largest magnitude set to 0 (short JSON)."""
    if isinstance(values, Tensor):
        values = values.detach().to(torch.float64).cpu().numpy()
    array = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if array.size == 0:
        return array.tolist()
    magnitude = np.abs(array)
    top = float(magnitude.max())
    if top == 0.0:
        return np.zeros_like(array).tolist()
    array = np.where(magnitude < top * 10.0 ** -digits, 0.0, array)
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log10(np.where(array == 0.0, 1.0, np.abs(array))))
    decimals = (digits - 1 - exponent).astype(np.int64)
    out = np.empty_like(array)
    positive = decimals >= 0  # x * 10^d rounds, / 10^d gives the nearest double: short repr
    scale = 10.0 ** np.abs(decimals)
    out[positive] = np.round(array[positive] * scale[positive]) / scale[positive]
    out[~positive] = np.round(array[~positive] / scale[~positive]) * scale[~positive]
    return out.tolist()


def number(value: float | Tensor) -> float:
    value = float(value)
    if not math.isfinite(value):
        return 0.0
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def short_labels(names: Sequence[str]) -> list[str]:
    """Module names without their common dotted prefix (``lxmert.encoder.``)."""
    if not names:
        return []
    parts = [n.split(".") for n in names]
    common = 0
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        common += 1
    common = min(common, min(len(p) for p in parts) - 1)
    return [".".join(p[common:]) for p in parts]


def readout_note(explanation: Explanation, example: int) -> str:
    token = getattr(explanation, "readout_token", None)
    if token is None:
        return ""
    return f"readout: token {int(token[example])} of {explanation.readout_stream!r}"


def readout_of(explanation: Explanation, example: int) -> dict[str, Any] | None:
    """``{"stream", "token"}`` of the readout token (underlined in the views)."""
    token = getattr(explanation, "readout_token", None)
    if token is None or getattr(explanation, "readout_stream", None) is None:
        return None
    return {"stream": explanation.readout_stream, "token": int(token[example])}
