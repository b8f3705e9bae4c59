r"""Bind a layer graph to one recorded forward pass, in the order the model made its calls.

The junction between :mod:`~captum_hetattn.capture` (what the model ran),
:mod:`~captum_hetattn.dataflow` (where each call's tokens came from) and
:mod:`~captum_hetattn.graph` (what the explanation expects). Binding is done once per
explanation and owns:

- **call order**: recorded calls are walked in the order the model made them and each is
  matched to the node whose module pattern (and ``call_index``) it fits; the graph's steps are a
  template, not an order. Inside one layer of one layer block, calls must follow the graph's
  step order, else a ``ValueError`` names the first node out of order. Calls that no node
  matches are left out and reported in :attr:`BoundRecording.unbound`.
- **streams**: the graph's stream names are checked against the data flow (a graph that puts
  two token sequences in one stream, or one in two, is an error naming the module); streams the
  graph does not name get names from their module paths and inputs.
- **types**: each concrete call is typed from the sources its query stream holds *at that
  call*: ``B`` for cross-attention, ``C`` for self-attention over a stream holding more than one
  source (after a cross call or a junction into it, or a single-stream fusion of two inputs),
  else ``A`` — so a decoder's first self-attention is ``A`` and the later ones ``C``.
- **junctions**: placed where the data flow puts them; the graph's junctions resolve their token
  maps from the inputs and the config (``splice``, ``concat``) or take the probed map.
- **sources**: the input modalities, as columns of the streams, named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import torch
from torch import Tensor

from captum_hetattn.capture import AttentionRecord
from captum_hetattn.dataflow import DataFlow, FlowJunction, FlowStream
from captum_hetattn.graph import AttentionNode, BoundNode, Junction, LayerGraph, _match_pattern
from captum_hetattn.rules import TokenMap

_LAYER_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def layer_pattern(name: str) -> str:
    """``encoder.block.3.layer.0.SelfAttention`` → ``encoder.block.*.layer.0.SelfAttention``."""
    return _LAYER_INDEX.sub(".*", name, count=1)


def tower_of(name: str) -> str:
    """The path before the layer index (the whole name for a module outside a layer list)."""
    match = _LAYER_INDEX.search(name)
    return name[: match.start()] if match else name


@dataclass(frozen=True)
class BoundCall:
    """A graph node together with the recorded call it describes."""

    node: BoundNode
    record: AttentionRecord


@dataclass(frozen=True)
class BoundSource:
    """An input modality: ``columns`` of ``stream``, fed by model inputs ``inputs``; ``parts``
    lists every ``(stream, columns)`` that holds it (several streams built from one input)."""

    name: str
    stream: str
    columns: Tensor
    inputs: tuple[int, ...]
    parts: tuple[tuple[str, Tensor], ...] = ()


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
        flow: the :func:`~captum_hetattn.dataflow.analyse` result of the same forward; without
            it, streams are taken from the graph as they are and there are no junctions.
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
    names = [n for n in module_names if n]
    matches = graph.match(names)
    lookup = {(module, node.call_index or 0): node
              for node in graph.nodes for module in matches[node.identity].values()}
    bound: list[tuple[int, BoundNode]] = []
    unbound: list[AttentionRecord] = []
    order = _OrderCheck(graph)
    for index, record in enumerate(records):
        node = lookup.get((record.name, record.call_index))
        if node is None:
            unbound.append(record)
            continue
        order.check(node, record)
        if record.role != ("cross" if node.is_cross else "self"):
            raise ValueError(
                f"{node.label} (module '{record.name}') is a "
                f"{'cross' if node.is_cross else 'self'}-attention node but the recorded call is "
                f"{record.role}-attention"
            )
        bound.append((index, BoundNode(record.name, node.call_index, node.query, node.key,
                                       "A", node)))
    called = {(b.node.identity, b.name) for _, b in bound}
    for node in graph.nodes:
        missing = [m for m in matches[node.identity].values() if (node.identity, m) not in called]
        if missing:
            ran = sum(1 for r in records if r.name == missing[0])
            raise ValueError(
                f"{node.label}: module '{missing[0]}' was never called in the recorded forward "
                "pass" + (f" as call {node.call_index} (it ran {ran} time(s))" if ran else "")
                + "; check the graph against the model and the inputs"
            )
    names_of = _stream_names(graph, bound, records, flow)
    swapped = _listed_order(graph, bound, records, flow, names_of)
    recording = _assemble(graph, records, bound, unbound, flow, names_of, inputs, config)
    return replace(recording, swapped=swapped)


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

    def check(self, node: AttentionNode, record: AttentionRecord) -> None:
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
    step_of = {node.identity: i for i, step in enumerate(graph.steps)
               for node in (step if isinstance(step, tuple) else (step,))}
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


# --------------------------------------------------------------------------- streams
def _stream_names(
    graph: LayerGraph,
    bound: Sequence[tuple[int, BoundNode]],
    records: Sequence[AttentionRecord],
    flow: DataFlow | None,
) -> dict[int, str]:
    """Data-flow stream index → name: the graph's names, checked, then inferred ones."""
    if flow is None:
        return {}
    names: dict[int, str] = {}
    origin: dict[str, str] = {}
    for index, node in bound:
        call = flow.calls[index]
        for side, stream, name in (("query", call.query, node.query), ("key", call.key, node.key)):
            where = f"module '{records[index].name}' [call {records[index].call_index}]"
            if stream in names and names[stream] != name:
                raise ValueError(
                    f"the graph puts the {side} tokens of {where} in stream '{name}', but they "
                    f"are the tokens of stream '{names[stream]}' ({origin[names[stream]]})"
                )
            owner = next((s for s, n in names.items() if n == name), None)
            if owner is not None and owner != stream:
                raise ValueError(
                    f"the graph's stream '{name}' holds two different token sequences: the "
                    f"{side} tokens of {where} and those of {origin[name]}; give them two streams"
                )
            names[stream] = name
            origin.setdefault(name, where)
    return names


