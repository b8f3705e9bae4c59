r"""The one binder: pair a layer graph's nodes with a model's calls, in the order of the calls.

The junction between :mod:`~captum_hetattn.capture` (what the model ran),
:mod:`~captum_hetattn.binding.dataflow` (where each call's tokens came from) and
:mod:`~captum_hetattn.graph` (what the explanation expects). Every path binds here:
:func:`bind_records` binds a recorded forward (with its data flow, or with the graph's streams
as they are), and :func:`bind_graph` (:meth:`LayerGraph.bind`) binds the calls the graph
itself expects, unrolled over a model's module names. Binding is done once per explanation and
owns:

- **call order**: recorded calls are walked in the order the model made them and each is
  matched to the node whose module pattern (and ``call_index``) it fits; the graph's steps are a
  template, not an order. Inside one layer of one layer block, calls must follow the graph's
  step order, else a ``ValueError`` names the first node out of order. Calls that no node
  matches are left out and reported in :attr:`BoundRecording.unbound`.
- **streams**: the graph's stream names are checked against the data flow, streams the graph
  does not name get names (:mod:`~captum_hetattn.binding.streams`).
- **types**: each concrete call is typed from the sources its query stream holds *at that
  call*: ``B`` for cross-attention, ``C`` for self-attention over a stream holding more than one
  source (after a cross call or a junction into it, or a single-stream fusion of two inputs),
  else ``A`` — so a decoder's first self-attention is ``A`` and the later ones ``C``.
- **junctions**: placed where the data flow puts them, their token maps resolved by
  :mod:`~captum_hetattn.binding.junctions`.
- **sources**: the input modalities, as columns of the streams, named.

Without a data flow, streams are the graph's, sized by their first call, and a parallel group is
the graph's group of calls of one layer made one after the other; :func:`bind_graph` types each
call as the graph does (its concrete type needs the calls' order in a forward).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

from captum_hetattn.binding.dataflow import DataFlow
from captum_hetattn.binding.junction_sizes import check_junction_sizes
from captum_hetattn.binding.junctions import resolve_junctions
from captum_hetattn.binding.streams import (
    BoundSource,
    check_sizes,
    graph_sources,
    graph_stream_names,
    name_sources,
    name_streams,
    stream_towers,
)
from captum_hetattn.capture import AttentionRecord
from captum_hetattn.graph.layer_graph import LayerGraph, _match_pattern
from captum_hetattn.graph.nodes import AttentionNode, BoundNode, _step_nodes, is_cross
from captum_hetattn.rules import TokenMap


@dataclass(frozen=True)
class BoundCall:
    """A graph node together with the recorded call it describes."""

    node: BoundNode
    record: AttentionRecord


@dataclass(frozen=True)
class BoundInput:
    """Model input ``position`` feeds stream ``stream``; ``rows`` ``(B, elements)`` gives the
    stream row each element feeds (``-1``: none), ``None`` if not one row per element."""

    position: int
    stream: str
    rows: Tensor | None


Step = tuple[BoundCall, ...] | TokenMap


@dataclass(frozen=True)
class BoundRecording:
    """Recorded calls and junctions in call order (parallel groups as tuples), stream sizes,
    sources and how the inputs feed the streams."""

    steps: tuple[Step, ...]
    sizes: dict[str, int]
    sources: dict[str, BoundSource] = field(default_factory=dict)
    inputs: dict[int, list[BoundInput]] = field(default_factory=dict)
    unbound: tuple[AttentionRecord, ...] = ()
    flow: DataFlow | None = None
    stream_names: dict[int, str] = field(default_factory=dict)
    swapped: tuple[tuple[AttentionNode, AttentionNode], ...] = ()

    @property
    def calls(self) -> list[BoundCall]:
        return [c for step in self.steps if isinstance(step, tuple) for c in step]

    @property
    def junctions(self) -> list[TokenMap]:
        return [step for step in self.steps if isinstance(step, TokenMap)]


def bind_records(
    graph: LayerGraph,
    records: Sequence[AttentionRecord],
    module_names: Iterable[str],
    flow: DataFlow | None = None,
    *,
    inputs: Sequence[Any] = (),
    config: Any = None,
) -> BoundRecording:
    r"""Pair the recorded calls with the nodes of ``graph``, in call order.

    Args:
        graph: the layer graph.
        records: :attr:`AttentionRecorder.records` of one forward (and backward) pass.
        module_names: the model's qualified module names (``named_modules()``).
        flow: the :func:`~captum_hetattn.binding.dataflow.analyse` result of the same forward;
            without it, streams are taken from the graph as they are and there are no junctions.
        inputs: the model inputs (for junctions that read token ids).
        config: the model config (for junction parameters read from it).

    Returns:
        A :class:`BoundRecording`.

    Raises:
        ValueError: a node that matches no module or was never called, calls in an order the
            graph contradicts, a self node recorded as cross-attention or the reverse, map sizes
            that disagree with a stream's size, graph streams that contradict the data flow, a
            graph junction that the forward does not have — naming the node, module or streams.
    """
    pairing = _pair(graph, graph.match([n for n in module_names if n]), records)
    names_of = graph_stream_names(pairing.bound, records, flow)
    swapped = _listed_order(graph, pairing.bound, records, flow, names_of)
    if flow is None:
        recording = _assemble_from_graph(graph, records, pairing)
    else:
        recording = _assemble(graph, records, pairing, flow, names_of, inputs, config)
    return replace(recording, swapped=swapped)


def bind_graph(graph: LayerGraph, module_names: Iterable[str]) -> list[tuple[BoundNode, ...]]:
    r"""Unroll ``graph`` over a model's qualified module names: the calls the graph expects,
    bound like recorded ones (:meth:`LayerGraph.bind`).

    Args:
        graph: the layer graph.
        module_names: e.g. ``[name for name, _ in model.named_modules()]``.

    Returns:
        The concrete steps in the graph's order — layer block by layer block, each block layer
        by layer (``*`` values in natural order), step by step; each a tuple of
        :class:`BoundNode` typed as the graph types its node (length > 1 for a parallel group).

    Raises:
        ValueError: as :meth:`LayerGraph.match`.
    """
    matches = graph.match(module_names)
    expected = [
        _Expected(matches[node.identity][layer], node.call_index or 0, _role(node))
        for layer, step in _unrolled(graph, matches) for node in step
    ]
    pairing = _pair(graph, matches, expected)
    steps = _walk(expected, pairing, lambda _, node: (node.query, node.key),
                  _same_group(graph, pairing))
    return [tuple(call.node for call in step) for step in steps if isinstance(step, tuple)]


# --------------------------------------------------------------------------- pairing
@dataclass(frozen=True)
class _Expected:
    """A call the graph expects of a model, standing for a record in :func:`bind_graph`."""

    name: str
    call_index: int
    role: str


@dataclass
class _Pairing:
    """The calls a node describes, ``(call index, node)`` in call order (typed later), the
    calls none does, and the layer (``*`` values) of each bound call."""

    bound: list[tuple[int, BoundNode]]
    unbound: list[AttentionRecord]
    layers: dict[int, tuple[str, ...]]


def _pair(
    graph: LayerGraph,
    matches: Mapping[tuple[str, int | None], Mapping[tuple[str, ...], str]],
    calls: Sequence[AttentionRecord | _Expected],
) -> _Pairing:
    r"""Walk ``calls`` in order and pair each with the node whose module (and ``call_index``)
    it is, checking the order inside each layer and the role; every matched module must have
    been called."""
    lookup = {(module, node.call_index or 0): node
              for node in graph.nodes for module in matches[node.identity].values()}
    pairing = _Pairing([], [], {})
    order = _OrderCheck(graph)
    for index, call in enumerate(calls):
        node = lookup.get((call.name, call.call_index))
        if node is None:
            pairing.unbound.append(call)
            continue
        pairing.layers[index] = order.check(node, call)
        if call.role != _role(node) and not _inferred_self(graph, node, call):
            raise ValueError(
                f"{node.label} (module '{call.name}') is a {_role(node)}-attention node but the "
                f"recorded call is {call.role}-attention" + (
                    f" (the graph was inferred from the data flow, which reads its queries from "
                    f"stream '{node.query}' and its keys from '{node.key}', but its map is "
                    f"{tuple(call.shape)}; no graph of yours is at fault)"
                    if graph.name == "inferred" and isinstance(call, AttentionRecord) else "")
            )
        pairing.bound.append((index, BoundNode(call.name, node.call_index, node.query,
                                               node.key, "A", node)))
    called = {(b.node.identity, b.name) for _, b in pairing.bound}
    for node in graph.nodes:
        missing = [m for m in matches[node.identity].values() if (node.identity, m) not in called]
        if missing:
            ran = sum(1 for c in calls if c.name == missing[0])
            raise ValueError(
                f"{node.label}: module '{missing[0]}' was never called in the recorded forward "
                "pass" + (f" as call {node.call_index} (it ran {ran} time(s))" if ran else "")
                + "; check the graph against the model and the inputs"
            )
    return pairing


def _inferred_self(graph: LayerGraph, node: AttentionNode,
                   call: AttentionRecord | _Expected) -> bool:
    r"""A call recorded as cross-attention (its keys handed as a tensor of their own) that the
    graph *we inferred* from the data flow makes a self node: its queries and keys are the
    same stream's tokens, each plus a term of its own (DAB-DETR's decoder self-attention adds
    separate position projections to the query and to the key content), and its map is
    square. A graph the user wrote is checked as written."""
    return (graph.name == "inferred" and not node.is_cross and node.query == node.key
            and isinstance(call, AttentionRecord) and len(call.shape) >= 2
            and call.n_query == call.n_key)


def _role(node: AttentionNode) -> str:
    """The role a recorded call of ``node`` has (``AttentionRecord.role``)."""
    return "cross" if node.is_cross else "self"


def _unrolled(
    graph: LayerGraph, matches: Mapping[tuple[str, int | None], Mapping[tuple[str, ...], str]]
) -> list[tuple[tuple[str, ...], tuple[AttentionNode, ...]]]:
    """``(layer, nodes of one step that layer has)`` in the graph's order: layer block by layer
    block, each block layer by layer, step by step."""
    out: list[tuple[tuple[str, ...], tuple[AttentionNode, ...]]] = []
    for block in graph._blocks():
        nodes = [node for step in block for node in _step_nodes(step)]
        layers = sorted({key for node in nodes for key in matches[node.identity]},
                        key=_natural_key)
        for layer in layers:
            for step in block:
                present = tuple(n for n in _step_nodes(step) if layer in matches[n.identity])
                if present:
                    out.append((layer, present))
    return out


def _natural_key(parts: tuple[str, ...]) -> tuple[tuple[int, Any], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def _step_index(graph: LayerGraph) -> dict[tuple[str, int | None], int]:
    """Node identity → the index of its step in the graph (its parallel group)."""
    return {node.identity: i for i, step in enumerate(graph.steps) for node in _step_nodes(step)}


# --------------------------------------------------------------------------- call order
class _OrderCheck:
    """Inside one layer of a layer block, calls must come in the graph's step order."""

    def __init__(self, graph: LayerGraph) -> None:
        self.position: dict[tuple[str, int | None], tuple[int, int]] = {}
        step_index = 0
        for block_id, block in enumerate(graph._blocks()):
            for step in block:
                for node in step if isinstance(step, tuple) else (step,):
                    self.position[node.identity] = (block_id, step_index)
                step_index += 1
        self.last: dict[tuple[int, tuple[str, ...]], tuple[int, AttentionNode]] = {}

    def check(self, node: AttentionNode, record: AttentionRecord | _Expected) -> tuple[str, ...]:
        """Record the call of ``node``; its layer (``*`` values)."""
        block_id, step = self.position[node.identity]
        layer = _layer_key(node.module, record.name)
        key = (block_id, layer)
        previous = self.last.get(key)
        if previous is not None and step < previous[0]:
            raise ValueError(
                f"{node.label} (module '{record.name}') ran after {previous[1].label} in the same "
                "layer, but the graph lists it before: the graph's order contradicts the model's "
                "calls"
            )
        self.last[key] = (step, node)
        return layer


