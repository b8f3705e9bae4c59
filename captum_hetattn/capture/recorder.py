r""":class:`AttentionRecorder`: the context manager that installs a recording (per the
:mod:`~captum_hetattn.capture.plan`, through the backends), keeps its records and maps, fills
their gradients and restores everything on exit."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from captum_hetattn.capture.backends.flash import FlashBackend
from captum_hetattn.capture.backends.interface import InterfaceBackend
from captum_hetattn.capture.backends.mha import MhaBackend
from captum_hetattn.capture.backends.sdpa import SdpaBackend
from captum_hetattn.capture.backends.softmax import SoftmaxBackend
from captum_hetattn.capture.census import census
from captum_hetattn.capture.claims import claim, release
from captum_hetattn.capture.errors import blame_the_model
from captum_hetattn.capture.grad_layout import keep_batch_norm_grads_in_input_layout
from captum_hetattn.capture.memo import StructureMemo, modules_of, walk_kept
from captum_hetattn.capture.plan import BACKENDS, listed_names, plan_capture
from captum_hetattn.capture.record import AttentionRecord
from captum_hetattn.capture.session import Entry, Frame, Session
from captum_hetattn.capture.tracking import CallTracker


class AttentionRecorder:
    r"""Context manager that records attention maps ``A`` and their gradients ``G``.

    Args:
        model: the model (any ``nn.Module``; transformers models and plain torch models).
        backend: ``"auto"`` (default), ``"hf"``, ``"softmax"`` or ``"mha"``; see
            :mod:`captum_hetattn.capture`. ``"auto"`` uses the ``AttentionInterface`` for the
            modules that route through it, MHA capture for ``nn.MultiheadAttention`` and softmax
            interception for the remaining attention modules (the torch function mode is only
            installed when such modules exist, and only active while one of them runs).
        reduce: optional callable on a complete record (``attention`` and ``gradient`` set); as
            soon as a record's gradient is known (zeros included) its value is stored in
            ``record.reduced`` and ``attention``/``gradient`` are dropped to save memory.
        modules: optional qualified module names; only calls inside these modules are recorded,
            each under the name of the innermost listed module running.
        record_io: keep each call's live input and output tensors on its record and the calls of
            every ``nn.Embedding`` in :attr:`embeddings` (inside the context), for
            :mod:`~captum_hetattn.binding.dataflow`.
        flash: modules that use the transformers attention interface run
            ``F.scaled_dot_product_attention`` in the forward and their maps are built inside
            the backward (:mod:`~captum_hetattn.capture.backends.flash`): no map is kept between
            the forward and the backward. The first call of each attention class is checked
            against its eager function (outputs equal), else that class is captured eagerly; so
            are calls with dropout in training, soft-capping, attention sinks or a head mask,
            and everything under activation checkpointing. A flash record has no ``attention``
            until its gradient arrives (``recompute()`` gives it earlier) and its entry in
            :attr:`maps` is a scalar probe.
        reduce_heads: with ``flash``, optional ``reduce_heads(record, A, G, first_head, heads)``
            called with chunks of a flash call's heads (at most ``flash_budget`` map entries
            per chunk) in its backward: it returns the record's reduced value with the last
            chunk (``None`` before), or ``NotImplemented`` for a record it cannot reduce by
            chunks (whose chunks are then assembled and given to ``reduce``). One with a
            true ``rows`` attribute gets a long call's chunks in blocks of query rows, as
            ``reduce_heads(record, A, G, first_head, heads, first_row)``.
        narrow_keys: with such a ``reduce_heads``, optional ``narrow_keys(record)``: whether
            the record's row blocks may come with only the leading keys some row of the block
            sees (the map is zero on the keys after them: a causal mask's later keys), as
            ``A`` and ``G`` of fewer keys than the record's map has.
        flash_budget: map entries (``B · chunk · n_q · n_k``) per chunk with ``reduce_heads``
            (default :data:`~captum_hetattn.capture.FLASH_BUDGET`, read when the recorder is
            made).
        keep_layouts: keep layouts after a reduce, for another gradient pass (:meth:`rearm`);
            also settable as the attribute :attr:`keep_layouts` before the first pass.
        memo: answers about module structure kept between recordings (an explainer's
            :class:`~captum_hetattn.capture.memo.StructureMemo`); ``None``: asked every time.

    Attributes:
        records: :class:`AttentionRecord` per attention call, in call order.
        maps: the live (graph-attached) attention tensors in call order, for
            ``torch.autograd.grad``; valid inside the context (emptied on exit). A map of
            ``nn.MultiheadAttention`` (or of a 3-D softmax) is ``(batch * heads, n_q, n_k)``;
            its record is reshaped to 4-D.
        active_backends: the backends the last ``__enter__`` installed (``"hf"``,
            ``"softmax"``, ``"mha"``).
        embeddings: with ``record_io``, ``(module name, input ids, output, output's autograd
            node)`` of every ``nn.Embedding`` call, in call order (emptied on exit).
        lifts: with ``record_io``, ``(module name, module, input, output, output's autograd
            node)`` of every ``nn.Conv2d`` / ``nn.Linear`` call on a leaf of the graph (a traced
            float model input), in call order (emptied on exit).
        skipped: with ``record_io``, ``(module name, reason)`` of softmaxes inside attention
            modules that were not recorded (pooling or sampling weights, another dimension).

    Examples::

        >>> with AttentionRecorder(model) as rec:
        ...     out = model(**inputs)
        ...     out.logits[:, 3].sum().backward()          # usage A: hooks fill the gradients
        >>> with AttentionRecorder(model) as rec:
        ...     out = model(**inputs)
        ...     rec.compute_gradients(out.logits[:, 3])    # usage B: no parameter gradients
        >>> [(r.name, r.call_index, r.role, r.attention.shape) for r in rec.records]
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        backend: str = "auto",
        reduce: Callable[[AttentionRecord], Tensor] | None = None,
        modules: Iterable[str] | None = None,
        record_io: bool = False,
        flash: bool = False,
        reduce_heads: Callable[[AttentionRecord, Tensor, Tensor, int, int], Any] | None = None,
        flash_budget: int | None = None,
        keep_layouts: bool = False,
        narrow_keys: Callable[[AttentionRecord], bool] | None = None,
        memo: StructureMemo | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"AttentionRecorder needs a torch.nn.Module, got {type(model).__name__}"
            )
        if flash_budget is None:
            from captum_hetattn import capture  # the package's value now: setting it there works

            flash_budget = capture.FLASH_BUDGET
        self.record_io = record_io
        self.flash = flash
        self.reduce_heads = reduce_heads
        self.narrow_keys = narrow_keys
        self.memo = memo
        #: keep layouts after a reduce, for another gradient pass (:meth:`rearm`)
        self.keep_layouts = keep_layouts
        self.flash_budget = int(flash_budget)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if reduce is not None and not callable(reduce):
            raise TypeError(f"reduce must be callable or None, got {type(reduce).__name__}")
        self.model = model
        self.backend = backend
        self.reduce = reduce
        self.modules: frozenset[str] | None = listed_names(model, modules)
        self.records: list[AttentionRecord] = []
        self.maps: list[Tensor] = []
        self.embeddings: list[tuple[str, Tensor, Tensor, Any]] = []
        self.lifts: list[tuple[str, nn.Module, Tensor, Tensor, Any]] = []
        self.skipped: list[tuple[str, str]] = []
        self.active_backends: frozenset[str] = frozenset()
        self._session: Session | None = None  # the running recording

    # ---------------------------------------------------------------- context management

    def __enter__(self) -> AttentionRecorder:
        with walk_kept(self.model):  # one walk of the modules for the whole set-up
            if self._session is not None:
                raise RuntimeError("this AttentionRecorder is already active")
            # Waits while another thread records this model (its hooks and configs are shared),
            # raises when this thread does (nested): before anything is changed.
            held = claim(self.model)
            self.records, self.maps, self.embeddings, self.skipped, self.lifts = [], [], [], [], []
            stack = ExitStack()
            # first in, last out: the next recording starts once everything is restored
            stack.callback(release, held)
            try:
                plan = plan_capture(self.model, self.backend, self.modules)
                checkpointing = self.flash and any(getattr(m, "gradient_checkpointing", False)
                                                   is True for m in modules_of(self.model))
                self._session = Session(plan, stack, self.record_io, checkpointing, memo=self.memo)
                self._install(self._session)
            except BaseException:
                if self._session is None:  # no plan: only the claim to give back
                    stack.close()
                self._close()
                raise
            return self

    def _install(self, session: Session) -> None:
        """Install the backends the plan uses and the hooks that follow the model's calls."""
        plan, stack = session.plan, session.stack
        self.active_backends = plan.backends
        flash = FlashBackend(self, session) if self.flash and plan.interface else None
        interface = InterfaceBackend(self, session, flash) if plan.interface else None
        softmax = SoftmaxBackend(self, session) if "softmax" in plan.backends else None
        if softmax is not None:  # hand-called sdpa, while a softmax module runs
            softmax.mode.on_sdpa = SdpaBackend(self, session)
        mha = MhaBackend(self, session) if plan.mha else None
        CallTracker(session, self.embeddings, softmax, mha, self.lifts).install(stack,
                                                                                self.model)
        for backend in (flash, interface, softmax, mha):
            if backend is not None:
                backend.install(stack)
        keep_batch_norm_grads_in_input_layout(stack, self.model)  # a torch bug at batch 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            # A model error stays the model's: it propagates (re-raised from exc.__traceback__)
            # with the model's frame innermost, not the softmax interception.
            blame_the_model(exc)
        session = self._session
        try:
            if session is not None:
                self._finalize_missing()
        finally:
            self._close()
        bypassed = set() if session is None else (
            session.interface_ran - session.interface_dispatched)
        if exc_type is None and bypassed:
            names = sorted(session.plan.names.get(i, "?") for i in bypassed)  # type: ignore
            warnings.warn(
                f"{len(names)} attention module(s) of {type(self.model).__name__} ran without "
                f"calling the AttentionInterface, so they were not recorded (first: {names[0]}); "
                "record them with backend='softmax'",
                RuntimeWarning,
                stacklevel=2,
            )
        if exc_type is None and session is not None and session.repeated:
            _warn_repeated(session.repeated, type(self.model).__name__)
        if exc_type is None and not self.records:
            warnings.warn(
                f"no attention maps were recorded for {type(self.model).__name__}: "
                f"backend={self.backend!r} found no attention call during the recording (was "
                "the model run inside the context? does it compute attention in a module whose "
                "class name has no 'Attention' or 'Attn' (such modules are not tracked), or do "
                "`modules` name modules that never ran?)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _close(self) -> None:
        session, self._session = self._session, None
        entries = [] if session is None else session.entries
        try:
            if session is not None:
                session.frames = []
                session.stack.close()
        finally:
            # The live maps hold the autograd graph: don't keep it alive past the context.
            self.maps = []
            self.embeddings = []
            self.lifts = []
            for entry in entries:
                entry.live = None  # type: ignore[assignment]
            # the live tensors hold the autograd graph: a call's parts and layout inputs too
            kept = list(self.records) + [e.record for e in entries]
            for record in kept:
                record.query_input = record.key_input = record.output = None
                record.nodes = {}
                record.states = record.scores = record.recompute = None
                record.linears, record.contexts = [], []
            if session is not None:
                session.entries, session.contexts = [], []

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        r"""Inside, backward passes leave the records alone (probes of the data flow)."""
        session = self._require("muted")
        previous, session.muted = session.muted, True
        try:
            yield
        finally:
            session.muted = previous

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        r"""Backward passes inside this block (data-flow tracing, which differentiates through
        the attention calls) do not hand flash maps over: only the gradient pass does."""
        session = self._require("tracing")
        session.tracing += 1
        try:
            yield
        finally:
            session.tracing -= 1

    def _require(self, what: str) -> Session:
        if self._session is None:
            raise RuntimeError(f"{what} must be called inside the recorder's context")
        return self._session

    # ---------------------------------------------------------------- records and maps

    def _keep(self, entry: Entry) -> None:
        """Keep a new record: its entry, the record and its live map, in call order."""
        self._session.entries.append(entry)  # type: ignore[union-attr]
        self.records.append(entry.record)
        self.maps.append(entry.live)

    def _add_map(
        self, module: nn.Module, live: Tensor, shaped: Tensor, own: Frame | None = None
    ) -> AttentionRecord | None:
        """Record a map computed by ``module`` (``None``: merged into an earlier record, a
        recomputation under activation checkpointing)."""
        session = self._session
        assert session is not None
        owner = session.owner(module)
        if torch._C._current_graph_task_id() != -1 and self._merge_recompute(owner, live, shaped):
            return None
        record = session.new_record(module, owner, tuple(shaped.shape), shaped, own)
        entry = Entry(record, live, id(owner), live.requires_grad, shaped=shaped)
        if live.requires_grad:
            self._hook(entry, live)
        self._keep(entry)
        return record

    def arm_late(self, start: int) -> None:
        r"""Hook the maps recorded since entry ``start`` whose tensor joined the autograd graph
        only after the softmax ran: a softmax inside a custom ``torch.autograd.Function``
        (SEW-D's ``XSoftmax``) runs with autograd off, and the tensor it returns becomes the
        Function's output when ``apply`` returns (the same object). Called when the module that
        computed them returns. Their scores, made with autograd off, say nothing of the tokens
        and are dropped."""
        session = self._require("arm_late")
        for entry in session.entries[start:]:
            live = entry.live
            if entry.has_live_grad or entry.flash or live is None or not live.requires_grad:
                continue
            entry.has_live_grad = True
            self._hook(entry, live)
            scores = entry.record.scores
            if isinstance(scores, Tensor) and not scores.requires_grad:
                entry.record.scores = None

    def _merge_recompute(self, owner: nn.Module, live: Tensor, shaped: Tensor) -> bool:
        r"""Merge an attention call made during a backward (activation checkpointing) into the
        earlier record of the same module (the one with an identical map, else the first not
        yet merged)."""
        candidates = [
            e for e in self._session.entries  # type: ignore[union-attr]
            if e.owner_id == id(owner) and not e.merged_recompute
        ]
        if not candidates:
            return False
        same = [
            e
            for e in candidates
            if e.record.attention is not None
            and e.record.attention.shape == shaped.shape
            and torch.equal(e.record.attention, shaped)
        ]
        entry = (same or candidates)[0]
        entry.merged_recompute = True
        if not entry.has_live_grad and live.requires_grad:
            # Reentrant checkpointing: the first forward ran without grad, this map is the one
            # the gradient flows through.
            entry.has_live_grad = True
            self._hook(entry, live)
        return True

    def use_layouts(
        self, calls: Sequence[AttentionRecord], drop: Sequence[AttentionRecord] = ()
    ) -> None:
        r"""Replace raw records by the calls they are parts of (each call's ``parts`` and
        ``layout`` set) and leave out ``drop`` (softmaxes that are not over tokens), keeping
        call order and renumbering ``call_index``; called by
        :func:`~captum_hetattn.binding.layouts.canonicalise` before any gradient pass.

        Args:
            calls: the call records, each with its ``parts`` and ``layout``.
            drop: raw records to leave out.
        """
        by_part = {id(p): call for call in calls for p in call.parts}
        dropped = {id(r) for r in drop}
        records: list[AttentionRecord] = []
        for record in self.records:
            if id(record) in dropped:
                record.call_index = -1  # out of the recording: no key of a kept call
                continue
            call = by_part.get(id(record))
            if call is None:
                records.append(record)
                continue
            record.part_of = call
            if call.parts[0] is record:
                records.append(call)
        counts: dict[str, int] = {}
        for record in records:
            record.call_index = counts.get(record.name, 0)
            counts[record.name] = record.call_index + 1
        self.records = records

    # ---------------------------------------------------------------- gradients

    def _hook(self, entry: Entry, live: Tensor) -> None:
        handle = live.register_hook(functools.partial(self._on_gradient, entry))
        self._session.stack.callback(handle.remove)  # type: ignore[union-attr]

    def _on_gradient(self, entry: Entry, grad: Tensor) -> None:
        session = self._session
        if session is None or session.muted or entry.dropped:
            return
        self._set_gradient(entry, grad)
        if not session.callback_queued:
            # Zero-fill the maps that got no gradient once this backward is over.
            session.callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        if self._session is not None:
            self._session.callback_queued = False
            self._finalize_missing()

    def _set_gradient(self, entry: Entry, grad: Tensor) -> None:
        record = entry.record
        if record.attention is None:
            return  # already reduced: one gradient pass per recording
        record.gradient = grad.detach().reshape(record.shape)
        if record.part_of is not None:
            self._complete(record.part_of)
        elif self.reduce is not None:
            self._apply_reduce(record)

    def _complete(self, call: AttentionRecord) -> None:
        """Fold the parts of a call with a layout once all have their gradients."""
        if any(p.gradient is None or p.attention is None for p in call.parts):
            return
        # with a reduce, the call's own map only says where attention goes (key mass,
        # causality: zero or not, so the sum over heads of probabilities says it); the reduce
        # folds the parts itself, and one that ``reads_parts`` reads those from them too
        if not getattr(self.reduce, "reads_parts", False):
            call.attention = call.layout.fold([p.attention for p in call.parts],
                                              sum_heads=self.reduce is not None)
        if self.reduce is None:  # a reduce reads the parts; only a plain recording keeps G
            call.gradient = call.layout.fold([p.gradient for p in call.parts])
        if self.reduce is not None:  # one gradient pass: the parts and indices are spent
            self._apply_reduce(call)
            if not self.keep_layouts:
                call.layout.release()
            for part in call.parts:
                part.attention = part.gradient = part.recompute = None

    def rearm(self) -> None:
        r"""Ready every record for another gradient pass over the same forward (the previous
        pass ran with ``retain_graph=True``; with ``reduce`` and layouts, set
        :attr:`keep_layouts` before the first pass): maps as recorded, no gradient, nothing
        reduced."""
        session = self._require("rearm")
        for entry in session.entries:
            record = entry.record
            record.gradient = record.reduced = None
            entry.buffer = None
            if entry.flash:
                record.attention, record.recompute = None, entry.recompute
            else:
                record.attention = entry.shaped
        for record in self.records:
            if record.layout is not None:
                record.attention = record.gradient = record.reduced = None

    def _apply_reduce(self, record: AttentionRecord) -> None:
        assert self.reduce is not None
        record.reduced = self.reduce(record)
        record.attention = record.gradient = record.recompute = None

    def census(self) -> tuple[list[tuple[str, str]], list[str]]:
        r"""Why the model's attention modules left no record (inside the context, after the
        forward): see :func:`~captum_hetattn.capture.census.census`."""
        session = self._session
        assert session is not None, "census() is read inside the recording"
        return census(session, self.records, self.skipped)

    def _finalize_missing(self) -> None:
        for entry in self._session.entries:  # type: ignore[union-attr]
            record = entry.record
            if entry.flash and record.attention is None and record.reduced is None and (
                    record.recompute is not None):
                record.attention = record.recompute()  # off the objective's path
                record.recompute = None
            if record.gradient is None and record.attention is not None:
                record.gradient = torch.zeros_like(record.attention)
                if record.part_of is not None:
                    self._complete(record.part_of)
                elif self.reduce is not None:
                    self._apply_reduce(record)

    def compute_gradients(
        self,
        objective: Tensor,
        retain_graph: bool = False,
        also: Sequence[Tensor | None] = (),
        maps: bool = True,
    ) -> list[Tensor | None]:
        r"""Fill ``record.gradient`` with ``d objective / d A`` for every recorded map.

        Runs ``torch.autograd.grad`` to the maps only: no parameter gradient is computed and no
        ``.grad`` is touched. Maps off the objective's path get zeros.

        Args:
            objective: a tensor computed from the model output inside this context; summed when
                it has more than one element (one scalar per example sums to the batch
                objective, examples being independent).
            retain_graph: keep the graph for another gradient computation.
            also: further tensors of the forward whose gradients to return, computed in the
                same backward pass (``None`` entries and tensors off the path give ``None``).
            maps: ``False`` computes only the gradients of ``also`` (the maps get zeros), a
                backward that stops at those tensors.

        Returns:
            The gradients of ``also``; the maps' gradients (or reduced values) are in
            :attr:`records`.

        Examples::

            >>> with AttentionRecorder(model) as rec:
            ...     logits = model(**inputs).logits
            ...     rec.compute_gradients(logits[:, 1] - logits[:, 0])
        """
        session = self._require("compute_gradients")
        if not isinstance(objective, Tensor):
            raise TypeError(f"objective must be a tensor, got {type(objective).__name__}")
        if objective.numel() != 1:
            objective = objective.sum()
        if not objective.requires_grad:
            raise ValueError(
                "the objective does not require grad: run the forward inside the recorder with "
                "grad enabled (not under torch.no_grad) and compute the objective from its output"
            )
        entries = session.entries
        pending = [e for e in entries if e.has_live_grad and (
            e.record.attention is not None or (e.flash and e.record.recompute is not None))]
        if not maps:
            pending = []
        if entries and maps and not pending and all(e.record.attention is None for e in entries):
            raise RuntimeError(
                "every record was already reduced: with `reduce`, a recording takes one "
                "gradient pass"
            )
        if maps and entries and not any(e.has_live_grad for e in entries):
            raise ValueError(
                "none of the recorded attention maps requires grad (was the forward run under "
                "torch.no_grad or reentrant activation checkpointing - use .backward() there - "
                "or are all parameters frozen and the inputs not requiring grad?)"
            )
        extra = [t for t in also if isinstance(t, Tensor) and t.requires_grad]
        extra_grads: list[Tensor | None] = []
        if pending or extra:
            session.muted = True
            try:
                grads = torch.autograd.grad(
                    objective,
                    [e.live for e in pending] + extra,
                    allow_unused=True,
                    retain_graph=retain_graph,
                )
            finally:
                session.muted = False
            extra_grads = list(grads[len(pending):])
            for entry, grad in zip(pending, grads[: len(pending)], strict=True):
                if entry.flash:
                    continue  # its backward handed the map and its gradient over already
                # None: off this objective's path (also overwrites an earlier pass's value)
                self._set_gradient(entry, torch.zeros_like(entry.live) if grad is None else grad)
        self._finalize_missing()
        by_id = {id(t): g for t, g in zip(extra, extra_grads, strict=True)}
        return [by_id.get(id(t)) if isinstance(t, Tensor) else None for t in also]


def _warn_repeated(repeated: list[str], model: str) -> None:
    """Modules that handed one map's queries and keys to the attention function twice."""
    warnings.warn(
        f"{len(repeated)} attention module(s) of {model} hand the same queries and keys to the "
        f"attention function twice in one call (first: '{repeated[0]}'; differential "
        "attention, whose output is A·V₁ − λ·A·V₂): each is explained as two calls of that "
        "map, one after the other; the difference of maps is not an attention map the paper's "
        "rule covers", RuntimeWarning, stacklevel=3)


#: why a map whose queries are pooled from its keys' tokens is left out
_POOLED = ("its map of shape {} has fewer queries than the tokens of its input, which are its "
           "keys: queries subsampled or pooled inside the call (LeViT's attention subsample) "
           "are no tokens of any hidden states, which the engine does not lay out yet")


def _skip_once(skipped: list[tuple[str, str]], name: str, reason: str) -> None:
    """Report a module's left-out softmax once per recording."""
    if all(n != name for n, _ in skipped):
        skipped.append((name, reason))


def drop_pooled(recorder: AttentionRecorder, frame: Frame, output: Tensor | None) -> None:
    r"""Leave out the maps a module call just made whose queries are pooled from its input's
    tokens (``record_io``; :meth:`Session.pooled_queries`), naming the module."""
    session = recorder._require("drop_pooled")
    for record in [r for r in frame.records if session.pooled_queries(r, output)]:
        index = next(i for i, e in enumerate(session.entries) if e.record is record)
        session.entries.pop(index).dropped = True
        at = next(i for i, r in enumerate(recorder.records) if r is record)
        del recorder.records[at], recorder.maps[at]
        session.call_counts[record.name] -= 1
        _skip_once(recorder.skipped, record.name, _POOLED.format(tuple(record.shape)))