def _keyword_table() -> list[tuple[re.Pattern[str], str]]:
    text = resources.files("captum_hetattn.presets").joinpath("stream_keywords.json").read_text()
    return [(re.compile(pattern), name) for pattern, name in json.loads(text)["keywords"]]


def _input_kind(tensor: Any) -> str | None:
    if not isinstance(tensor, Tensor):
        return None
    if not tensor.is_floating_point():
        return "text"
    if tensor.dim() >= 4:
        return "image"
    if tensor.dim() == 2:
        return "audio"  # a waveform (B, samples)
    return None


_GENERIC_NAMES = frozenset({"source", "target"})


def name_streams(
    flow: DataFlow, known: Mapping[int, str], inputs: Sequence[Any], towers: Mapping[int, str]
) -> dict[int, str]:
    r"""Names for the streams ``known`` leaves unnamed: the first keyword of
    ``stream_keywords.json`` that matches the stream's module paths (``source`` / ``target``,
    the generic encoder / decoder words, only after ``image`` for a stream fed by an image),
    else the kind of the input that feeds it (ids → ``text``, images → ``image``), ``joint`` for
    a stream fed by two inputs, else ``stream<i>``; a junction-only stream is
    ``<origin>_tokens``."""
    names = dict(known)
    taken = set(names.values())
    keywords = _keyword_table()
    for stream in flow.streams:
        if stream.index in names or (stream.fresh is not None and not stream.fresh.any()
                                     and not stream.calls):
            continue
        path = towers.get(stream.index, stream.tower)
        matched = [name for pattern, name in keywords if pattern.search(path)]
        sources = [s for s in flow.sources if s.stream == stream.index]
        kinds = sorted({_input_kind(inputs[p]) for source in sources for p in source.inputs
                        if 0 <= p < len(inputs)} - {None})
        # an image or audio input names its stream before the generic encoder/decoder words
        candidates = [n for n in matched if n not in _GENERIC_NAMES]
        candidates += [k for k in kinds if k != "text"]
        candidates += [n for n in matched if n in _GENERIC_NAMES]
        if len(sources) > 1:
            candidates.append("joint")
        candidates += kinds
        origin = _only_origin(flow, stream)
        if origin in names and not sources and all(c in _GENERIC_NAMES for c in candidates):
            # a later stage of one stream (Swin's merged patches): named after the first
            candidates = [_stage_name(names[origin], taken)]
        name = next((c for c in candidates if c not in taken), f"stream{stream.index}")
        names[stream.index] = name
        taken.add(name)
    for stream in flow.streams:
        if stream.index not in names:
            junction = next((j for j in flow.junctions if j.into == stream.index), None)
            base = names.get(junction.origin, "stream") if junction else "stream"
            name = f"{base}_tokens"
            while name in taken:
                name += "_"
            names[stream.index] = name
            taken.add(name)
    return names