def _layer_key(pattern: str, name: str) -> tuple[str, ...]:
    found = _match_pattern(pattern, [name])
    return next(iter(found), ())



def _listed_order(
    graph: LayerGraph,
    bound: Sequence[tuple[int, BoundNode]],
    records: Sequence[AttentionRecord],
    flow: DataFlow | None,
    names_of: Mapping[int, str],
) -> tuple[tuple[AttentionNode, AttentionNode], ...]:
    r"""Nodes the model began in the other order than the graph lists them (across layer
    blocks; inside one layer :class:`_OrderCheck` holds calls to the graph's order).

    Binding follows the calls, so such a graph silently stands for another order. Where the two
    nodes depend on each other — one writes a stream the other reads or writes, streams joined
    by a junction counting as one — that is an error naming both; otherwise the order cannot
    change the result and the pair ``(listed first, ran first)`` is returned to be reported.
    """
    step_of = _step_index(graph)
    first: dict[tuple[str, int | None], tuple[int, AttentionNode]] = {}
    for index, node in bound:
        first.setdefault(node.node.identity, (index, node.node))
    joined = _joined_streams(graph, flow, names_of)

    def writes(node: AttentionNode) -> str:
        return joined.get(node.query, node.query)

    def touches(node: AttentionNode) -> set[str]:
        return {writes(node), joined.get(node.key, node.key)}

    listed = sorted(first.values(), key=lambda item: step_of[item[1].identity])
    swapped: list[tuple[AttentionNode, AttentionNode]] = []
    for position, (call, node) in enumerate(listed):
        for earlier_call, earlier in listed[:position]:
            if step_of[earlier.identity] == step_of[node.identity] or earlier_call < call:
                continue
            if writes(earlier) in touches(node) or writes(node) in touches(earlier):
                raise ValueError(
                    f"{node.label} first ran (module '{records[call].name}') before "
                    f"{earlier.label} (module '{records[earlier_call].name}'), but the graph "
                    "lists it after; they share a stream, so the graph's order contradicts the "
                    "model's calls: list the nodes in the order the model runs them"
                )
            swapped.append((earlier, node))
    return tuple(swapped)


