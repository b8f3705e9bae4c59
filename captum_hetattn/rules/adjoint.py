r"""The relevance state and its propagation (torch only): every block by the full propagation
(:func:`propagate`), or just the readout rows by running the linear rules backwards (the
adjoint: :func:`propagate_row`, :class:`RowAdjoint`), at ``O(Σ n_q·n_k)`` per step instead of
``O(n³)``.

A step is one :class:`~captum_hetattn.rules.ops.AttentionFlow`, a parallel group of them (which
all read the state from before the group) or a :class:`~captum_hetattn.rules.ops.TokenMap`
junction. The rules are those of :mod:`~captum_hetattn.rules.ops`; what a method changes comes
from its propagator (:mod:`~captum_hetattn.rules.propagators`), never from a mode switch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from captum_hetattn.rules.folded import FoldedMap
from captum_hetattn.rules.ops import (
    Block,
    FlowStep,
    Relevance,
    TokenMap,
    accumulate,
    as_group,
    copy_map,
    flow_increment,
    one_token_read,
    readout_weights,
    relevance_dtype,
    row_increment,
)
from captum_hetattn.rules.propagators import Ours, Propagator

OnStep = Callable[[int, FlowStep | None, Relevance], None]


def check_flows(sizes: Mapping[str, int], steps: Sequence[FlowStep]) -> tuple[int, Tensor]:
    """Validate streams and shapes; return the batch size and a reference tensor."""
    reference: Tensor | None = None
    for step in steps:
        if isinstance(step, TokenMap):
            for role, stream in (("into", step.into), ("origin", step.origin)):
                if stream not in sizes:
                    raise ValueError(
                        f"{step.name}: unknown {role} stream '{stream}' (streams: {list(sizes)})"
                    )
            expected = (sizes[step.into], sizes[step.origin])
            if step.weights.dim() != 3 or tuple(step.weights.shape[1:]) != expected:
                raise ValueError(
                    f"{step.name} has map shape {tuple(step.weights.shape)}, expected "
                    f"(batch, {expected[0]}, {expected[1]})"
                )
            if reference is None:
                reference = step.weights
            continue
        for flow in as_group(step):
            for role, stream in (("query", flow.query), ("key", flow.key)):
                if stream not in sizes:
                    raise ValueError(
                        f"Attention call '{flow.name}': unknown {role} stream '{stream}' "
                        f"(streams: {list(sizes)})"
                    )
            expected = (sizes[flow.query], sizes[flow.key])
            shape = tuple(flow.attention.shape)
            if flow.attention.dim() != 3 or shape[1:] != expected:
                raise ValueError(
                    f"Attention call '{flow.name}' has map shape {shape}, expected "
                    f"(batch, {expected[0]}, {expected[1]}) for streams "
                    f"'{flow.query}' ({expected[0]} tokens) <- '{flow.key}' ({expected[1]} tokens)"
                )
            if flow.residual is not None and tuple(flow.residual.shape) != (shape[0], shape[1]):
                raise ValueError(
                    f"Attention call '{flow.name}' has residual weights of shape "
                    f"{tuple(flow.residual.shape)}, expected ({shape[0]}, {shape[1]})"
                )
            if reference is not None and shape[0] != reference.shape[0]:
                raise ValueError(
                    f"Attention call '{flow.name}' has batch size {shape[0]}, others have "
                    f"{reference.shape[0]}"
                )
            if reference is None:
                reference = flow.attention
    if reference is None:
        raise ValueError("Nothing to propagate: no attention calls were given")
    return reference.shape[0], reference


def initial_relevance(
    sizes: Mapping[str, int], batch_size: int, *, dtype: torch.dtype, device: torch.device
) -> Relevance:
    """``R[x, x] = I`` per stream; off-diagonal blocks are implicit zeros (absent keys)."""
    return {
        (stream, stream): torch.eye(n, dtype=dtype, device=device).expand(batch_size, n, n)
        for stream, n in sizes.items()
    }


def _residuals(step: FlowStep, dtype: torch.dtype) -> dict[str, Tensor]:
    """Per query stream, the weight of its own relevance in this step (the mean over its calls
    that give one; the others count as 1)."""
    weights: dict[str, list[Tensor | None]] = {}
    for flow in as_group(step):
        weights.setdefault(flow.query, []).append(flow.residual)
    out: dict[str, Tensor] = {}
    for q, given in weights.items():
        if all(w is None for w in given):
            continue
        reference = next(w for w in given if w is not None).to(dtype)
        out[q] = sum((torch.ones_like(reference) if w is None else w.to(dtype)) for w in given
                     ) / len(given)
    return out


class _State:
    """The relevance blocks during a full propagation; absent blocks are zeros."""

    def __init__(self, sizes: Mapping[str, int], batch_size: int, reference: Tensor) -> None:
        self.sizes, self.batch_size, self.reference = sizes, batch_size, reference
        self.dtype = relevance_dtype(reference.dtype)
        self.blocks = initial_relevance(sizes, batch_size, dtype=self.dtype,
                                        device=reference.device)

    def read(self, x: str, s: str) -> Tensor:
        block = self.blocks.get((x, s))
        if block is None:
            return self.reference.new_zeros(self.batch_size, self.sizes[x], self.sizes[s],
                                            dtype=self.dtype)
        return block

    def junction(self, step: TokenMap) -> None:
        """``R[into, s][rows] = M · R[origin, s]`` (or ``+=`` for an additive junction)."""
        state = self.blocks
        rows = step.rows[:, :, None]
        weights = step.weights.to(self.dtype)
        for s in self.sizes:
            if (step.origin, s) in state:
                moved = weights @ state[(step.origin, s)]
            elif (step.into, s) in state:
                moved = torch.zeros_like(state[(step.into, s)])
            else:
                continue
            kept = self.read(step.into, s)
            state[(step.into, s)] = torch.where(rows, kept + moved if step.additive else moved,
                                                kept)

    def attention(self, step: FlowStep, method: Propagator, padding: Mapping[str, Tensor]
                  ) -> None:
        """One step of calls: every increment from the state before the step, the query
        streams' residual weights, the sums, then the method's normalisation."""
        state = self.blocks
        updates: dict[Block, Tensor] = {}
        for flow in as_group(step):
            attention = flow.attention.to(self.dtype)
            q, k = flow.query, flow.key
            for s in self.sizes:
                if (k, s) not in state:
                    continue  # zero block: nothing flows
                if flow.is_cross and s == k:  # the key stream's own block: the methods differ
                    increment = method.key_increment(
                        lambda q=q: self.read(q, q), attention, state[(k, k)], padding.get(q),
                        padding.get(k),
                    )
                else:
                    increment = flow_increment(attention, state[(k, s)])
                accumulate(updates, (q, s), increment)
        for q, keep in _residuals(step, self.dtype).items():
            self._scale(q, lambda block, keep=keep: keep[:, :, None] * block)
        for block, delta in updates.items():
            state[block] = self.read(*block) + delta
        for q, scale in method.step_scales(step).items():
            self._scale(q, lambda block, scale=scale: block / scale)

    def _scale(self, query: str, scaled: Callable[[Tensor], Tensor]) -> None:
        for block in [b for b in self.blocks if b[0] == query]:
            self.blocks[block] = scaled(self.blocks[block])


def propagate(
    sizes: Mapping[str, int],
    steps: Sequence[FlowStep],
    method: Propagator | None = None,
    padding: Mapping[str, Tensor] | None = None,
    on_step: OnStep | None = None,
) -> Relevance:
    r"""Full (all-rows) propagation of the relevance state over the steps.

    Args:
        sizes: tokens per stream, e.g. ``{"text": 20, "image": 36}``.
        steps: in execution order; each an :class:`AttentionFlow`, a parallel group (a
            sequence of flows that all read the state from before the group) or a
            :class:`TokenMap`.
        method: the propagator (:class:`Ours`, the default, :class:`Gae`, :class:`Rollout`;
            see :mod:`~captum_hetattn.rules.propagators`).
        padding: per stream, ``(B, n)`` padding tokens (GAE's zero-row check ignores them; see
            :func:`gae_cross_increment`).
        on_step: called as ``on_step(-1, None, state)`` before the first step and
            ``on_step(i, step, state)`` after step ``i``, with the (sparse: absent blocks are
            zero) state, to watch the relevance as it flows; it must not modify the state.

    Returns:
        Dict ``(x, s) -> (B, n_x, n_s)`` with every block, zeros included.

    Examples::

        >>> flows = [AttentionFlow("text", "text", torch.rand(1, 3, 3))]
        >>> relevance = propagate({"text": 3}, flows)
        >>> relevance[("text", "text")].shape
        torch.Size([1, 3, 3])
    """
    method = _checked(method)
    padding = padding or {}
    batch_size, reference = check_flows(sizes, steps)
    state = _State(sizes, batch_size, reference)
    if on_step is not None:
        on_step(-1, None, state.blocks)
    for index, step in enumerate(steps):
        if isinstance(step, TokenMap):
            state.junction(step)
        else:
            state.attention(step, method, padding)
        if on_step is not None:
            on_step(index, step, state.blocks)
    return {(x, s): state.read(x, s).contiguous() for x in sizes for s in sizes}


def _checked(method: Propagator | None) -> Propagator:
    if method is None:
        return Ours()
    if not isinstance(method, Propagator):
        raise ValueError(
            "the propagation rule must be a Propagator (Ours(), Gae(), Rollout(), Raw()), got "
            f"{method!r}"
        )
    return method


def propagate_row(
    sizes: Mapping[str, int],
    steps: Sequence[FlowStep],
    readout_stream: str | Mapping[str, Tensor],
    readout_token: int | Tensor | None = None,
    *,
    method: Propagator | None = None,
) -> dict[str, Tensor]:
    r"""The readout rows of every block, by running the (linear) rules backwards.

    Computes ``Σ_x w_x · R[x, s]`` for every stream ``s`` exactly as :func:`propagate` with the
    same (linear) ``method`` followed by :func:`read_rows` would, but propagates row vectors
    ``u ← u + u_q · Ā`` (and the junctions' adjoints) from the last step to the first instead of
    whole matrices.

    Args:
        sizes: tokens per stream.
        steps: as for :func:`propagate`.
        readout_stream: the stream whose row is read, or readout weights
            ``{stream: (B, n_stream)}`` over the final tokens of several streams.
        readout_token: with a stream name: token index, or a ``(B,)`` tensor of per-example
            indices.
        method: a linear propagator (:class:`Ours` without noise link, the default, or
            :class:`Rollout`).

    Returns:
        Dict ``s -> (B, n_s)``.
    """
    adjoint, reference = _run_adjoint(sizes, steps, readout_stream, readout_token, method)
    return adjoint.result(reference)


def propagate_row_own(
    sizes: Mapping[str, int],
    steps: Sequence[FlowStep],
    readout: Mapping[str, Tensor],
    *,
    method: Propagator | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    r"""The readout rows of :func:`propagate_row` and, from the same backward sweep, the read
    tokens' own share within them (:meth:`RowAdjoint.own`).

    Args:
        sizes: tokens per stream.
        steps: as for :func:`propagate`.
        readout: readout weights ``{stream: (B, n_stream)}``.
        method: a linear propagator.

    Returns:
        ``(rows, own)``, each ``{stream: (B, n_stream)}``.
    """
    adjoint, reference = _run_adjoint(sizes, steps, readout, None, method)
    return adjoint.result(reference), adjoint.own(reference)


def _run_adjoint(
    sizes: Mapping[str, int], steps: Sequence[FlowStep],
    readout_stream: str | Mapping[str, Tensor], readout_token: int | Tensor | None,
    method: Propagator | None,
) -> tuple[RowAdjoint, Tensor]:
    """The adjoint run over every step, last first, and the reference tensor."""
    batch_size, reference = check_flows(sizes, steps)
    dtype = relevance_dtype(reference.dtype)
    if isinstance(readout_stream, str):
        if readout_token is None:
            raise ValueError("propagate_row needs a readout token with a readout stream")
        weights = readout_weights(
            sizes, readout_stream, readout_token, batch_size, dtype=dtype,
            device=reference.device,
        )
    else:
        weights = dict(readout_stream)
        for stream, w in weights.items():
            if stream not in sizes or tuple(w.shape) != (batch_size, sizes[stream]):
                raise ValueError(
                    f"readout weights for stream '{stream}' must be ({batch_size}, "
                    f"{sizes.get(stream)}), got {tuple(w.shape)} (streams: {list(sizes)})"
                )
    adjoint = RowAdjoint(sizes, weights, method=method, dtype=dtype)
    for step in reversed(steps):
        adjoint.step(step)
    return adjoint, reference


class RowAdjoint:
    r"""The readout rows propagated backwards one step at a time (the loop of
    :func:`propagate_row`), for callers that get the steps' maps one by one in reverse order —
    during the backward pass, each map used and dropped at once.

    Args:
        sizes: tokens per stream.
        readout: readout weights ``{stream: (B, n_stream)}``.
        method: a linear propagator (default :class:`Ours`).
        dtype: the relevance dtype.
    """

    def __init__(self, sizes: Mapping[str, int], readout: Mapping[str, Tensor], *,
                 method: Propagator | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.method = _checked(method)
        if not self.method.linear:
            raise ValueError(f"{self.method!r} is not linear: its rows need the full propagation")
        self.sizes, self.dtype = dict(sizes), dtype
        self.adjoint: dict[str, Tensor] = {s: w.to(dtype) for s, w in readout.items()}
        self.batch = next(iter(readout.values())).shape[0]
        self.readout = dict(readout)
        #: each read token's staying share: the readout weight carried along the paths that
        #: never leave the token — its residual path and its attention to itself, step by step
        #: (the residual weights and the method's scales apply; a junction that replaces the
        #: token's row ends it)
        self.staying: dict[str, Tensor] = dict(self.adjoint)

    def step(self, step: FlowStep) -> None:
        """Run one step (the last not yet run) backwards."""
        adjoint, dtype = self.adjoint, self.dtype
        if isinstance(step, TokenMap):
            self._junction(step)
            return
        scales = self.method.step_scales(step)
        residuals = _residuals(step, dtype)
        self._stay(step, scales, residuals)
        for q, scale in scales.items():
            if q in adjoint:
                adjoint[q] = adjoint[q] / scale
        updates: dict[str, Tensor] = {}
        for flow in as_group(step):
            if flow.query not in adjoint:
                continue
            accumulate(updates, flow.key,
                       row_increment(adjoint[flow.query], flow.attention.to(dtype)))
        for q, keep in residuals.items():
            if q in adjoint:
                adjoint[q] = adjoint[q] * keep
        for stream, delta in updates.items():
            accumulate(adjoint, stream, delta)

    def _junction(self, step: TokenMap) -> None:
        adjoint, dtype = self.adjoint, self.dtype
        if step.into not in adjoint:
            return
        replaced = step.rows.to(dtype)
        moved = row_increment(adjoint[step.into] * replaced, step.weights.to(dtype))
        self._carry(step, replaced)
        if not step.additive:
            adjoint[step.into] = adjoint[step.into] * (1 - replaced)
            if step.into in self.staying:
                self.staying[step.into] = self.staying[step.into] * (1 - replaced)
        accumulate(adjoint, step.origin, moved)

    def _carry(self, step: TokenMap, replaced: Tensor) -> None:
        """A junction that brings a read token's own row over from one token of another
        stream (:func:`~captum_hetattn.rules.ops.copy_map`) carries its staying share there;
        any other junction ends it."""
        staying = self.staying.get(step.into)
        if staying is None:
            return
        carried = row_increment(staying * replaced, copy_map(step).to(self.dtype))
        if bool(carried.any()):
            accumulate(self.staying, step.origin, carried)

    def _stay(self, step: FlowStep, scales: Mapping[str, int],
              residuals: Mapping[str, Tensor]) -> None:
        """The staying share through one step: ``d ← d · (keep + Σ_self diag Ā) / scale``."""
        staying = self.staying
        for q, scale in scales.items():
            if q in staying:
                staying[q] = staying[q] / scale
        loops: dict[str, Tensor] = {}
        for flow in as_group(step):
            if flow.query == flow.key and flow.query in staying:
                attention = flow.attention.to(self.dtype)
                diagonal = (attention.diagonal() if isinstance(attention, FoldedMap)
                            else attention.diagonal(dim1=-2, dim2=-1))
                accumulate(loops, flow.query, staying[flow.query] * diagonal)
        for q, keep in residuals.items():
            if q in staying:
                staying[q] = staying[q] * keep
        for q, loop in loops.items():
            staying[q] = staying[q] + loop

    def result(self, reference: Tensor) -> dict[str, Tensor]:
        """``{stream: (B, n)}``, zeros for streams the readout never reached."""
        return {
            s: self.adjoint[s].contiguous() if s in self.adjoint else reference.new_zeros(
                self.batch, n, dtype=self.dtype)
            for s, n in self.sizes.items()
        }

    def own(self, reference: Tensor) -> dict[str, Tensor]:
        r"""The read tokens' own share of :meth:`result`, ``{stream: (B, n)}``, after every
        step ran.

        Where an example's readout weighs one token ``r`` (``[CLS]``, the last token, a
        query), its own entry ``w_r · R[r, r]`` is the row's own entry at ``r``: exact, GAE's
        ``R_tt[0, 0]``. Where it weighs several tokens (mean pooling), the row alone does not
        hold each ``R[j, j]``; each read token's *staying share* is taken instead, computed in
        the same sweep from each map's diagonal as it arrives:
        ``w_j · ∏_steps (keep_j + Σ_self Ā[j, j]) / scale`` — the part of ``R[j, j]`` carried by
        the paths that never leave ``j`` (its residual path and its attention to itself), i.e.
        ``R[j, j]`` without the round trips through other tokens (``j → k → j``). The
        identity the state starts with is in it (``keep = 1``, ``scale = 1 + m`` for rollout,
        the residual weights with ``weighting="value"``).
        """
        rows = self.result(reference)
        single = one_token_read(self.readout)[:, None]
        own = {}
        for s, row in rows.items():
            if s not in self.readout:  # a read token's share carried here through a copy
                own[s] = self.staying[s].to(row.dtype) if s in self.staying else \
                    torch.zeros_like(row)
                continue
            at_read = row * (self.readout[s] != 0).to(row.dtype)
            own[s] = torch.where(single, at_read, self.staying[s].to(row.dtype)).contiguous()
        return own
