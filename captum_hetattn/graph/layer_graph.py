r"""Layer graphs: which attention modules a model runs, in which order, between which streams.

A :class:`LayerGraph` is an ordered list of steps over named streams; a step is one
:class:`~captum_hetattn.graph.nodes.AttentionNode` or a *parallel group* (a tuple/list of nodes
that the model computes from the same inputs, so they all read the relevance state from before the
group). Consecutive steps whose patterns share the text before their first ``*`` form a *layer
block* and are unrolled layer by layer: ``decoder.layers.*.self_attn`` followed by
``decoder.layers.*.encoder_attn`` runs self, cross, self, cross, ... like the model does.

This module is plain Python: it knows nothing about torch or transformers (binding a graph to a
model is :mod:`captum_hetattn.binding.bind`'s job; :meth:`LayerGraph.bind` hands it over).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from captum_hetattn.graph.junctions import Junction
from captum_hetattn.graph.nodes import (
    AttentionNode,
    BoundNode,
    NodeType,
    Step,
    Stream,
    _coerce_step,
    _coerce_stream,
    _step_nodes,
)
from captum_hetattn.graph.spec import (
    GRAPH_FORMAT_VERSION,
    GRAPH_KEYS,
    READOUT_KEYS,
    STREAM_KEYS,
    _check_keys,
)


@dataclass(frozen=True)
class LayerGraph:
    r"""The attention structure of a model, as an ordered list of steps over named streams.

    Args:
        streams: stream names (or :class:`Stream` objects), e.g. ``["text", "image"]``.
        steps: :class:`AttentionNode` objects in the order the model runs them; a tuple/list of
            nodes is a parallel group (all read the relevance state from before the group).
        readout_stream: stream whose token row is the explanation; defaults to the query stream of
            the last node.
        readout_token: token of the readout stream (``0`` = ``[CLS]``) or ``"last"``.
        name: optional label (presets use the model family).

    Every node's ``type`` is resolved on construction (given types are checked), see
    :attr:`nodes`. Invalid graphs raise ``ValueError`` naming the offending node or stream.

    Examples::

        >>> graph = LayerGraph(
        ...     streams=["text", "image"],
        ...     steps=[
        ...         AttentionNode("encoder.text_layers.*.attn", query="text"),
        ...         AttentionNode("encoder.image_layers.*.attn", query="image"),
        ...         (AttentionNode("encoder.x_layers.*.cross", query="text", key="image",
        ...                        call_index=0),
        ...          AttentionNode("encoder.x_layers.*.cross", query="image", key="text",
        ...                        call_index=1)),
        ...         AttentionNode("encoder.x_layers.*.text_self", query="text"),
        ...     ],
        ... )
        >>> [node.type for node in graph.nodes]
        ['A', 'A', 'B', 'B', 'C']
    """

    streams: tuple[Stream, ...]
    steps: tuple[Step, ...]
    readout_stream: str | None = None
    readout_token: int | str = 0
    name: str = ""
    junctions: tuple[Junction, ...] = ()
    _types: tuple[NodeType, ...] = field(default=(), repr=False, compare=False)

    def __init__(
        self,
        streams: Sequence[str | Stream],
        steps: Sequence[AttentionNode | Sequence[AttentionNode]],
        readout_stream: str | None = None,
        readout_token: int | str = 0,
        name: str = "",
        junctions: Sequence[Junction] = (),
    ) -> None:
        if isinstance(streams, (str, Stream)):
            raise TypeError("streams must be a list of stream names, not a single stream")
        object.__setattr__(self, "streams", tuple(_coerce_stream(s) for s in streams))
        object.__setattr__(
            self, "steps", tuple(_coerce_step(step, i) for i, step in enumerate(steps))
        )
        object.__setattr__(self, "readout_stream", readout_stream)
        object.__setattr__(self, "readout_token", readout_token)
        object.__setattr__(self, "name", name)
        for junction in junctions:
            if not isinstance(junction, Junction):
                raise TypeError(f"junctions holds Junction objects, got {type(junction).__name__}")
        object.__setattr__(self, "junctions", tuple(junctions))
        object.__setattr__(self, "_types", ())
        self.validate()

    # ------------------------------------------------------------------ structure
    @property
    def stream_names(self) -> tuple[str, ...]:
        return tuple(stream.name for stream in self.streams)

    @property
    def nodes(self) -> tuple[AttentionNode, ...]:
        """All nodes in order (groups flattened), each with its resolved ``type``."""
        flat = [node for step in self.steps for node in _step_nodes(step)]
        return tuple(replace(node, type=t) for node, t in zip(flat, self._types, strict=True))

    @property
    def resolved_readout_stream(self) -> str:
        if self.readout_stream is not None:
            return self.readout_stream
        return self.nodes[-1].query

    def _blocks(self) -> list[list[Step]]:
        """Consecutive steps grouped into layer blocks (a step without ``*`` is its own block)."""
        blocks: list[list[Step]] = []
        current_key: str | None = None
        for step in self.steps:
            keys = {node.block_key for node in _step_nodes(step)}
            key = keys.pop() if len(keys) == 1 else None
            if key is not None and key == current_key:
                blocks[-1].append(step)
            else:
                blocks.append([step])
            current_key = key
        return blocks

    def _infer_types(self) -> tuple[NodeType, ...]:
        """B for cross nodes; C for self nodes on a stream already fused by a B node or by a
        splice / concatenation junction; else A.

        A layer block repeats, so a B node into stream x anywhere in a block makes every self
        node on x in that block C (from its second layer on, it sees fused tokens).
        """
        # a stream that receives another stream's tokens by a splice or a concatenation holds
        # two sources from its first call on (probed junctions may also merge one stream
        # into its own later stage, which fuses nothing: the binding decides those per call)
        fused: set[str] = {j.into for j in self.junctions
                           if j.kind in ("splice", "concat") and j.into != j.origin}
        types: dict[int, NodeType] = {}
        for block in self._blocks():
            nodes = [node for step in block for node in _step_nodes(step)]
            repeats = any("*" in node.module for node in nodes)
            block_fused = {node.query for node in nodes if node.is_cross} if repeats else set()
            for step in block:
                for node in _step_nodes(step):
                    if node.is_cross:
                        types[id(node)] = "B"
                    elif node.query in fused or node.query in block_fused:
                        types[id(node)] = "C"
                    else:
                        types[id(node)] = "A"
                # a parallel group's nodes all read the pre-group state
                fused.update(node.query for node in _step_nodes(step) if node.is_cross)
        return tuple(types[id(node)] for step in self.steps for node in _step_nodes(step))

    def validate(self) -> LayerGraph:
        r"""Check the graph; raise ``ValueError`` naming the node or stream at fault."""
        names = self.stream_names
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"Duplicate stream name(s) {dup}")
        if not self.steps:
            raise ValueError("A LayerGraph needs at least one attention node")
        seen: dict[tuple[str, int | None], AttentionNode] = {}
        used: set[str] = set()
        for step in self.steps:
            group = _step_nodes(step)
            for node in group:
                _check_streams(node.label, (("query", node.query), ("key", node.key)), names)
                used.update((node.query, node.key))
                if node.identity in seen:
                    raise ValueError(f"Duplicate {node.label}: the graph lists it twice")
                seen[node.identity] = node
                if node.type == "B" and not node.is_cross:
                    raise ValueError(
                        f"{node.label} is declared type B (cross-attention) but its query and key "
                        f"stream are both '{node.query}'"
                    )
            if len({node.block_key for node in group}) > 1:
                raise ValueError(
                    f"Parallel group {[n.label for n in group]} mixes layer patterns; "
                    "nodes in one group must share the text before '*'"
                )
        for junction in self.junctions:
            _check_streams(junction.label, (("into", junction.into), ("from", junction.origin)),
                           names)
            used.update((junction.into, junction.origin))
        unused = [n for n in names if n not in used]
        if unused:
            raise ValueError(f"Stream(s) {unused} are declared but no node reads or writes them")
        types = self._infer_types()
        flat = [node for step in self.steps for node in _step_nodes(step)]
        for node, inferred in zip(flat, types, strict=True):
            if node.type is not None and node.type != inferred:
                why = {
                    "B": "its query and key streams differ",
                    "C": f"stream '{node.query}' has received another source before it",
                    "A": f"stream '{node.query}' has not received another source before it",
                }[inferred]
                raise ValueError(
                    f"{node.label} is declared type {node.type} but is type {inferred}: {why}"
                )
        object.__setattr__(self, "_types", types)
        if self.readout_stream is not None and self.readout_stream not in names:
            raise ValueError(
                f"Unknown readout stream '{self.readout_stream}' (graph streams: {list(names)})"
            )
        token = self.readout_token
        if not (token == "last" or (isinstance(token, int) and not isinstance(token, bool))):
            raise ValueError(f"readout_token must be an int or 'last', got {token!r}")
        return self

    # ------------------------------------------------------------------ binding to a model
    def match(
        self, module_names: Iterable[str]
    ) -> dict[tuple[str, int | None], dict[tuple[str, ...], str]]:
        r"""The concrete modules each node stands for.

        Args:
            module_names: e.g. ``[name for name, _ in model.named_modules()]``.

        Returns:
            Per node :attr:`~AttentionNode.identity`, its ``*`` values → module name.

        Raises:
            ValueError: a node matches no module or modules under several prefixes, or two
                nodes claim the same module and call (a suffix pattern and a full path): it
                would be applied twice.
        """
        names = [n for n in module_names if n]
        matches: dict[tuple[str, int | None], dict[tuple[str, ...], str]] = {}
        claimed: dict[tuple[str, int], AttentionNode] = {}
        for node in self.nodes:
            found = _match_pattern(node.module, names)
            if not found:
                raise ValueError(
                    f"{node.label} matches no module of the model; check the module pattern "
                    "('*' stands for one path segment)"
                )
            for module in found.values():
                # a node without call_index stands for the module's first (only) call
                claim = (module, node.call_index or 0)
                other = claimed.setdefault(claim, node)
                if other is not node:
                    call = "" if node.call_index is None else f" (call {claim[1]})"
                    raise ValueError(
                        f"module '{module}'{call} is bound by two nodes, {other.label} and "
                        f"{node.label}: its map would be applied twice; keep one of them (a "
                        "pattern also matches the end of a longer module path)"
                    )
            matches[node.identity] = found
        return matches

    def bind(self, module_names: Iterable[str]) -> list[tuple[BoundNode, ...]]:
        r"""Unroll the graph over a model's qualified module names.

        Args:
            module_names: e.g. ``[name for name, _ in model.named_modules()]``.

        Returns:
            The concrete steps in execution order; each is a tuple of :class:`BoundNode`
            (length > 1 for a parallel group).

        Raises:
            ValueError: as :meth:`match`.
        """
        # the one binder (captum_hetattn.binding.bind) pairs calls with nodes; it imports the
        # graph, so it is imported when a graph is bound, not with the graph
        from captum_hetattn.binding.bind import bind_graph

        return bind_graph(self, module_names)

    def agrees_with(self, other: LayerGraph, module_names: Iterable[str]) -> bool:
        r"""Whether two graphs describe the same model the same way.

        Same stream names (in any order) and readout, and the same concrete calls (module, call
        index, streams, type) in the same order and groups once bound to ``module_names``.
        Patterns may differ (a suffix pattern and a full path agree); names and stream
        descriptions are ignored.
        """
        names = list(module_names)

        def signature(graph: LayerGraph) -> tuple[Any, ...]:
            calls = tuple(
                tuple((n.name, n.call_index, n.query, n.key, n.type) for n in step)
                for step in graph.bind(names)
            )
            return (sorted(graph.stream_names), graph.resolved_readout_stream,
                    graph.readout_token, calls)

        return signature(self) == signature(other)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        steps: list[Any] = []
        for step in self.steps:
            if isinstance(step, tuple):
                steps.append([node.to_dict() for node in step])
            else:
                steps.append(step.to_dict())
        return {
            "format_version": GRAPH_FORMAT_VERSION,
            "name": self.name,
            "streams": [
                {"name": s.name, "description": s.description} if s.description else s.name
                for s in self.streams
            ],
            "steps": steps,
            "readout": {"stream": self.readout_stream, "token": self.readout_token},
            **({"junctions": [j.to_dict() for j in self.junctions]} if self.junctions else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerGraph:
        r"""A graph from its dict (:meth:`to_dict`, the JSON presets).

        Raises:
            ValueError: an unknown key anywhere (``readuot``, ``readout.tokn``,
                ``steps[0].modul``), named with its path and the closest valid key; a missing
                one; an unsupported ``format_version``; or an invalid graph.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"A graph spec must be a dict, got {type(data).__name__}")
        _check_keys(data, GRAPH_KEYS, "", "Graph spec")
        version = data.get("format_version", GRAPH_FORMAT_VERSION)
        if version != GRAPH_FORMAT_VERSION:
            raise ValueError(f"Unsupported graph format_version {version!r}")
        missing = {"streams", "steps"} - set(data)
        if missing:
            raise ValueError(f"Graph spec lacks {sorted(missing)}")
        for i, stream in enumerate(data["streams"]):
            if isinstance(stream, Mapping):
                _check_keys(stream, STREAM_KEYS, f"streams[{i}]", f"Stream spec {dict(stream)!r}")
        steps: list[Any] = []
        for i, step in enumerate(data["steps"]):
            if isinstance(step, Mapping):
                steps.append(AttentionNode.from_dict(step, f"steps[{i}]"))
            elif isinstance(step, (list, tuple)):
                steps.append(tuple(AttentionNode.from_dict(node, f"steps[{i}][{j}]")
                                   for j, node in enumerate(step)))
            else:
                raise ValueError(f"Graph spec step {i} must be a dict or a list of dicts")
        readout = data.get("readout") or {}
        if not isinstance(readout, Mapping):
            raise ValueError(
                f"Graph spec 'readout' must be a dict {{'stream': ..., 'token': ...}}, got "
                f"{readout!r}"
            )
        _check_keys(readout, READOUT_KEYS, "readout", "Graph spec readout")
        return cls(
            streams=list(data["streams"]),
            steps=steps,
            readout_stream=readout.get("stream"),
            readout_token=readout.get("token", 0),
            name=data.get("name", ""),
            junctions=[Junction.from_dict(j, f"junctions[{i}]")
                       for i, j in enumerate(data.get("junctions", ()))],
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> LayerGraph:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerGraph):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json(sort_keys=True))