def _joined_streams(
    graph: LayerGraph, flow: DataFlow | None, names_of: Mapping[int, str]
) -> dict[str, str]:
    """Stream name → one representative of the streams junctions join (the graph's junctions
    and those the data flow found)."""
    edges = [(j.into, j.origin) for j in graph.junctions]
    if flow is not None:
        edges += [(names_of[j.into], names_of[j.origin]) for j in flow.junctions
                  if j.into in names_of and j.origin in names_of]
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    for into, origin in edges:
        if root(into) != root(origin):
            parent[root(into)] = root(origin)
    return {name: root(name) for edge in edges for name in edge}


# --------------------------------------------------------------------------- assembly
def _assemble(
    graph: LayerGraph,
    records: Sequence[AttentionRecord],
    pairing: _Pairing,
    flow: DataFlow,
    known: dict[int, str],
    inputs: Sequence[Any],
    config: Any,
) -> BoundRecording:
    """Streams, sources and junctions from the data flow; parallel groups as the flow has them."""
    names = name_streams(flow, known, inputs, stream_towers(records, flow))
    sizes = {names[s.index]: s.size for s in flow.streams}
    sources = name_sources(flow, names, inputs)
    held: dict[str, set[str]] = {names[s.index]: set() for s in flow.streams}
    for source in sources.values():
        held[source.stream].add(source.name)
    # streams that are only a token map of others (a cross call's reduced or projected keys)
    derived: dict[str, set[str]] = {}
    for junction in flow.junctions:
        stream = flow.streams[junction.into]
        if not stream.calls and (stream.fresh is None or not stream.fresh.any()):
            derived.setdefault(names[junction.into], set()).add(names[junction.origin])
    junctions_before = resolve_junctions(graph, flow, names, inputs, config)
    check_junction_sizes(junctions_before, sizes, records, flow, names)

    def streams_of(index: int, _: BoundNode) -> tuple[str, str]:
        return names[flow.calls[index].query], names[flow.calls[index].key]

    check_sizes(records, pairing.bound, streams_of, sizes)
    steps = _walk(records, pairing, streams_of,
                  lambda index: flow.calls[index].parallel_with_previous,
                  _Sources(held, derived), junctions_before)
    bound_inputs: dict[int, list[BoundInput]] = {}
    for item in flow.inputs:
        bound_inputs.setdefault(item.position, []).append(
            BoundInput(item.position, names[item.stream], item.rows)
        )
    return BoundRecording(tuple(steps), sizes, sources, bound_inputs, tuple(pairing.unbound),
                          flow, names)


