r"""The nodes of a layer graph: streams, attention nodes and nodes bound to one module.

A *stream* is one information source (``text``, ``image``, ``queries`` ...). An
:class:`AttentionNode` names an attention module (a pattern over qualified module names where
``*`` stands for one path segment, usually the layer index), the stream its queries come from and
the stream its keys/values come from, and its type:

- ``"A"``: homogenous self-attention (query stream == key stream, stream not yet fused);
- ``"B"``: co-/cross-attention (query stream != key stream);
- ``"C"``: self-attention over a stream that has already received another source via a B node.

Plain Python, like the whole core of the graph room: it knows nothing about torch or
transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from captum_hetattn.graph.spec import NODE_KEYS, _check_keys

NodeType = Literal["A", "B", "C"]
NODE_TYPES: tuple[str, ...] = ("A", "B", "C")


def is_cross(query: str, key: str) -> bool:
    """Whether attention from stream ``query`` over stream ``key`` is cross-attention (type B
    in a graph): the keys come from another stream than the queries."""
    return query != key


class QueryKey:
    r"""What every node and call says about its two streams: ``query`` reads ``key``.

    A mixin of :class:`AttentionNode`, :class:`BoundNode` (and any class with ``query`` and
    ``key`` stream names), so that cross-attention is decided in one place, :func:`is_cross`.
    """

    __slots__ = ()

    @property
    def is_cross(self) -> bool:
        return is_cross(self.query, self.key)  # type: ignore[attr-defined]


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
class AttentionNode(QueryKey):
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


Step = AttentionNode | tuple[AttentionNode, ...]


@dataclass(frozen=True)
class BoundNode(QueryKey):
    r"""A node bound to one concrete module of a model (one layer of a pattern)."""

    name: str
    call_index: int | None
    query: str
    key: str
    type: NodeType
    node: AttentionNode

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