def _only_origin(flow: DataFlow, stream: FlowStream) -> int | None:
    """The one stream all of a stream's rows come from through junctions, if so."""
    if stream.fresh is None or bool(stream.fresh.any()):
        return None
    origins = {j.origin for j in flow.junctions if j.into == stream.index}
    return origins.pop() if len(origins) == 1 else None


def _stage_name(base: str, taken: set[str]) -> str:
    stem = re.sub(r"_\d+$", "", base)
    number = 2
    while f"{stem}_{number}" in taken:
        number += 1
    return f"{stem}_{number}"


# --------------------------------------------------------------------------- assembly
def _assemble(
    graph: LayerGraph,
    records: Sequence[AttentionRecord],
    bound: list[tuple[int, BoundNode]],
    unbound: list[AttentionRecord],
    flow: DataFlow | None,
    known: dict[int, str],
    inputs: Sequence[Any],
    config: Any,
) -> BoundRecording:
    if flow is None:
        return _assemble_without_flow(graph, records, bound, unbound)
    towers = {c.query: tower_of(records[i].name) for i, c in enumerate(flow.calls)}
    names = name_streams(flow, known, inputs, towers)
    sizes = {names[s.index]: s.size for s in flow.streams}
    sources = _name_sources(flow, names, inputs)
    held = {names[s.index]: set() for s in flow.streams}
    for source in sources.values():
        held[source.stream].add(source.name)
    # streams that are only a token map of others (a cross call's reduced or projected keys)
    derived: dict[str, set[str]] = {}
    for junction in flow.junctions:
        stream = flow.streams[junction.into]
        if not stream.calls and (stream.fresh is None or not stream.fresh.any()):
            derived.setdefault(names[junction.into], set()).add(names[junction.origin])
    declared = {(j.into, j.origin): j for j in graph.junctions}
    junctions_before: dict[int, list[TokenMap]] = {}
    for junction in flow.junctions:
        into, origin = names[junction.into], names[junction.origin]
        spec = declared.pop((into, origin), None)
        resolved = _resolve(junction, spec, into, origin, inputs, config, flow)
        junctions_before.setdefault(junction.before, []).append(resolved)
    if declared:
        into, origin = next(iter(declared))
        raise ValueError(
            f"the graph's junction '{origin}'->'{into}' does not occur in the recorded forward: "
            f"no token of stream '{origin}' reaches stream '{into}' without attention"
        )
    steps: list[Step] = []
    bound_at = dict(bound)
    for index in range(len(records)):
        for junction in junctions_before.get(index, ()):
            steps.append(junction)
            held[junction.into] |= held[junction.origin]
        node = bound_at.get(index)
        if node is None:
            continue
        query, key = names[flow.calls[index].query], names[flow.calls[index].key]
        _check_size(sizes, query, records[index].n_query, node, records[index])
        _check_size(sizes, key, records[index].n_key, node, records[index])
        typed = BoundNode(node.name, node.call_index, query, key,
                          _concrete_type(query, key, held, derived), node.node)
        call = BoundCall(typed, records[index])
        previous = steps[-1] if steps else None
        if (flow.calls[index].parallel_with_previous and isinstance(previous, tuple)
                and previous[-1].record is records[index - 1]):
            steps[-1] = (*previous, call)
        else:
            steps.append((call,))
        if query != key:
            held[query] |= held[key]
    bound_inputs: dict[int, list[BoundInput]] = {}
    for item in flow.inputs:
        bound_inputs.setdefault(item.position, []).append(
            BoundInput(item.position, names[item.stream], item.rows)
        )
    return BoundRecording(tuple(steps), sizes, sources, bound_inputs, tuple(unbound), flow, names)


