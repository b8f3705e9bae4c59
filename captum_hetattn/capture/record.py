r"""What one attention call leaves behind: :class:`AttentionRecord` and :class:`Context`.

A record is read and written by several rooms; its fields are grouped (in the docstring and in
the field order) by the room that owns them:

- **capture** (:mod:`captum_hetattn.capture`): which module, which call, the map, its gradient,
  its reduced value;
- **io for data flow** (``record_io``, read by :mod:`~captum_hetattn.binding.dataflow`): the live
  tensors the call was made with and their autograd nodes, the enclosing modules, and for a
  softmax caught in a hand-written module its scores and projections;
- **layouts** (:mod:`~captum_hetattn.binding.layouts`): how a call whose maps are not one dense
  ``(batch, heads, n_query, n_key)`` map folds into one;
- **values** (:mod:`~captum_hetattn.values`) read the io fields (inputs, output, ``linears``)
  and the layout, and write nothing.

Field names are an interface between those rooms: they never change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["AttentionRecord", "Context"]


@dataclass(eq=False)
class AttentionRecord:
    r"""One attention call recorded by :class:`~captum_hetattn.capture.AttentionRecorder`.

    Written by capture:

    Args:
        name: qualified module name, as in ``model.named_modules()``.
        call_index: 0 for the first call of that module in this recording, 1 for the second...
        role: ``"self"`` or ``"cross"`` (see :mod:`captum_hetattn.capture` for the rule).
        attention: post-softmax probabilities ``(batch, heads, n_query, n_key)``, detached
            (it shares storage with the live map: don't modify it in place); ``None`` once
            ``reduce`` has consumed it.
        gradient: ``d objective / d attention``, same shape; zeros when the map got no gradient;
            ``None`` before the backward and once ``reduce`` has consumed it.
        reduced: the value of the recorder's ``reduce`` callable on this record, if given.
        shape: shape of the map, kept when ``attention`` is dropped.
        heads: the head count the computing module declares (softmax capture with
            ``record_io``), for a map whose heads are not its second dimension.
        recompute: on a flash record (``flash=True``) before its gradient arrived, a function
            that computes its map (no grad) from the saved queries and keys.
        call_id: which module call made this map (maps of one call share it: a packed vision
            tower's per-image maps, a local attention's band and global maps).

    Written by capture with ``record_io``, for data flow (read by dataflow, layouts, values;
    set inside the recorder's context only, dropped on exit):

    Args:
        query_input, key_input, output: the live (graph-attached) tensors the attention module
            was called with (its hidden states; ``key_input`` is ``None`` for self-attention)
            and its output.
        token_dim: the token dimension of those tensors (1; 0 for a sequence-first
            ``nn.MultiheadAttention`` and for unbatched 2-D hidden states; 2 for per-head
            ``(B, H, n, d)`` inputs); ``key_token_dim`` the same for ``key_input``.
        nodes: the autograd nodes of those tensors (``"query"``, ``"key"``, ``"output"``) as
            they were when the call ran (a later in-place write, such as image features written
            into an embedding tensor, moves a tensor's ``grad_fn``).
        contexts: the enclosing modules running when the call was made, innermost first (their
            input and output: the token order a windowed call permutes).
        states: the per-head query and key states ``(B', H, n, d)`` the attention function was
            handed (interface calls), for layouts.
        scores, linears, raw: for a softmax caught in a hand-written module: the softmax input,
            the ``F.linear`` outputs its module computed before it (the projections its slots
            are read from), and whether the map is not laid out as
            ``(batch, heads, n_query, n_key)`` (banded, blocked).

    Written by layouts (:func:`~captum_hetattn.binding.layouts.canonicalise`):

    Args:
        layout: on a call whose maps are not one dense ``(batch, heads, n_query, n_key)`` map
            over its hidden states (windows, bands, blocks, packed sequences): the
            :class:`~captum_hetattn.binding.canonical.TokenLayout` that folds ``parts`` (the raw
            maps, each a record of its own) into this record's dense map, which then holds
            ``attention`` / ``gradient`` folded once every part has its gradient.
        parts: the raw records of a call with a ``layout``.
        part_of: on a raw record, the call record it is a part of.
        masked_keys: ``(B, n_k)`` keys the call's mask hides from every query (attention-masked
            padding), where the capture saw a mask or masked scores.
    """

    # capture
    name: str
    call_index: int
    role: str
    attention: Tensor | None
    gradient: Tensor | None
    reduced: Tensor | None = None
    shape: tuple[int, ...] = field(default=(), repr=True)
    heads: int | None = None
    recompute: Callable[[], Tensor] | None = field(default=None, repr=False)
    call_id: int = -1
    masked_keys: Tensor | None = field(default=None, repr=False)
    # io for data flow (record_io)
    query_input: Tensor | None = field(default=None, repr=False)
    key_input: Tensor | None = field(default=None, repr=False)
    output: Tensor | None = field(default=None, repr=False)
    token_dim: int = 1
    key_token_dim: int = 1
    nodes: dict[str, Any] = field(default_factory=dict, repr=False)
    contexts: list[Context] = field(default_factory=list, repr=False)
    states: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    scores: Tensor | None = field(default=None, repr=False)
    linears: list[Tensor] = field(default_factory=list, repr=False)
    raw: bool = False
    # layouts
    layout: Any = field(default=None, repr=False)
    parts: list[AttentionRecord] = field(default_factory=list, repr=False)
    part_of: AttentionRecord | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.shape and self.attention is not None:
            self.shape = tuple(self.attention.shape)

    @property
    def batch_size(self) -> int:
        r"""Batch size of the map."""
        return self.shape[0]

    @property
    def num_heads(self) -> int:
        r"""Number of heads of the map."""
        return self.shape[1]

    @property
    def n_query(self) -> int:
        r"""Number of query tokens."""
        return self.shape[-2]

    @property
    def n_key(self) -> int:
        r"""Number of key tokens."""
        return self.shape[-1]


@dataclass(eq=False)
class Context:
    r"""A module enclosing attention calls, as it ran (``record_io``): its first tensor
    argument and its output, with their autograd nodes at call time."""

    name: str
    input: Tensor | None
    input_node: Any = None
    output: Tensor | None = None
    output_node: Any = None
