r"""The propagators: one object per method, one interface (torch only).

A propagator says what a method does differently from the plain rules of
:mod:`~captum_hetattn.rules.ops`, and nothing else: what a cross call adds to the key stream's
own block (:meth:`Propagator.key_increment`), how each step is normalised
(:meth:`Propagator.step_scales`), how the readout rows are read from the blocks
(:meth:`Propagator.read`), and whether those rows can be propagated backwards by the adjoint
(:attr:`Propagator.linear`: then the engine streams them during the backward pass).
:meth:`Propagator.split_rows` is the one entry point the engine calls: the readout rows and,
apart, the read tokens' own share within them (``w_j·R[j, j]``: the identity the state starts
with and what attention brings back to the token), which what users see leaves out.

- :class:`Ours` — the paper (optional noise link);
- :class:`Gae` — GAE's bi-modal rules (Chefer et al., ICCV 2021) and its own-entry removal;
- :class:`Rollout` — attention rollout (Abnar & Zuidema 2020), generalised to cross calls;
- :class:`Raw` — the head-mean map of the last call into each stream, read at the readout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from captum_hetattn.rules.ops import (
    AttentionFlow,
    FlowStep,
    Relevance,
    TokenMap,
    as_group,
    calls_per_query,
    flow_increment,
    gae_cross_increment,
    noise_link,
    own_entries,
    read_rows,
    row_increment,
    without_own,
)


class Propagator:
    r"""The interface every method implements; the defaults are the paper's plain rules."""

    #: whether one readout row can be propagated by the adjoint
    #: (:func:`~captum_hetattn.rules.adjoint.propagate_row`), so streaming applies
    linear: ClassVar[bool] = True
    #: whether relevance flows step by step through the graph (``Explanation.flow``)
    has_flow: ClassVar[bool] = True
    #: whether :meth:`rows` leaves the read tokens' own share out (GAE's reference code does)
    own_removed: ClassVar[bool] = False

    def key_increment(
        self, query_self: Callable[[], Tensor], attention: Tensor, key_self: Tensor,
        query_padding: Tensor | None, key_padding: Tensor | None,
    ) -> Tensor:
        r"""What a cross call adds to ``R[q, k]`` from the key stream's own block ``R[k, k]``.

        Args:
            query_self: gives ``R[q, q]`` from before the step (only GAE reads it).
            attention: ``Ā`` ``(B, n_q, n_k)``.
            key_self: ``R[k, k]`` ``(B, n_k, n_k)``.
            query_padding, key_padding: ``(B, n)`` padding tokens of each stream, or ``None``.

        Returns:
            ``(B, n_q, n_k)``.
        """
        return flow_increment(attention, key_self)

    def step_scales(self, step: FlowStep) -> dict[str, int]:
        r"""Per query stream, the number its blocks are divided by after the step (none: 1)."""
        return {}

    def read(self, blocks: Relevance, sizes: Mapping[str, int], readout: Mapping[str, Tensor]
             ) -> dict[str, Tensor]:
        r"""The readout rows ``{stream: (B, n)}`` from every block (:func:`read_rows`)."""
        return read_rows(blocks, sizes, readout)

    def rows(
        self,
        sizes: Mapping[str, int],
        steps: Sequence[FlowStep],
        readout: Mapping[str, Tensor],
        padding: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        r"""The method's readout rows: :meth:`split_rows`' rows, with the own share taken out
        where the method's reference does so (:attr:`own_removed`: GAE).

        Args:
            sizes, steps, readout, padding: as for :meth:`split_rows`.

        Returns:
            ``{stream: (B, n_stream)}``.
        """
        rows, own = self.split_rows(sizes, steps, readout, padding)
        return without_own(rows, own) if self.own_removed else rows

    def split_rows(
        self,
        sizes: Mapping[str, int],
        steps: Sequence[FlowStep],
        readout: Mapping[str, Tensor],
        padding: Mapping[str, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        r"""The readout rows (by the adjoint where :attr:`linear`, else every block, then
        read) and the read tokens' own share within them.

        The own share is ``w_j·R[j, j]`` for every read token ``j`` (GAE's ``R_tt[0, 0]``,
        generalised) wherever it is at hand exactly: from every block (the full propagation),
        or from the row itself where one token is read. The adjoint of a readout over several
        tokens does not hold each ``R[j, j]``; it gives each read token's staying share
        instead, the part of ``R[j, j]`` on the paths that never leave ``j``
        (:meth:`~captum_hetattn.rules.adjoint.RowAdjoint.own`).

        Args:
            sizes: tokens per stream.
            steps: the steps in execution order (as for
                :func:`~captum_hetattn.rules.adjoint.propagate`).
            readout: readout weights ``{stream: (B, n_stream)}``.
            padding: per stream, ``(B, n)`` tokens a reference run would not have (GAE's
                zero-row check ignores them).

        Returns:
            ``(rows, own)``, each ``{stream: (B, n_stream)}``; ``rows − own`` is the context
            relevance users see.
        """
        # the state machines take a propagator, so they are imported where they are run
        from captum_hetattn.rules.adjoint import propagate, propagate_row_own

        if self.linear:
            return propagate_row_own(sizes, steps, readout, method=self)
        blocks = propagate(sizes, steps, self, padding=padding)
        return self.read(blocks, sizes, readout), own_entries(blocks, sizes, readout, steps)


@dataclass(frozen=True)
class Ours(Propagator):
    r"""The paper's rules: a cross call adds ``Ā · R[k, s]`` to ``R[q, s]`` for every source.

    Args:
        noise_link: read :func:`~captum_hetattn.rules.ops.noise_link` of ``R[k, k]`` instead of
            ``R[k, k]`` (eq. 8–10); the rules are then not linear in the maps' readout row.
    """

    noise_link: bool = False

    @property
    def linear(self) -> bool:  # type: ignore[override]
        return not self.noise_link

    def key_increment(
        self, query_self: Callable[[], Tensor], attention: Tensor, key_self: Tensor,
        query_padding: Tensor | None, key_padding: Tensor | None,
    ) -> Tensor:
        return flow_increment(attention, noise_link(key_self) if self.noise_link else key_self)


@dataclass(frozen=True)
class Rollout(Ours):
    r"""Attention rollout's normalisation on the paper's rules: a stream updated by ``m`` calls
    of a step becomes ``(R + Σ Ā·R) / (1 + m)`` (``rownorm(Ā + I)`` for one self call, since
    attention rows sum to 1); on one stream this is exactly
    :func:`~captum_hetattn.rules.ops.attention_rollout`. The same division runs in the full
    propagation (after the step) and in the adjoint (before it).

    Args:
        noise_link: as for :class:`Ours`.
    """

    def step_scales(self, step: FlowStep) -> dict[str, int]:
        return {q: 1 + calls for q, calls in calls_per_query(step).items()}


@dataclass(frozen=True)
class Gae(Propagator):
    r"""GAE's bi-modal rules (Chefer et al., ICCV 2021) for cross calls; self calls as ours.

    The readout tokens' own relevance is set to 0 (the reference's ``R_tt[0, 0] = 0``; for a
    readout vector ``w``, each read token ``j`` loses its own entry ``w_j·R[j, j]``).

    Args:
        normalize: its normalisation (eq. 8–9); ``False`` for the ablation.
        cross_term: ``"gae"`` (eq. 10, :func:`~captum_hetattn.rules.ops.gae_cross_increment`)
            or ``"direct"``: the paper's replacement ``R[q, k] += Ā · R̄[k, k]``, with which GAE
            without normalisation equals :class:`Ours`.
    """

    normalize: bool = True
    cross_term: Literal["gae", "direct"] = "gae"
    linear: ClassVar[bool] = False
    own_removed: ClassVar[bool] = True  # the reference's R_tt[0, 0] = 0 (own_entries)

    def __post_init__(self) -> None:
        if self.cross_term not in ("gae", "direct"):
            raise ValueError(f"cross_term must be 'gae' or 'direct', got {self.cross_term!r}")

    def key_increment(
        self, query_self: Callable[[], Tensor], attention: Tensor, key_self: Tensor,
        query_padding: Tensor | None, key_padding: Tensor | None,
    ) -> Tensor:
        if self.cross_term == "gae":
            return gae_cross_increment(
                query_self(), attention, key_self, normalize=self.normalize,
                query_padding=query_padding, key_padding=key_padding,
            )
        return flow_increment(attention, noise_link(key_self) if self.normalize else key_self)


@dataclass(frozen=True)
class Raw(Propagator):
    r"""Raw attention: for every stream ``s``, the head-mean map of the last call from a readout
    stream to ``s``, read at the readout. Nothing propagates through the attention calls; tokens
    spliced into a stream by a junction give what their rows received back to their origin."""

    linear: ClassVar[bool] = False
    has_flow: ClassVar[bool] = False  # one map read at the readout, nothing flows

    def split_rows(
        self,
        sizes: Mapping[str, int],
        steps: Sequence[FlowStep],
        readout: Mapping[str, Tensor],
        padding: Mapping[str, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        r"""The rows read from the last maps, and the read tokens' own share: each read
        token's attention to itself in the last self call of its stream, ``w_j·Ā[j, j]``
        (carried through the junctions like the rest of the row)."""
        from captum_hetattn.rules.adjoint import propagate_row

        last: dict[tuple[str, str], AttentionFlow] = {}
        for step in steps:
            for flow in as_group(step):
                if flow.query in readout:
                    last[(flow.query, flow.key)] = flow
        read: dict[str, Tensor] = {}
        own: dict[str, Tensor] = {}
        for (query, key), flow in last.items():
            row = row_increment(readout[query], flow.attention.float())
            read[key] = read[key] + row if key in read else row
            if query == key:
                own[key] = readout[query].to(row.dtype) * flow.attention.float().diagonal(
                    dim1=-2, dim2=-1)
        template = next(iter(read.values()))

        def complete(rows: dict[str, Tensor]) -> dict[str, Tensor]:
            return {s: rows[s].contiguous() if s in rows else template.new_zeros(
                template.shape[0], n) for s, n in sizes.items()}

        junctions = [step for step in steps if isinstance(step, TokenMap)]
        if not junctions:
            return complete(read), complete(own)
        return (propagate_row(sizes, junctions, read),
                complete(propagate_row(sizes, junctions, own) if own else {}))