def _concrete_type(
    query: str, key: str, held: Mapping[str, set[str]],
    derived: Mapping[str, set[str]] | None = None,
) -> str:
    """B for cross-attention; self-attention (keys from the query stream itself, also when
    they are a reduced copy of it: Segformer) is C over a stream holding several sources,
    else A."""
    if query != key and (derived or {}).get(key) != {query}:
        return "B"
    return "C" if len(held[query]) > 1 else "A"


def _check_size(sizes: dict[str, int], stream: str, size: int, node: BoundNode,
                record: AttentionRecord) -> None:
    if sizes[stream] != size:
        raise ValueError(
            f"{node.label}: module '{record.name}' sees {size} tokens in stream '{stream}', "
            f"which has {sizes[stream]}"
        )


def _name_sources(
    flow: DataFlow, names: Mapping[int, str], inputs: Sequence[Any]
) -> dict[str, BoundSource]:
    """One source per stream named like the stream; split streams name theirs by input kind.

    Streams built from the same inputs (BridgeTower's text tower and its cross-modal copy, both
    from the ids) hold one source: its relevance is the sum over those streams.
    """
    out: dict[str, BoundSource] = {}
    taken = set(names.values())
    by_stream: dict[int, list[Any]] = {}
    for source in flow.sources:
        by_stream.setdefault(source.stream, []).append(source)
    by_inputs: dict[tuple[int, ...], str] = {}
    for stream, group in by_stream.items():
        for k, source in enumerate(group):
            same = by_inputs.get(source.inputs) if source.inputs != (-1,) else None
            if same is not None and len(out[same].columns) == len(source.columns):
                first = out[same]
                out[same] = BoundSource(first.name, first.stream, first.columns, first.inputs,
                                        (*first.parts, (names[stream], source.columns)))
                continue
            if len(group) == 1:
                name = names[stream]
            else:
                kinds = [_input_kind(inputs[p]) for p in source.inputs if 0 <= p < len(inputs)]
                kind = next((k for k in kinds if k), None)
                free = {kind, "image"} - (taken - {names[stream]}) - set(out)
                if kind and kind in free:
                    name = kind
                elif "image" in free and any(p >= 0 for p in source.inputs):
                    name = "image"
                else:
                    name = f"{names[stream]}_{k}"
            out[name] = BoundSource(name, names[stream], source.columns, source.inputs,
                                    ((names[stream], source.columns),))
            by_inputs.setdefault(source.inputs, name)
    return out


def _resolve(
    junction: FlowJunction,
    spec: Junction | None,
    into: str,
    origin: str,
    inputs: Sequence[Any],
    config: Any,
    flow: DataFlow,
) -> TokenMap:
    probed = junction.rows.matrix
    if spec is None or spec.kind == "probe":
        return TokenMap(into, origin, junction.weights, probed.any(dim=-1),
                        f"junction '{origin}'->'{into}' (probe)", junction.additive)
    batch, n_into, n_origin = probed.shape
    params = {k: _param(v, config, spec) for k, v in spec.params.items()}
    skip = int(params.get("skip", 0))
    matrix = torch.zeros_like(probed)
    if spec.kind == "splice":
        if "placeholder" not in params:
            raise ValueError(f"{spec.label}: a splice needs a 'placeholder' token id")
        ids = _token_ids(flow, junction.into, inputs, n_into, spec)
        for b in range(batch):
            rows = (ids[b] == int(params["placeholder"])).nonzero().flatten()
            if rows.numel() != n_origin - skip:
                raise ValueError(
                    f"{spec.label}: example {b} has {rows.numel()} placeholder tokens "
                    f"(id {params['placeholder']}) but stream '{origin}' gives {n_origin - skip} "
                    f"tokens (skip={skip})"
                )
            matrix[b, rows, torch.arange(skip, n_origin)] = True
    else:  # concat
        count = int(params.get("count", n_origin - skip))
        offset = int(params.get("offset", 0))
        offset = offset + n_into if offset < 0 else offset
        if offset + count > n_into or skip + count > n_origin:
            raise ValueError(
                f"{spec.label}: {count} tokens from {skip} at offset {offset} do not fit streams "
                f"'{origin}' ({n_origin}) -> '{into}' ({n_into})"
            )
        matrix[:, torch.arange(offset, offset + count), torch.arange(skip, skip + count)] = True
    weights = matrix.float() / matrix.float().sum(dim=-1, keepdim=True).clamp(min=1)
    return TokenMap(into, origin, weights, matrix.any(dim=-1),
                    f"junction '{origin}'->'{into}' ({spec.kind})")