def _assemble_from_graph(
    graph: LayerGraph, records: Sequence[AttentionRecord], pairing: _Pairing
) -> BoundRecording:
    """Streams as the graph names them, sized by their first call; the graph's parallel groups;
    no junctions."""
    sizes: dict[str, int] = {}
    check_sizes(records, pairing.bound, _own_streams, sizes)
    held = {name: {name} for name in graph.stream_names}
    steps = _walk(records, pairing, _own_streams, _same_group(graph, pairing),
                  _Sources(held, {}))
    return BoundRecording(tuple(steps), sizes, graph_sources(sizes), {},
                          tuple(pairing.unbound), None)


def _own_streams(_: int, node: BoundNode) -> tuple[str, str]:
    """The streams of a bound call as its graph node names them."""
    return node.query, node.key


def _same_group(graph: LayerGraph, pairing: _Pairing) -> Callable[[int], bool]:
    """Without a data flow, a call joins the previous one in a parallel group if both are of one
    step of the graph (a parallel group) and of one layer."""
    step_of = _step_index(graph)
    nodes = dict(pairing.bound)

    def group(index: int) -> tuple[int, tuple[str, ...]] | None:
        node = nodes.get(index)
        return None if node is None else (step_of[node.node.identity], pairing.layers[index])

    return lambda index: index > 0 and group(index) == group(index - 1)


