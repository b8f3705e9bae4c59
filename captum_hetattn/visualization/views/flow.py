r"""Relevance flow: how the readout's relevance is shared between sources after each step of the
layer graph."""

from __future__ import annotations

from collections import Counter

from captum_hetattn import Explanation
from captum_hetattn.visualization.views._base import (
    View,
    batch_size,
    number,
    readout_note,
    short_labels,
)


def _step_label(label: str) -> str:
    """``"a, a, b"`` → ``"a ×2, b"``: the calls of one step (parallel calls of one module)."""
    counts = Counter(part.strip() for part in label.split(","))
    return ", ".join(name + (f" \u00d7{n}" if n > 1 else "") for name, n in counts.items())


def relevance_flow(explanation: Explanation, *, example: int = 0) -> View:
    r"""Relevance flow: per step of the layer graph, in call order, a stacked bar of the readout
    row's relevance on each source (one colour per source, with a legend), so one sees at which
    layer e.g. the image starts to matter. The readout token's own identity entry (all of the
    relevance at the start) and what the steps add to it are left out of every bar, as in GAE's
    reference code: a bar shows the relevance the steps so far have put on each source's other
    tokens. A toggle shows the sources'
    fractions of it instead; hovering or clicking a step shows its numbers.

    Args:
        explanation: from ``explain(..., return_maps=True)`` without ``stage``, of a method that
            propagates step by step (``explanation.flow``).
        example: which example of the batch.

    Returns:
        View: with ``_repr_html_()``, ``.html`` and ``.save(path)``.

    Examples::

        >>> from captum_hetattn.visualization.views import relevance_flow
        >>> relevance_flow(explanation, example=1).save("flow.html")
    """
    flow = getattr(explanation, "flow", None)
    if flow is None:
        raise ValueError(
            "explanation.flow is None: pass return_maps=True to explain() (without stage=) to "
            "keep the relevance after every step of the layer graph")
    if not flow:
        raise ValueError("explanation.flow is empty: no step to draw")
    first = next(iter(flow[0].shares.values()), None)
    size = int(first.shape[0]) if first is not None else batch_size(explanation)
    if not isinstance(example, int) or isinstance(example, bool) or not -size <= example < size:
        raise ValueError(f"example={example!r} is out of range: the batch holds {size} example(s)")
    example %= size
    sources = list(dict.fromkeys(
        [*(getattr(explanation, "sources", None) or {}), *(s for f in flow for s in f.shares)]))
    start = {s: float(flow[0].shares[s][example]) if s in flow[0].shares else 0.0
             for s in sources}
    names = [_step_label(f.label) for f in flow]
    modules = [n for f in flow if f.kind != "start" for n in (_step_label(f.label),)]
    short = dict(zip(modules, short_labels(modules), strict=True))
    steps = []
    for i, share in enumerate(flow):
        values = {}
        own = getattr(share, "own", None) or {}
        for s in sources:
            value = float(share.shares[s][example]) if s in share.shares else 0.0
            # the readout tokens' own entries (identity and what the steps add to it) left out
            mine = float(own[s][example]) if s in own else start[s]
            values[s] = number(value - mine)
        steps.append({"label": names[i], "short": short.get(names[i], names[i]),
                      "kind": share.kind, "values": values, "index": i})
    readout_source = [s for s in sources if start[s] != 0.0]
    data = {
        "sources": sources,
        "steps": steps,
        "identity": {s: number(start[s]) for s in readout_source},
        "note": readout_note(explanation, example),
        "example": example,
    }
    return View("flow", "Relevance flow", data, scripts=("flow.js",))