def _token_ids(flow: DataFlow, stream: int, inputs: Sequence[Any], n: int,
               spec: Junction) -> Tensor:
    for item in flow.inputs:
        tensor = inputs[item.position] if item.position < len(inputs) else None
        if (item.stream == stream and isinstance(tensor, Tensor)
                and not tensor.is_floating_point() and tensor.shape[-1] == n):
            return tensor
    raise ValueError(
        f"{spec.label}: no token-id input of {n} tokens feeds the receiving stream, so the "
        "placeholder positions cannot be read; pass the ids as an input or use kind='probe'"
    )


def _param(value: Any, config: Any, spec: Junction) -> Any:
    if not isinstance(value, Mapping):
        return value
    key = value.get("config")
    found = _config_value(config, key)
    if found is None:
        raise ValueError(f"{spec.label}: the model config has no '{key}'")
    if "values" in value:
        if found not in value["values"]:
            raise ValueError(
                f"{spec.label}: config '{key}'={found!r} is not one of {list(value['values'])}"
            )
        return value["values"][found]
    return found


def _config_value(config: Any, key: str | None) -> Any:
    if config is None or key is None:
        return None
    if getattr(config, key, None) is not None:
        return getattr(config, key)
    for sub in getattr(config, "sub_configs", {}) or {}:
        found = _config_value(getattr(config, sub, None), key)
        if found is not None:
            return found
    return None


def _assemble_without_flow(
    graph: LayerGraph,
    records: Sequence[AttentionRecord],
    bound: list[tuple[int, BoundNode]],
    unbound: list[AttentionRecord],
) -> BoundRecording:
    """Streams as the graph names them, the graph's parallel groups, no junctions."""
    sizes: dict[str, int] = {}
    origin: dict[str, str] = {}
    held = {name: {name} for name in graph.stream_names}
    steps: list[Step] = []
    group_of = {node.identity: i for i, step in enumerate(graph.steps)
                for node in (step if isinstance(step, tuple) else (step,))}
    for index, node in bound:
        record = records[index]
        for stream, size in ((node.query, record.n_query), (node.key, record.n_key)):
            if stream not in sizes:
                sizes[stream], origin[stream] = size, node.label
            elif sizes[stream] != size:
                raise ValueError(
                    f"{node.label} sees {size} tokens in stream '{stream}', but "
                    f"{origin[stream]} saw {sizes[stream]}"
                )
        typed = BoundNode(node.name, node.call_index, node.query, node.key,
                          _concrete_type(node.query, node.key, held), node.node)
        call = BoundCall(typed, record)
        previous = steps[-1] if steps else None
        if (isinstance(previous, tuple) and isinstance(graph.steps[group_of[node.node.identity]],
                                                       tuple)
                and group_of[previous[-1].node.node.identity] == group_of[node.node.identity]
                and previous[-1].record is records[index - 1]):
            steps[-1] = (*previous, call)
        else:
            steps.append((call,))
        if node.is_cross:
            held[node.query] |= held[node.key]
    sources = {s: BoundSource(s, s, torch.arange(n), (), ((s, torch.arange(n)),))
               for s, n in sizes.items()}
    return BoundRecording(tuple(steps), sizes, sources, {}, tuple(unbound), None)
