r"""The state of one recording, created when the recorder is entered and dropped when it exits:
the tracked module calls running now (frames), how often each module was recorded, the entries
behind the records, the enclosing modules running now, and the flags the backends share."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from torch import Tensor, nn

from captum_hetattn.capture.introspect import (
    autograd_node,
    layout_unsure,
    probed_token_dim,
    token_count_at,
    token_dim,
)
from captum_hetattn.capture.memo import StructureMemo
from captum_hetattn.capture.plan import Plan
from captum_hetattn.capture.record import AttentionRecord, Context


@dataclass(eq=False)
class Entry:
    r"""Bookkeeping for one record: its live map and the identity of the module that owns it."""

    record: AttentionRecord
    live: Tensor
    owner_id: int
    has_live_grad: bool
    merged_recompute: bool = False
    flash: bool = False  # the map arrives from the backward (FlashAttention's sink)
    buffer: tuple[Tensor, Tensor] | None = None  # a flash map's chunks, assembled
    shaped: Tensor | None = None  # the record's map as first recorded (for another pass)
    recompute: Callable[[], Tensor] | None = None  # a flash record's, for another pass
    dropped: bool = False  # left out after its module returned (its hook does nothing)


@dataclass
class Frame:
    r"""One running tracked module: what its pre-hook learned about the call."""

    module: nn.Module
    role_hint: str | None
    mha_request: tuple[bool, bool] | None = None
    query_input: Tensor | None = None
    key_input: Tensor | None = None
    nodes: dict[str, Any] = field(default_factory=dict)
    others: list[Tensor] = field(default_factory=list)  # further float tensor arguments
    inner_key: Tensor | None = None  # per-head key states seen by the attention interface
    records: list[AttentionRecord] = field(default_factory=list)
    call_id: int = -1
    contexts: list[Context] = field(default_factory=list)
    linears: list[Tensor] = field(default_factory=list)  # F.linear outputs (record_io)
    made: tuple[int, int] = (0, 0)  # records and skipped softmaxes when the call started
    mask: Tensor | None = None  # the ``attention_mask`` the module was handed


@dataclass(eq=False)
class Session:
    r"""Everything one recording changes while it runs.

    Args:
        plan: what the recording handles.
        stack: undoes everything the recording installed, in reverse order.
        record_io: whether records get their call's tensors.
        checkpointing: a module of the model uses activation checkpointing (flash is off).
        frames: the tracked module calls running now, outermost first.
        contexts: the enclosing (untracked) modules running now, outermost first.
        entries: one per record, in call order.
        call_counts: records so far per module name (the next ``call_index``).
        call_ids: numbers the tracked calls.
        in_interface: > 0 while the interface function runs (its softmax is not a call).
        interface_ran, interface_dispatched: interface modules that ran, and those that went
            through the interface (or were recorded otherwise).
        ran: the tracked modules that ran.
        muted: backward passes leave the records alone.
        tracing: > 0 while flash calls must not hand their maps over.
        callback_queued: an end-of-backward callback is queued.
        memo: the explainer's answers about module structure kept between recordings
            (:mod:`~captum_hetattn.capture.memo`), ``None``: every question asked afresh.
    """

    plan: Plan
    stack: ExitStack
    record_io: bool = False
    checkpointing: bool = False
    frames: list[Frame] = field(default_factory=list)
    contexts: list[Context] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    call_counts: dict[str, int] = field(default_factory=dict)
    call_ids: count = field(default_factory=count)
    in_interface: int = 0
    interface_ran: set[int] = field(default_factory=set)
    interface_dispatched: set[int] = field(default_factory=set)
    repeated: list[str] = field(default_factory=list)  # modules calling one map twice a call
    ran: set[int] = field(default_factory=set)
    muted: bool = False
    tracing: int = 0
    callback_queued: bool = False
    memo: StructureMemo | None = None

    def in_scope(self, module: nn.Module) -> bool:
        r"""Whether a call of ``module`` now is recorded (inside a listed module)."""
        listed = self.plan.listed
        if listed is None:
            return True
        return id(module) in listed or any(id(f.module) in listed for f in self.frames)

    def owner(self, module: nn.Module) -> nn.Module:
        r"""The module a call of ``module`` is recorded under: the innermost listed one."""
        listed = self.plan.listed
        if listed is None or id(module) in listed:
            return module
        for frame in reversed(self.frames):
            if id(frame.module) in listed:
                return frame.module
        return module

    def name_of(self, module: nn.Module) -> str:
        r"""Qualified name of ``module`` (its class name for a module outside the model)."""
        return self.plan.names.get(id(module), type(module).__name__)

    def role(self, module: nn.Module, owner: nn.Module, shape: tuple[int, ...],
             own: Frame | None) -> str:
        r"""``"self"`` or ``"cross"`` for a map of ``shape`` computed by ``module``: from the
        computing module's own call, then its tracked callers up to the owner."""
        seen_frame = False
        frames = self.frames + ([own] if own is not None else [])
        for frame in reversed(frames):
            if frame.module is module or seen_frame:
                seen_frame = True
                if frame.role_hint is not None:
                    return frame.role_hint
                if frame.module is owner:
                    break
        flag = getattr(module, "is_cross_attention", None)
        if isinstance(flag, bool):
            return "cross" if flag else "self"
        if seen_frame:
            return "self"
        return "cross" if shape[-2] != shape[-1] else "self"

    @staticmethod
    def pooled_queries(record: AttentionRecord, output: Tensor | None) -> bool:
        r"""Whether a self map ``(B, heads, n_q, n_k)`` just recorded (``record_io``) has its
        keys over the tokens of its module's input and fewer queries, as many as the module's
        output has tokens: queries subsampled or pooled inside the call (LeViT's attention
        subsample), which shorten the sequence. Rows of the input that a call reads as its
        queries (LED's global tokens, BigBird's blocks) leave the output as long as the input."""
        shape, hidden = record.shape, record.query_input
        if (len(shape) != 4 or record.role != "self" or record.key_input is not None
                or shape[-2] >= shape[-1] or not isinstance(hidden, Tensor)
                or not isinstance(output, Tensor) or output.dim() < 2
                or output.shape[0] != hidden.shape[0]):
            return False
        dim = record.token_dim
        try:
            return (token_count_at(hidden, dim) == shape[-1]
                    and token_count_at(output, dim) == shape[-2])
        except IndexError:
            return False

    def settle_layouts(self, frame: Frame) -> None:
        r"""When a call returns (``record_io``): its records' hidden states whose layout the
        sizes could not tell (as many tokens as examples: batch-first or sequence-first) get
        it from dependence on the call's live maps or query/key states
        (:func:`~captum_hetattn.capture.introspect.probed_token_dim`); nothing runs where the
        sizes tell."""
        for record in frame.records:
            batch = record.shape[0] if len(record.shape) == 4 else None
            sides = (("token_dim", record.query_input, record.shape[-2]),
                     ("key_token_dim", record.key_input, record.shape[-1]))
            for attribute, hidden, n in sides:
                if not layout_unsure(frame.module, hidden, n, batch):
                    continue
                previous, self.muted = self.muted, True  # the probe leaves the records alone
                self.tracing += 1
                try:
                    setattr(record, attribute, probed_token_dim(
                        record.name, hidden, self._live_of(record), batch))
                finally:
                    self.muted, self.tracing = previous, self.tracing - 1

    def _live_of(self, record: AttentionRecord) -> list[Tensor]:
        """A record's live per-head states, else its live map (a flash record has none)."""
        if record.states is not None:
            return list(record.states)
        live = next((e.live for e in reversed(self.entries) if e.record is record), None)
        return [live] if isinstance(live, Tensor) and live.dim() > 0 else []

    def new_record(self, module: nn.Module, owner: nn.Module, shape: tuple[int, ...],
                   attention: Tensor | None, own: Frame | None = None) -> AttentionRecord:
        r"""A record for a map of ``shape`` computed by ``module`` now, numbered under its
        owner's name and given its call's tensors (``record_io``)."""
        name = self.name_of(owner)
        index = self.call_counts.get(name, 0)
        self.call_counts[name] = index + 1
        record = AttentionRecord(name=name, call_index=index,
                                 role=self.role(module, owner, shape, own),
                                 attention=attention, gradient=None, shape=shape)
        if self.record_io:
            frame = own or next(
                (f for f in reversed(self.frames) if f.module is owner or f.module is module),
                None,
            )
            if frame is not None:
                _attach_inputs(record, frame, shape)
        return record


def _attach_inputs(record: AttentionRecord, frame: Frame, shape: tuple[int, ...]) -> None:
    """Give a record (``record_io``) the tensors its module was called with.

    A module whose arguments did not name its key input (``forward(self, x, y)``) but whose
    map has another key count than query count reads its keys from the argument with that
    many tokens: it is cross-attention.
    """
    record.query_input, record.key_input = frame.query_input, frame.key_input
    record.nodes.update(frame.nodes)
    record.call_id, record.contexts = frame.call_id, frame.contexts
    n_query, n_key = shape[-2], shape[-1]
    batch = shape[0] if len(shape) == 4 else None
    record.token_dim = token_dim(frame.module, frame.query_input, n_query, batch)
    record.key_token_dim = token_dim(frame.module, frame.key_input, n_key, batch)
    if record.key_input is None and (record.role == "cross" or n_query != n_key):
        candidates = [*frame.others, *([frame.inner_key] if frame.inner_key is not None
                                        else [])]
        for other in candidates:
            dim = token_dim(frame.module, other, n_key)
            if token_count_at(other, dim) == n_key:
                record.role, record.key_input, record.key_token_dim = "cross", other, dim
                record.nodes["key"] = autograd_node(other)
                break
    frame.records.append(record)