def _match_pattern(pattern: str, names: Sequence[str]) -> dict[tuple[str, ...], str]:
    """Map each match's ``*`` values to the module name; full-name or dot-suffix matches.

    A suffix match is accepted only if all matches share one prefix; several prefixes (e.g.
    ``layers.*.self_attn`` in both encoder and decoder) are ambiguous and raise.
    """
    body = r"\.".join("([^.]+)" if part == "*" else re.escape(part) for part in pattern.split("."))
    full = re.compile(rf"^{body}$")
    suffix = re.compile(rf"^(.+)\.{body}$")
    found = {m.groups(): name for name in names if (m := full.match(name))}
    if found:
        return found
    prefixes: dict[str, dict[tuple[str, ...], str]] = {}
    for name in names:
        m = suffix.match(name)
        if m:
            prefixes.setdefault(m.group(1), {})[m.groups()[1:]] = name
    if len(prefixes) > 1:
        raise ValueError(
            f"Module pattern '{pattern}' is ambiguous: it matches under {sorted(prefixes)}; "
            "give the full module path"
        )
    return next(iter(prefixes.values()), {})


def _check_streams(label: str, roles: Iterable[tuple[str, str]], names: Sequence[str]) -> None:
    """Every stream a node or junction names is one of the graph's."""
    for role, stream in roles:
        if stream not in names:
            raise ValueError(f"{label}: unknown {role} stream '{stream}' (graph streams: "
                             f"{list(names)})")
