r"""Additive fusion: another stream's tokens added into a stream that goes on.

A stream continues from one call to the next of its tower when the next call's queries are its
newest state. Some models also *add* another stream's tokens into it between the two calls:
Qwen3-VL's deepstack adds features of intermediate vision layers into the language model's hidden
states at the image positions; BridgeTower's link towers add a uni-modal tower's output into the
fused stream. Such rows hold both streams' relevance, so the data flow models the add as a
junction (docs/architecture.md §2): a new stream whose rows take half from each stream that
feeds them (each stream's share the mean of its tokens feeding the row).

**Finding the add.** The walk from the new queries stops at the graph the previous call's
queries were computed from (its *region*). Where it enters that region is the stream's own
state (near the previous call's queries, or a node whose earlier calls include the stream's)
or a state of another stream (the newest call mark behind it is another stream's): the
latter is an addition. Found from the autograd graph, never from module names.

**Probing it.** Which rows the added tokens feed is probed like any junction, with the gradient
cut at every other call's tensors, so a path through later calls of the other stream or through
the stream's own attention (which mixes all tokens) does not blur the map.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from captum_hetattn.binding.flowdata import K_IN, FlowJunction, Mark
from captum_hetattn.binding.probes import TokenRows

#: how far from a call's query node its stream's own residual state may lie (norms, views, casts)
_NEAR = 4


def added_streams(builder: Any, i: int, node: object, stream: int, j: int
                  ) -> dict[int, tuple[int, int]]:
    r"""Streams whose tokens were added into ``stream`` between its call ``j`` and call ``i``.

    Args:
        builder: the data flow builder (its records, walker and streams so far).
        i: the call whose query input ``node`` is.
        node: the autograd node of call ``i``'s query input.
        stream: the stream call ``i`` would continue.
        j: that stream's previous call.

    Returns:
        Other stream → ``(call, role)`` of its newest state behind the add.
    """
    walker = builder.walker
    previous = builder.records[j].nodes.get("query")
    if previous is None or node is None:
        return {}
    region: set[object] = set()
    walker.hits(previous, before=j, seen=region)
    own = _near(previous, _NEAR)
    boundary, direct = _frontier(walker, node, i, region)
    added: dict[int, tuple[int, int]] = {}
    candidates = [builder._latest_per_stream(direct)]
    for entry in boundary - own:
        latest = builder._latest_per_stream(walker.hits(entry, before=i))
        if stream not in latest:  # a node behind the stream's own earlier calls is its own
            candidates.append(latest)
    for latest in candidates:
        for other, mark in latest.items():
            if other != stream and mark[1] != K_IN and mark > added.get(other, (-1, -1)):
                added[other] = mark
    return added


#: autograd nodes that keep each token in its row (reshapes, pads, per-token norms): a walk
#: below a query node passes them without counting a step (Swin's last stage reads its
#: queries through a view, a pad, a window partition and a norm of the layer's input)
_ROW_KEEPING = ("ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward", "TransposeBackward",
                "PermuteBackward", "ConstantPadNdBackward", "RollBackward", "CloneBackward",
                "NativeLayerNormBackward", "SqueezeBackward", "UnsqueezeBackward", "ToCopyBackward")


def _near(node: object, depth: int) -> set[object]:
    """``node`` and the nodes at most ``depth`` steps below it, a step into a
    :data:`_ROW_KEEPING` node not counted."""
    steps = {node: 0}
    queue = collections.deque([node])
    while queue:
        parent = queue.popleft()
        for child, _ in getattr(parent, "next_functions", ()):
            if child is None:
                continue
            free = _keeps_rows(child)
            cost = steps[parent] + (0 if free else 1)
            if cost > depth or steps.get(child, depth + 1) <= cost:
                continue
            steps[child] = cost
            if free:  # (0-1 breadth first: the cheaper paths first)
                queue.appendleft(child)
            else:
                queue.append(child)
    return set(steps)


def _keeps_rows(node: object) -> bool:
    return type(node).__name__.rstrip("0123456789") in _ROW_KEEPING


def _frontier(walker: Any, node: object, before: int, region: set[object]
              ) -> tuple[set[object], frozenset[Mark]]:
    """From ``node`` towards the inputs: the nodes where the walk enters ``region`` and the
    marks it reaches first outside it."""
    boundary: set[object] = set()
    found: set[Mark] = set()
    seen, stack = {node}, [node]
    while stack:
        for child, _ in getattr(stack.pop(), "next_functions", ()):
            if child is None or child in seen:
                continue
            seen.add(child)
            valid = walker._valid(child, before)
            if valid:
                found |= valid
            elif child in region:
                boundary.add(child)
            else:
                stack.append(child)
    return boundary, frozenset(found)


@contextlib.contextmanager
def cut_at(nodes: Iterable[object]) -> Iterator[None]:
    r"""No gradient passes through ``nodes`` while inside (their incoming gradients zeroed)."""
    def zero(grads: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
        return tuple(None if g is None else torch.zeros_like(g) for g in grads)

    handles = [n.register_prehook(zero) for n in nodes if hasattr(n, "register_prehook")]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def fused_feeding(builder: Any, i: int, tensor: Tensor, dim: int,
                  latest: dict[int, tuple[int, int]]) -> list[tuple[tuple, Tensor, Tensor]]:
    r"""Per stream of ``latest``, which rows of ``tensor`` its state feeds, probed with the
    gradient cut at every other call's tensors: ``[((stream, state, token_dim, before), map,
    shares)]`` for the streams that feed some row (shares: see :func:`junction_weights`)."""
    marked = [n for n, marks in builder.walker.marks.items()
              if any(m[0] == "call" and m[1] < i for m in marks)]
    feeding = []
    for stream, (j, role) in sorted(latest.items()):
        state, state_dim, before = builder._state_tensor(stream, j, role)
        if state is None:
            continue
        keep = state.grad_fn
        with cut_at(n for n in marked if n is not keep):
            (dependence,) = builder.dependence(("fusion", i, stream), tensor, dim,
                                               [(state, state_dim)], builder.batch)
        matrix = dependence.matrix()
        if matrix is not None and matrix.any():
            feeding.append(((stream, state, state_dim, before), matrix, dependence.shares()))
    return feeding


def add_into(builder: Any, i: int, tensor: Tensor, dim: int, stream: int,
             state: tuple[int, int], added: dict[int, tuple[int, int]]) -> None:
    r"""Junctions for tokens of the ``added`` streams added into ``stream`` right before call
    ``i`` (``tensor``: its queries; ``state``: the stream's newest ``(call, role)``).

    The stream goes on: the rows the added tokens feed keep their share of the stream's own
    state (read from a copy of it, since a junction joins two streams) and add the others' (an
    additive junction each, from a copy of the other stream's state at the time the tokens left
    it, since that stream may have run further calls since: Qwen3-VL's deepstack reads
    intermediate vision layers). Rows no added token feeds, the read tokens among them, are
    left alone.
    """
    feeding = fused_feeding(builder, i, tensor, dim, {stream: state, **added})
    fused = torch.zeros(builder.batch, builder.streams[stream].size, dtype=torch.bool)
    for (origin, *_), matrix, _ in feeding:
        if origin != stream:
            fused |= matrix.any(dim=-1)
    if not fused.any():
        return
    weights = junction_weights([shares for *_, shares in feeding])
    # the stream's own share replaces the rows first, the added tokens' shares add to it
    ordered = sorted(zip(feeding, weights, strict=True), key=lambda f: f[0][0][0] != stream)
    for ((origin, _, _, before), matrix, _), weight in ordered:
        matrix, weight = matrix & fused[..., None], weight * fused[..., None]
        own = origin == stream  # its share read from a copy: a junction joins two streams
        ran_since = [c for c in builder.streams[origin].calls if c >= before]
        copy = builder._fork(origin, i if own else before) if own or ran_since else origin
        builder.junctions.append(FlowJunction(stream, copy, i, TokenRows(matrix), weight,
                                              additive=not own))


def junction_weights(matrices: list[Tensor]) -> list[Tensor]:
    r"""Junction weights of rows fed by several streams: each stream feeding a row gets an
    equal share of it, spread evenly over its tokens feeding the row (a merged token is the
    mean of those it merges; a row two streams add takes half from each). ``matrices`` are
    boolean, or the probes' float shares (:meth:`~captum_hetattn.binding.probes._Dependence.
    shares`): a feeder at the level of round-off then takes a share as small as it is, so its
    vanishing in another batch moves no weight."""
    counts = [m.float().sum(dim=-1, keepdim=True) for m in matrices]
    streams = sum((c > 0).float() for c in counts)
    return [m.float() / c.clamp(min=1) / streams.clamp(min=1)
            for m, c in zip(matrices, counts, strict=True)]


__all__ = ["add_into", "added_streams", "cut_at", "fused_feeding", "junction_weights"]
