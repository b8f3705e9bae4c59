r"""Layer graphs: which attention modules a model runs, in which order, between which streams.

A *stream* is one information source (``text``, ``image``, ``queries`` ...). An
:class:`AttentionNode` names an attention module (a pattern over qualified module names where
``*`` stands for one path segment, usually the layer index), the stream its queries come from and
the stream its keys/values come from, and its type:

- ``"A"``: homogenous self-attention (query stream == key stream, stream not yet fused);
- ``"B"``: co-/cross-attention (query stream != key stream);
- ``"C"``: self-attention over a stream that has already received another source via a B node.

A :class:`LayerGraph` is an ordered list of steps; a step is one node or a *parallel group* (a
tuple/list of nodes that the model computes from the same inputs, so they all read the relevance
state from before the group). Consecutive steps whose patterns share the text before their first
``*`` form a *layer block* and are unrolled layer by layer: ``decoder.layers.*.self_attn`` followed
by ``decoder.layers.*.encoder_attn`` runs self, cross, self, cross, ... like the model does.

This module is plain Python: it knows nothing about torch or transformers.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

NodeType = Literal["A", "B", "C"]
NODE_TYPES: tuple[str, ...] = ("A", "B", "C")
GRAPH_FORMAT_VERSION = 1
GRAPH_KEYS: tuple[str, ...] = ("format_version", "name", "streams", "steps", "readout", "junctions")
NODE_KEYS: tuple[str, ...] = ("module", "query", "key", "type", "call_index")
STREAM_KEYS: tuple[str, ...] = ("name", "description")
READOUT_KEYS: tuple[str, ...] = ("stream", "token")


def _check_keys(data: Mapping[str, Any], valid: Sequence[str], path: str, what: str) -> None:
    r"""A misspelt key would be ignored silently: raise ``ValueError`` naming it, where it is
    (``path``, e.g. ``readout.tokn``) and the closest valid key."""
    unknown = [key for key in data if key not in valid]
    if not unknown:
        return
    first = str(unknown[0])
    close = difflib.get_close_matches(first, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    where = f"{path}.{first}" if path else first
    raise ValueError(
        f"{what} has unknown fields {sorted(map(str, unknown))} (at '{where}'; valid: "
        f"{', '.join(valid)}){hint}"
    )


@dataclass(frozen=True)
class Stream:
    r"""One information source of a model.

    Args:
        name: short identifier used by nodes and outputs (``"text"``, ``"image"``, ...).
        description: free text for humans (what the tokens are).
    """

    name: str
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Stream name must be a non-empty string, got {self.name!r}")


@dataclass(frozen=True)
class AttentionNode:
    r"""One attention module (or a family of them, one per layer) in a :class:`LayerGraph`.

    Args:
        module: qualified module name, or a pattern where ``*`` matches one path segment
            (``"encoder.layer.*.attention.self"``). A pattern may also match a suffix of the
            real names (``bert.encoder.layer.0.attention.self``) as long as that is unambiguous.
        query: stream the queries come from (and the stream whose relevance the call updates).
        key: stream the keys/values come from; defaults to ``query`` (self-attention).
        type: ``"A"``, ``"B"`` or ``"C"``; ``None`` lets the graph infer it from its structure.
        call_index: for modules that run more than once per forward (LXMERT's
            ``visual_attention`` runs text→image, then image→text), which call this node is
            (0-based, per layer). ``None`` means the module runs once.
    """

    module: str
    query: str
    key: str | None = None
    type: NodeType | None = None
    call_index: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, str) or not self.module.strip("."):
            raise ValueError(
                f"AttentionNode module must be a non-empty string, got {self.module!r}"
            )
        if self.key is None:
            object.__setattr__(self, "key", self.query)
        if self.type is not None and self.type not in NODE_TYPES:
            raise ValueError(f"{self.label}: type must be one of {NODE_TYPES}, got {self.type!r}")
        if self.call_index is not None and (
            not isinstance(self.call_index, int) or isinstance(self.call_index, bool)
            or self.call_index < 0
        ):
            raise ValueError(
                f"{self.label}: call_index must be a non-negative int, got {self.call_index!r}"
            )

    @property
    def is_cross(self) -> bool:
        return self.query != self.key

    @property
    def label(self) -> str:
        """How errors and reports name this node."""
        call = "" if self.call_index is None else f"[call {self.call_index}]"
        return f"node '{self.module}{call}' ({self.query}<-{self.key})"

    @property
    def identity(self) -> tuple[str, int | None]:
        return (self.module, self.call_index)

    @property
    def block_key(self) -> str | None:
        """Text before the first ``*``; nodes sharing it are unrolled layer by layer."""
        return self.module.split("*", 1)[0] if "*" in self.module else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"module": self.module, "query": self.query, "key": self.key}
        if self.type is not None:
            out["type"] = self.type
        if self.call_index is not None:
            out["call_index"] = self.call_index
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "") -> AttentionNode:
        r"""A node from its dict; ``path`` (``steps[2]``) says where errors point."""
        _check_keys(data, NODE_KEYS, path, f"AttentionNode spec {dict(data)!r}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"Bad AttentionNode spec {dict(data)!r}: {err}") from None


JUNCTION_KINDS: tuple[str, ...] = ("probe", "splice", "concat")
JUNCTION_PARAMS: dict[str, tuple[str, ...]] = {
    "probe": (),
    "splice": ("placeholder", "skip"),
    "concat": ("skip", "count", "offset"),
}
CONFIG_PARAM_KEYS: tuple[str, ...] = ("config", "values")


@dataclass(frozen=True)
class Junction:
    r"""Tokens that move from stream ``origin`` into stream ``into`` without attention.

    The rows of ``into`` that receive tokens are replaced by a token map of ``origin``'s
    tokens (``R[into, s][rows] = M · R[origin, s]``), resolved at run time. Where in the call
    order it applies is read from the data flow: right after the last call of ``origin`` whose
    state the rows copy (LLaVA reads the vision tower's second-to-last layer).

    Args:
        into: the receiving stream (a language model's sequence, a cross call's keys).
        origin: the stream the tokens come from.
        kind: how ``M`` is resolved:

            - ``"probe"`` (default): from the recorded forward, by gradient probes — exact for
              any map in which each origin token feeds rows without attention (splices,
              concatenation, projection, pixel shuffle, 2×2 merging; a merged row is the mean
              of its tokens);
            - ``"splice"``: origin tokens ``skip, skip+1, ...`` replace, in order, the rows of
              ``into`` whose token id is ``placeholder`` (LLaVA, PaliGemma);
            - ``"concat"``: origin tokens ``skip, ...`` (``count`` of them, default all) fill
              the rows from ``offset`` on (a prefix at 0; negative counts from the end).
        params: the kind's parameters. A value may be ``{"config": "key"}`` (read from the
            model config, sub-configs searched too) and, for strings,
            ``{"config": "key", "values": {"default": 1, "full": 0}}``.

    Examples::

        >>> Junction("text", "image", kind="splice",
        ...          params={"placeholder": {"config": "image_token_id"}, "skip": 1})
    """

    into: str
    origin: str
    kind: str = "probe"
    params: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def __post_init__(self) -> None:
        if self.kind not in JUNCTION_KINDS:
            raise ValueError(
                f"{self.label}: kind must be one of {JUNCTION_KINDS}, got {self.kind!r}"
            )
        if self.into == self.origin:
            raise ValueError(f"{self.label}: a junction joins two different streams")
        object.__setattr__(self, "params", dict(self.params))
        what = f"{self.label} ({self.kind})"
        _check_keys(self.params, JUNCTION_PARAMS[self.kind], "params", what)
        for name, value in self.params.items():
            if isinstance(value, Mapping):
                _check_keys(value, CONFIG_PARAM_KEYS, f"params.{name}", what)
                if "config" not in value:
                    raise ValueError(
                        f"{self.label}: parameter '{name}' given as a dict must name a config key: "
                        f"{{'config': ...}}, got {dict(value)!r}"
                    )

    @property
    def label(self) -> str:
        return f"junction '{self.origin}'->'{self.into}'"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"into": self.into, "from": self.origin, "kind": self.kind}
        out.update(self.params)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "") -> Junction:
        r"""A junction from its dict (parameters beside ``into``/``from``/``kind``); ``path``
        (``junctions[0]``) says where errors point."""
        data = dict(data)
        try:
            into, origin = data.pop("into"), data.pop("from")
        except KeyError as err:
            raise ValueError(f"Junction spec {data!r} lacks {err}") from None
        kind = data.pop("kind", "probe")
        if kind in JUNCTION_KINDS:
            _check_keys(data, ("into", "from", "kind", *JUNCTION_PARAMS[kind]), path,
                        f"Junction spec '{origin}'->'{into}' ({kind})")
        return cls(into, origin, kind, data)


Step = AttentionNode | tuple[AttentionNode, ...]


@dataclass(frozen=True)
class BoundNode:
    r"""A node bound to one concrete module of a model (one layer of a pattern)."""

    name: str
    call_index: int | None
    query: str
    key: str
    type: NodeType
    node: AttentionNode

    @property
    def is_cross(self) -> bool:
        return self.query != self.key

    @property
    def label(self) -> str:
        call = "" if self.call_index is None else f"[call {self.call_index}]"
        return f"module '{self.name}{call}' ({self.query}<-{self.key}, from {self.node.label})"


def _coerce_stream(stream: str | Stream | Mapping[str, Any]) -> Stream:
    if isinstance(stream, Stream):
        return stream
    if isinstance(stream, str):
        return Stream(stream)
    if isinstance(stream, Mapping):
        return Stream(**stream)
    raise TypeError(f"A stream must be a str, Stream or dict, got {type(stream).__name__}")


def _coerce_step(step: Any, position: int) -> Step:
    if isinstance(step, AttentionNode):
        return step
    if isinstance(step, (tuple, list)):
        nodes = tuple(step)
        if not nodes:
            raise ValueError(f"Step {position} is an empty parallel group")
        for node in nodes:
            if not isinstance(node, AttentionNode):
                raise TypeError(
                    f"Step {position}: a parallel group holds AttentionNode objects, "
                    f"got {type(node).__name__}"
                )
        return nodes
    raise TypeError(
        f"Step {position} must be an AttentionNode or a tuple/list of them, "
        f"got {type(step).__name__}"
    )


def _step_nodes(step: Step) -> tuple[AttentionNode, ...]:
    return step if isinstance(step, tuple) else (step,)


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
        nodes = self.nodes
        matches = self.match(module_names)

        typed = iter(nodes)
        resolved_steps = [
            tuple(next(typed) for _ in _step_nodes(step)) for step in self.steps
        ]
        bound: list[tuple[BoundNode, ...]] = []
        position = 0
        for block in self._blocks():
            steps = resolved_steps[position : position + len(block)]
            position += len(block)
            layer_keys = sorted(
                {key for step in steps for node in step for key in matches[node.identity]},
                key=_natural_key,
            )
            for layer in layer_keys:
                for step in steps:
                    group = tuple(
                        BoundNode(
                            name=matches[node.identity][layer],
                            call_index=node.call_index,
                            query=node.query,
                            key=node.key,
                            type=node.type,  # type: ignore[arg-type]
                            node=node,
                        )
                        for node in step
                        if layer in matches[node.identity]
                    )
                    if group:
                        bound.append(group)
        return bound

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


def _natural_key(parts: tuple[str, ...]) -> tuple[tuple[int, Any], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


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
