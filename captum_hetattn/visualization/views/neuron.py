r"""Neuron view: the query and key vectors of one head, their elementwise products, the scores
and the attention weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from captum_hetattn import Explanation
from captum_hetattn.visualization.views._base import (
    CallRef,
    View,
    call_label,
    check_example,
    readout_note,
    require_maps,
    resolve_call,
    rounded,
    token_labels,
)


def neuron_view(
    explanation: Explanation,
    call: CallRef,
    head: int,
    query_token: int,
    *,
    example: int = 0,
    tokens: Mapping[str, Sequence[str]] | None = None,
) -> View:
    r"""Neuron view (after bertviz): for one head of one attention call and one query token
    ``i``, the query vector ``q_i``, every key vector ``k_j``, the elementwise products
    ``q_i ⊙ k_j`` (their sum is the dot product), the scores ``q_i·k_j / √d`` and their softmax,
    next to the attention weights the model actually used (which also hold masks and position
    biases the vectors do not show). Vectors are coloured red (positive) / blue (negative).

    In the page, clicking another query token or picking another head redraws the view.

    Args:
        explanation: from ``explain(..., return_maps=True)``.
        call: the attention call: its position in ``explanation.call_maps``, a module name (its
            first call) or ``(module name, call index)``.
        head: the head, ``0 <= head < H``.
        query_token: the query token shown first, ``0 <= query_token < n_query``.
        example: which example of the batch.
        tokens: token labels per stream; see :func:`~captum_hetattn.visualization.views.head_view`.

    Returns:
        View: with ``_repr_html_()``, ``.html`` and ``.save(path)``.

    Raises:
        ValueError: when the backend kept no query / key vectors for the call: they are only
            captured for modules that use the transformers attention interface.

    Examples::

        >>> from captum_hetattn.visualization.views import neuron_view
        >>> neuron_view(explanation, "bert.encoder.layer.0.attention.self", head=1,
        ...             query_token=0, tokens={"text": words}).save("neurons.html")
    """
    call_maps = require_maps(explanation)
    example = check_example(explanation, example)
    maps = call_maps[resolve_call(call_maps, call)]
    if maps.query_states is None or maps.key_states is None:
        raise ValueError(
            f"no query/key vectors were captured for module {maps.name!r} (call "
            f"{maps.call_index}): q/k are only captured for modules that use the transformers "
            "attention interface (set_attn_implementation), not for hand-written attention")
    heads, n_query = int(maps.attention.shape[1]), int(maps.attention.shape[2])
    if not isinstance(head, int) or isinstance(head, bool) or not -heads <= head < heads:
        raise ValueError(f"head={head!r} is out of range: {maps.name!r} has {heads} heads")
    if (not isinstance(query_token, int) or isinstance(query_token, bool)
            or not -n_query <= query_token < n_query):
        raise ValueError(
            f"query_token={query_token!r} is out of range: query stream {maps.query!r} of "
            f"{maps.name!r} has {n_query} tokens")
    labels = token_labels(explanation, tokens)
    query = maps.query_states[example].float()
    key = maps.key_states[example].float()
    depth = int(query.shape[-1])
    data = {
        "label": call_label(maps), "name": maps.name, "index": maps.call_index,
        "type": maps.type, "query": maps.query, "key": maps.key,
        "query_tokens": labels.get(maps.query, [f"#{i}" for i in range(n_query)]),
        "key_tokens": labels.get(maps.key, [f"#{j}" for j in range(maps.attention.shape[3])]),
        "heads": heads, "depth": depth, "scale": 1.0 / math.sqrt(depth),
        "q": rounded(query), "k": rounded(key),
        "attention": rounded(maps.attention[example].float()),
        "initial": {"head": head % heads, "query": query_token % n_query},
        "note": readout_note(explanation, example),
    }
    title = f"Neuron view — {data['label']}, head {head % heads}"
    return View("neuron", title, data, scripts=("neuron.js",))