@dataclass
class _Sources:
    r"""The sources each stream holds as the calls go (``held``: stream → source names) and the
    streams that are only a token map of others (``derived``: stream → origin streams)."""

    held: dict[str, set[str]]
    derived: dict[str, set[str]]

    def type_of(self, query: str, key: str) -> str:
        """B for cross-attention; self-attention (keys from the query stream itself, also when
        they are a reduced copy of it: Segformer) is C over a stream holding several sources,
        else A."""
        if is_cross(query, key) and self.derived.get(key) != {query}:
            return "B"
        return "C" if len(self.held[query]) > 1 else "A"


def _walk(
    calls: Sequence[AttentionRecord | _Expected],
    pairing: _Pairing,
    streams_of: Callable[[int, BoundNode], tuple[str, str]],
    joins: Callable[[int], bool],
    sources: _Sources | None = None,
    junctions_before: Mapping[int, Sequence[TokenMap]] | None = None,
) -> list[Step]:
    r"""The bound steps in call order: each call typed (by the sources its query stream holds at
    that call, or without ``sources`` as the graph types its node), joined to the previous
    call's group where ``joins`` says so and the two calls follow each other, and the junctions
    placed before the calls they precede."""
    steps: list[Step] = []
    bound_at = dict(pairing.bound)
    for index, call in enumerate(calls):
        for junction in (junctions_before or {}).get(index, ()):
            steps.append(junction)
            assert sources is not None
            sources.held[junction.into] |= sources.held[junction.origin]
        node = bound_at.get(index)
        if node is None:
            continue
        query, key = streams_of(index, node)
        kind = node.node.type if sources is None else sources.type_of(query, key)
        typed = BoundCall(BoundNode(node.name, node.call_index, query, key, kind, node.node),
                          call)
        previous = steps[-1] if steps else None
        if joins(index) and isinstance(previous, tuple) and previous[-1].record is calls[index - 1]:
            steps[-1] = (*previous, typed)
        else:
            steps.append((typed,))
        if sources is not None and is_cross(query, key):
            sources.held[query] |= sources.held[key]
    return steps
