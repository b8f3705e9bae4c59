r"""Relevance rules: pure, batched tensor math (torch only).

Notation (shared/DESIGN.md §2). Streams ``x, s``; the relevance block ``R[x, s]`` is a
``(B, n_x, n_s)`` tensor: how much source token ``j`` of stream ``s`` has flowed into token ``i``
of stream ``x``. The state starts at ``R[x, x] = I`` and ``R[x, s] = 0``; each attention call
updates it:

- head aggregation with gradient correction (paper eq. 1–3): ``Ā = mean_h(f(G) ⊙ A)``;
- self-attention (TypeA / TypeC, eq. 4–5): ``R[x, s] += Ā · R[x, s]`` for every source ``s``;
- cross-attention (TypeB, eq. 6–7): ``R[q, s] += Ā · R[k, s]`` for every source ``s``;
- noise link (eq. 8–10): a cross call reads ``(R[k, k] − I) / rowsum + I`` instead of ``R[k, k]``.

:func:`propagate` runs these over a sequence of steps (a step is one :class:`AttentionFlow`, a
parallel group of them, which all read the state from before the group, or a :class:`TokenMap`
junction) with one propagator per method (:class:`Ours`, :class:`Gae`), and returns every block;
:func:`propagate_row` computes just one readout row by running the linear rules backwards (the
adjoint), at ``O(Σ n_q·n_k)`` per step instead of ``O(n³)``. The GAE baseline (Chefer et al.,
ICCV 2021) and attention rollout (Abnar & Zuidema, 2020) live here too, so every method runs on
the same captured maps.

Relevance is computed in float32 (float64 inputs stay float64), whatever the maps' dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Correction = Literal["pos", "full", "abs", "none"]
CORRECTIONS: tuple[str, ...] = ("pos", "full", "abs", "none")
NODE_TYPES: tuple[str, ...] = ("A", "B", "C")
Rule = Literal["ours", "gae"]

Block = tuple[str, str]
Relevance = dict[Block, Tensor]


@dataclass(frozen=True)
class AttentionFlow:
    r"""One head-aggregated attention call: ``query`` stream reads from ``key`` stream.

    Args:
        query: stream the queries come from (the stream whose relevance is updated).
        key: stream the keys/values come from (== ``query`` for self-attention).
        attention: the aggregated map ``Ā`` of shape ``(B, n_query, n_key)``.
        label: how error messages name the call (e.g. the module name).
        residual: ``(B, n_query)`` weights of the query tokens' own relevance in the update
            (``R[q, s] ← residual ⊙ R[q, s] + Ā · R[k, s]``); ``None`` is the paper's 1 (see
            :func:`residual_shares`).
    """

    query: str
    key: str
    attention: Tensor
    label: str = ""
    residual: Tensor | None = None

    @property
    def is_cross(self) -> bool:
        return self.query != self.key

    @property
    def name(self) -> str:
        return self.label or f"{self.query}<-{self.key}"


@dataclass(frozen=True)
class TokenMap:
    r"""A junction: rows of stream ``into`` become token mixtures of stream ``origin``.

    Tokens that move between streams without attention (image features spliced at placeholder
    positions, concatenated prefixes, projections, merges) are a linear map in the token
    dimension: ``R[into, s][rows] = M · R[origin, s]`` for every source ``s`` (the replaced
    rows lose their own identity), and the adjoint ``u_origin += (u_into ⊙ rows) · M``,
    ``u_into ← u_into ⊙ ¬rows``, so row mode stays exact.

    Args:
        into: the stream whose rows are replaced.
        origin: the stream the tokens come from.
        weights: ``M``, ``(B, n_into, n_origin)`` (rows outside ``rows`` are ignored).
        rows: ``(B, n_into)`` booleans, the replaced rows.
        label: how error messages name the junction.
        additive: add to the rows instead of replacing them (a row fed by several streams: the
            first junction replaces, the others add; adjoint ``u_into`` is then kept).
    """

    into: str
    origin: str
    weights: Tensor
    rows: Tensor
    label: str = ""
    additive: bool = False

    @property
    def name(self) -> str:
        return self.label or f"junction {self.origin}->{self.into}"


FlowStep = AttentionFlow | TokenMap | Sequence[AttentionFlow]


def relevance_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: half-precision maps are promoted, float64 is kept."""
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else torch.float32


def resolve_correction(correction: str | Mapping[str, str], node_type: str) -> str:
    r"""The correction for a node of ``node_type`` (``"A"``, ``"B"`` or ``"C"``).

    Args:
        correction: one of ``"pos" | "full" | "abs" | "none"``, or a per-type dict such as
            ``{"A": "abs", "B": "pos", "C": "pos"}`` (every type the graph uses must be given).
        node_type: the node's type.
    """
    if isinstance(correction, Mapping):
        unknown = set(correction) - set(NODE_TYPES)
        if unknown:
            raise ValueError(
                f"Per-type correction has unknown node type(s) {sorted(unknown)}; "
                f"use keys from {NODE_TYPES}"
            )
        if node_type not in correction:
            raise ValueError(
                f"Per-type correction {dict(correction)} gives nothing for type {node_type} nodes"
            )
        chosen = correction[node_type]
    else:
        chosen = correction
    if chosen not in CORRECTIONS:
        raise ValueError(f"Unknown correction {chosen!r}; choose from {CORRECTIONS}")
    return chosen


def aggregate_heads(
    attention: Tensor, gradient: Tensor | None = None, correction: str = "pos"
) -> Tensor:
    r"""Head aggregation with gradient correction (paper eq. 1–3).

    ``Ā = mean_h(f(G) ⊙ A)`` with ``f(G) = max(G, 0)`` (``"pos"``), ``G`` (``"full"``),
    ``|G|`` (``"abs"``) or ``1`` (``"none"``: raw attention, no gradient needed).

    Args:
        attention: post-softmax probabilities ``(B, H, n_q, n_k)``.
        gradient: ``∂objective/∂A``, same shape; may be ``None`` only for ``"none"``.
        correction: ``"pos" | "full" | "abs" | "none"``.

    Returns:
        ``(B, n_q, n_k)`` in float32 (float64 if the inputs are float64).
    """
    if attention.dim() != 4:
        raise ValueError(
            f"attention must be (batch, heads, n_query, n_key), got shape {tuple(attention.shape)}"
        )
    return corrected(attention, gradient, correction).mean(dim=1)


def corrected(
    attention: Tensor, gradient: Tensor | None = None, correction: str = "pos"
) -> Tensor:
    r"""``f(G) ⊙ A`` per head and entry (any layout): :func:`aggregate_heads` before the mean
    over heads, for maps that are folded into a dense layout first.

    Returns:
        A tensor like ``attention`` in float32 (float64 if the inputs are float64).
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"Unknown correction {correction!r}; choose from {CORRECTIONS}")
    dtype = relevance_dtype(attention.dtype)
    attention = attention.to(dtype)
    if correction == "none":
        return attention
    if gradient is None:
        raise ValueError(f"correction {correction!r} needs the gradient of the attention map")
    if gradient.shape != attention.shape:
        raise ValueError(
            f"gradient shape {tuple(gradient.shape)} != attention shape {tuple(attention.shape)}"
        )
    gradient = gradient.to(dtype)
    if correction == "pos":
        weight = gradient.clamp(min=0)
    elif correction == "abs":
        weight = gradient.abs()
    else:
        weight = gradient
    return weight * attention


def value_weighted(
    attention: Tensor, gradient: Tensor | None, correction: str, value_norms: Tensor
) -> Tensor:
    r"""Head aggregation that weighs each key by the size of what it passes on.

    ``Ā^ν_ij = mean_h(f(G_h) ⊙ A_h)_ij · ν_hj / c_i`` with ``c_i = mean_h Σ_k A_hik ν_hk``: the
    keys of a row are re-weighted by their value norms ``ν_hj = ‖v_hj W_O,h‖`` and the row keeps
    the mass it had (``c_i`` is the attention-weighted mean norm). With equal norms this is
    :func:`aggregate_heads`.

    Args:
        attention: ``A`` ``(B, H, n_q, n_k)``.
        gradient: ``G``, same shape (``None`` = zeros).
        correction: ``"pos"``, ``"full"``, ``"abs"`` or ``"none"``.
        value_norms: ``ν`` ``(B, H, n_k)``.
    """
    dtype = relevance_dtype(attention.dtype)
    attention = attention.to(dtype)
    norms = value_norms.to(dtype)[:, :, None, :]
    fixed = corrected(attention, None if gradient is None else gradient.to(dtype), correction)
    scale = (attention * norms).sum(dim=-1).mean(dim=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (fixed * norms).mean(dim=1) / scale[..., None]


def residual_shares(output_norm: Tensor, input_norm: Tensor) -> tuple[Tensor, Tensor]:
    r"""How a token's update splits between its own state and the attention output.

    With ``a_i = ‖o_i‖ / (‖o_i‖ + ‖x_i‖)`` (attention output ``o``, the hidden state ``x`` the
    queries read), returns ``(keep, mix) = (2 (1 − a_i), 2 a_i)``: the weights of ``R[q, s]`` and
    of ``Ā · R[k, s]`` in the update. Both are 1 where ``‖o_i‖ = ‖x_i‖`` — the paper's rule,
    which adds the relevance before and after attention with equal weight.

    Args:
        output_norm, input_norm: ``(B, n_q)``.
    """
    total = output_norm + input_norm
    share = torch.where(total > 0, output_norm / torch.where(total > 0, total, 1),
                        torch.full_like(total, 0.5))
    return 2 * (1 - share), 2 * share


def self_rule(relevance: Tensor, attention: Tensor) -> Tensor:
    r"""Rollout step of self-attention (eq. 4–5): ``R + Ā · R``.

    Args:
        relevance: ``R[x, s]`` of shape ``(B, n_x, n_s)``.
        attention: ``Ā`` of shape ``(B, n_x, n_x)``.
    """
    return relevance + attention @ relevance


def cross_rule(query_relevance: Tensor, attention: Tensor, key_relevance: Tensor) -> Tensor:
    r"""Cross-attention step (eq. 6–7): ``R[q, s] + Ā · R[k, s]``.

    Args:
        query_relevance: ``R[q, s]`` of shape ``(B, n_q, n_s)``.
        attention: ``Ā`` of shape ``(B, n_q, n_k)``.
        key_relevance: ``R[k, s]`` of shape ``(B, n_k, n_s)``.
    """
    return query_relevance + attention @ key_relevance


def _residual_rows(relevance: Tensor) -> tuple[Tensor, Tensor]:
    """``S = R − I`` and its row sums, for a square ``(B, n, n)`` block."""
    if relevance.dim() != 3 or relevance.shape[-1] != relevance.shape[-2]:
        raise ValueError(
            f"normalisation needs a square (B, n, n) block, got {tuple(relevance.shape)}"
        )
    eye = torch.eye(relevance.shape[-1], dtype=relevance.dtype, device=relevance.device)
    residual = relevance - eye
    return residual, residual.sum(dim=-1, keepdim=True)


def noise_link(relevance: Tensor) -> Tensor:
    r"""Noise link (paper eq. 8–10; GAE's ``handle_residual``): ``(R − I) / rowsum(R − I) + I``.

    Row-wise. A row whose sum is 0 stays the identity row (the reference code gives NaN there).

    Args:
        relevance: a square block ``R[k, k]`` of shape ``(B, n, n)``.
    """
    residual, row_sum = _residual_rows(relevance)
    zero = row_sum == 0
    scaled = residual / torch.where(zero, torch.ones_like(row_sum), row_sum)
    eye = torch.eye(relevance.shape[-1], dtype=relevance.dtype, device=relevance.device)
    return torch.where(zero, torch.zeros_like(scaled), scaled) + eye


def has_zero_residual_row(relevance: Tensor, padding: Tensor | None = None) -> Tensor:
    """Per example, whether some row of ``R − I`` sums to 0 (where GAE's code divides by 0).

    Rows of ``padding`` tokens ``(B, n)`` are ignored: the reference code runs on unpadded
    inputs, where those rows do not exist.
    """
    _, row_sum = _residual_rows(relevance)
    zero = row_sum.squeeze(-1) == 0
    if padding is not None:
        zero = zero & ~padding
    return zero.any(dim=1)


def gae_cross_increment(
    query_self: Tensor,
    attention: Tensor,
    key_self: Tensor,
    *,
    normalize: bool = True,
    query_padding: Tensor | None = None,
    key_padding: Tensor | None = None,
) -> Tensor:
    r"""GAE's eq. 10 increment (Chefer et al. 2021): ``R̄[q, q]ᵀ · Ā · R̄[k, k]``.

    The full bi-modal update of a cross call (query stream ``q``, key stream ``k``, both from the
    pre-update state) is ``R[q, k] += gae_cross_increment(R[q,q], Ā, R[k,k])`` (eq. 10; the
    transpose is in the reference code) and ``R[q, q] += Ā · R[k, q]`` (eq. 11, which is
    :func:`cross_rule`). ``R̄`` is :func:`noise_link` when ``normalize`` (GAE eq. 8–9).

    Where the reference code divides by a zero row sum it produces NaN, which fills the whole
    product; its DETR code then replaces NaN by 0, i.e. drops this increment. We reproduce that
    result per example without computing a NaN.

    Args:
        query_self: ``R[q, q]`` of shape ``(B, n_q, n_q)``.
        attention: ``Ā`` of shape ``(B, n_q, n_k)``.
        key_self: ``R[k, k]`` of shape ``(B, n_k, n_k)``.
        normalize: apply GAE's normalisation to both blocks.
        query_padding, key_padding: ``(B, n)`` padding tokens of each stream, whose (always
            zero) rows do not count as zero rows.
    """
    if not normalize:
        return query_self.transpose(-1, -2) @ attention @ key_self
    added = noise_link(query_self).transpose(-1, -2) @ attention @ noise_link(key_self)
    dropped = has_zero_residual_row(query_self, query_padding) | has_zero_residual_row(
        key_self, key_padding
    )
    return torch.where(dropped[:, None, None], torch.zeros_like(added), added)


def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    r"""Attention rollout (Abnar & Zuidema 2020): ``Â_l = rownorm(Ā_l + I)``, ``Â_L ⋯ Â_1``.

    Args:
        attentions: head-averaged maps ``(B, n, n)`` in execution order (e.g. from
            :func:`aggregate_heads` with ``correction="none"``).

    Returns:
        ``(B, n, n)``.
    """
    if not attentions:
        raise ValueError("attention_rollout needs at least one attention map")
    joint: Tensor | None = None
    for attention in attentions:
        attention = attention.to(relevance_dtype(attention.dtype))
        eye = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
        mixed = attention + eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        joint = mixed if joint is None else mixed @ joint
    assert joint is not None
    return joint


# ---------------------------------------------------------------------------- propagation
def _as_group(step: FlowStep) -> tuple[AttentionFlow, ...]:
    if isinstance(step, TokenMap):
        return ()
    if isinstance(step, AttentionFlow):
        return (step,)
    group = tuple(step)
    for flow in group:
        if not isinstance(flow, AttentionFlow):
            raise TypeError(f"A step holds AttentionFlow objects, got {type(flow).__name__}")
    return group


def _check_flows(sizes: Mapping[str, int], steps: Sequence[FlowStep]) -> tuple[int, Tensor]:
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
        for flow in _as_group(step):
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


def _accumulate(updates: dict, key: object, delta: Tensor) -> None:
    """Sum the increments a parallel group makes to one block (or one adjoint row)."""
    updates[key] = updates[key] + delta if key in updates else delta


@dataclass(frozen=True)
class Ours:
    r"""The paper's rules: a cross call adds ``Ā · R[k, s]`` to ``R[q, s]`` for every source.

    Args:
        noise_link: read :func:`noise_link` of ``R[k, k]`` instead of ``R[k, k]`` (eq. 8–10).
        rollout: normalise every step like attention rollout (see :func:`propagate`).
    """

    noise_link: bool = False
    rollout: bool = False

    @property
    def linear(self) -> bool:
        """Whether one readout row can be propagated by the adjoint (:func:`propagate_row`)."""
        return not self.noise_link

    def key_increment(
        self, query_self: Callable[[], Tensor], attention: Tensor, key_self: Tensor,
        query_padding: Tensor | None, key_padding: Tensor | None,
    ) -> Tensor:
        """What a cross call adds to ``R[q, k]`` from the key stream's own block ``R[k, k]``."""
        return attention @ (noise_link(key_self) if self.noise_link else key_self)


@dataclass(frozen=True)
class Gae:
    r"""GAE's bi-modal rules (Chefer et al., ICCV 2021) for cross calls; self calls as ours.

    Args:
        normalize: its normalisation (eq. 8–9); ``False`` for the ablation.
        cross_term: ``"gae"`` (eq. 10, :func:`gae_cross_increment`) or ``"direct"``: the paper's
            replacement ``R[q, k] += Ā · R̄[k, k]``, with which GAE without normalisation equals
            :class:`Ours`.
    """

    normalize: bool = True
    cross_term: Literal["gae", "direct"] = "gae"
    rollout: bool = False
    linear: bool = False

    def __post_init__(self) -> None:
        if self.cross_term not in ("gae", "direct"):
            raise ValueError(f"gae_cross_term must be 'gae' or 'direct', got {self.cross_term!r}")

    def key_increment(
        self, query_self: Callable[[], Tensor], attention: Tensor, key_self: Tensor,
        query_padding: Tensor | None, key_padding: Tensor | None,
    ) -> Tensor:
        if self.cross_term == "gae":
            return gae_cross_increment(
                query_self(), attention, key_self, normalize=self.normalize,
                query_padding=query_padding, key_padding=key_padding,
            )
        return attention @ (noise_link(key_self) if self.normalize else key_self)


Propagator = Ours | Gae


def propagate(
    sizes: Mapping[str, int],
    steps: Sequence[FlowStep],
    *,
    rule: Rule = "ours",
    with_noise_link: bool = False,
    gae_normalize: bool = True,
    gae_cross_term: Literal["gae", "direct"] = "gae",
    rollout: bool = False,
    padding: Mapping[str, Tensor] | None = None,
    method: Propagator | None = None,
    on_step: Callable[[int, FlowStep | None, Relevance], None] | None = None,
) -> Relevance:
    r"""Full (all-rows) propagation of the relevance state over the steps.

    Args:
        sizes: tokens per stream, e.g. ``{"text": 20, "image": 36}``.
        steps: in execution order; each an :class:`AttentionFlow` or a parallel group (a
            sequence of flows that all read the state from before the group).
        rule: ``"ours"`` (the paper's method) or ``"gae"`` (Chefer et al.'s bi-modal rules for
            cross calls; self calls are the same rule in both).
        with_noise_link: ours only — cross calls read :func:`noise_link` of ``R[k, k]``
            instead of ``R[k, k]``.
        gae_normalize: GAE only — apply its normalisation (eq. 8–9).
        gae_cross_term: GAE only — ``"gae"`` (eq. 10, :func:`gae_cross_increment`) or
            ``"direct"``: the paper's replacement ``R[q, k] += Ā · R̄[k, k]``, with which GAE
            without normalisation equals our method.
        rollout: normalise every step like attention rollout: a stream updated by ``m`` calls
            of a step becomes ``(R + Σ Ā·R) / (1 + m)`` (``rownorm(Ā + I)`` for one self call,
            since attention rows sum to 1); on one stream this is exactly
            :func:`attention_rollout`.
        padding: GAE only — per stream, ``(B, n)`` padding tokens (see
            :func:`gae_cross_increment`).
        method: an :class:`Ours` or :class:`Gae` propagator, instead of the keyword switches
            above (which build one).
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
    if method is None:
        if rule not in ("ours", "gae"):
            raise ValueError(f"rule must be 'ours' or 'gae', got {rule!r}")
        method = (
            Ours(noise_link=with_noise_link, rollout=rollout) if rule == "ours"
            else Gae(normalize=gae_normalize, cross_term=gae_cross_term, rollout=rollout)
        )
    padding = padding or {}
    batch_size, reference = _check_flows(sizes, steps)
    dtype = relevance_dtype(reference.dtype)
    state = initial_relevance(sizes, batch_size, dtype=dtype, device=reference.device)
    if on_step is not None:
        on_step(-1, None, state)

    def read(x: str, s: str) -> Tensor:
        block = state.get((x, s))
        if block is None:
            return reference.new_zeros(batch_size, sizes[x], sizes[s], dtype=dtype)
        return block

    for index, step in enumerate(steps):
        if isinstance(step, TokenMap):
            rows = step.rows[:, :, None]
            weights = step.weights.to(dtype)
            for s in sizes:
                if (step.origin, s) in state:
                    moved = weights @ state[(step.origin, s)]
                elif (step.into, s) in state:
                    moved = torch.zeros_like(state[(step.into, s)])
                else:
                    continue
                kept = read(step.into, s)
                state[(step.into, s)] = torch.where(
                    rows, kept + moved if step.additive else moved, kept
                )
            if on_step is not None:
                on_step(index, step, state)
            continue
        updates: dict[Block, Tensor] = {}
        for flow in _as_group(step):
            attention = flow.attention.to(dtype)
            q, k = flow.query, flow.key
            for s in sizes:
                if (k, s) not in state:
                    continue  # zero block: nothing flows
                if flow.is_cross and s == k:  # the key stream's own block: the methods differ
                    increment = method.key_increment(
                        lambda q=q: read(q, q), attention, state[(k, k)], padding.get(q),
                        padding.get(k),
                    )
                else:
                    increment = attention @ state[(k, s)]
                _accumulate(updates, (q, s), increment)
        for q, keep in _residuals(step, dtype).items():
            for block in [b for b in state if b[0] == q]:
                state[block] = keep[:, :, None] * state[block]
        for block, delta in updates.items():
            state[block] = read(*block) + delta
        if method.rollout:
            for q, calls in _calls_per_query(step).items():
                for block in [b for b in state if b[0] == q]:
                    state[block] = state[block] / (1 + calls)
        if on_step is not None:
            on_step(index, step, state)
    return {(x, s): read(x, s).contiguous() for x in sizes for s in sizes}


def _residuals(step: FlowStep, dtype: torch.dtype) -> dict[str, Tensor]:
    """Per query stream, the weight of its own relevance in this step (the mean over its calls
    that give one; the others count as 1)."""
    weights: dict[str, list[Tensor | None]] = {}
    for flow in _as_group(step):
        weights.setdefault(flow.query, []).append(flow.residual)
    out: dict[str, Tensor] = {}
    for q, given in weights.items():
        if all(w is None for w in given):
            continue
        reference = next(w for w in given if w is not None).to(dtype)
        out[q] = sum((torch.ones_like(reference) if w is None else w.to(dtype)) for w in given
                     ) / len(given)
    return out


def _calls_per_query(step: FlowStep) -> dict[str, int]:
    counts: dict[str, int] = {}
    for flow in _as_group(step):
        counts[flow.query] = counts.get(flow.query, 0) + 1
    return counts


def readout_weights(
    sizes: Mapping[str, int], readout_stream: str, readout_token: int | Tensor, batch_size: int,
    *, dtype: torch.dtype = torch.float32, device: torch.device | None = None,
) -> dict[str, Tensor]:
    """The one-hot readout ``{stream: (B, n)}`` of one token per example, range-checked."""
    if readout_stream not in sizes:
        raise ValueError(f"Unknown readout stream '{readout_stream}' (streams: {list(sizes)})")
    n_out = sizes[readout_stream]
    index = torch.as_tensor(readout_token, device=device).long()
    if index.dim() == 0:
        index = index.expand(batch_size)
    if index.shape != (batch_size,):
        raise ValueError(
            f"readout token must be an int or a ({batch_size},) tensor, got {tuple(index.shape)}"
        )
    if ((index < 0) | (index >= n_out)).any():
        raise ValueError(
            f"readout token {index.tolist()} out of range for stream '{readout_stream}' "
            f"({n_out} tokens)"
        )
    return {readout_stream: torch.nn.functional.one_hot(index, n_out).to(dtype)}


def read_rows(blocks: Relevance, sizes: Mapping[str, int], readout: Mapping[str, Tensor]
              ) -> dict[str, Tensor]:
    r"""Relevance of every stream's own tokens: ``Σ_x w_x · R[x, s]`` over the readout streams.

    Args:
        blocks: every block, as :func:`propagate` returns them.
        sizes: tokens per stream.
        readout: ``{stream x: w_x (B, n_x)}`` readout weights.
    """
    out: dict[str, Tensor] = {}
    for s in sizes:
        total = None
        for x, weights in readout.items():
            block = blocks[(x, s)]
            term = (weights.to(block.dtype).unsqueeze(1) @ block).squeeze(1)
            total = term if total is None else total + term
        assert total is not None
        out[s] = total.contiguous()
    return out


def propagate_row(
    sizes: Mapping[str, int],
    steps: Sequence[FlowStep],
    readout_stream: str | Mapping[str, Tensor],
    readout_token: int | Tensor | None = None,
    *,
    rollout: bool = False,
) -> dict[str, Tensor]:
    r"""The readout rows of every block, by running the (linear) rules backwards.

    Computes ``Σ_x w_x · R[x, s]`` for every stream ``s`` exactly as :func:`propagate` with
    ``rule="ours"`` and no noise link followed by :func:`read_rows` would (``rollout`` as
    there), but propagates row vectors ``u ← u + u_q · Ā`` (and the junctions' adjoints) from the
    last step to the first instead of whole matrices.

    Args:
        sizes: tokens per stream.
        steps: as for :func:`propagate`.
        readout_stream: the stream whose row is read, or readout weights
            ``{stream: (B, n_stream)}`` over the final tokens of several streams.
        readout_token: with a stream name: token index, or a ``(B,)`` tensor of per-example
            indices.

    Returns:
        Dict ``s -> (B, n_s)``.
    """
    batch_size, reference = _check_flows(sizes, steps)
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
    adjoint = RowAdjoint(sizes, weights, rollout=rollout, dtype=dtype)
    for step in reversed(steps):
        adjoint.step(step)
    return adjoint.result(reference)


class RowAdjoint:
    r"""The readout rows propagated backwards one step at a time (the loop of
    :func:`propagate_row`), for callers that get the steps' maps one by one in reverse order —
    during the backward pass, each map used and dropped at once.

    Args:
        sizes: tokens per stream.
        readout: readout weights ``{stream: (B, n_stream)}``.
        rollout: as for :func:`propagate_row`.
        dtype: the relevance dtype.
    """

    def __init__(self, sizes: Mapping[str, int], readout: Mapping[str, Tensor], *,
                 rollout: bool = False, dtype: torch.dtype = torch.float32) -> None:
        self.sizes, self.rollout, self.dtype = dict(sizes), rollout, dtype
        self.adjoint: dict[str, Tensor] = {s: w.to(dtype) for s, w in readout.items()}
        self.batch = next(iter(readout.values())).shape[0]

    def step(self, step: FlowStep) -> None:
        """Run one step (the last not yet run) backwards."""
        adjoint, dtype = self.adjoint, self.dtype
        if isinstance(step, TokenMap):
            if step.into not in adjoint:
                return
            replaced = step.rows.to(dtype)
            moved = ((adjoint[step.into] * replaced).unsqueeze(1)
                     @ step.weights.to(dtype)).squeeze(1)
            if not step.additive:
                adjoint[step.into] = adjoint[step.into] * (1 - replaced)
            _accumulate(adjoint, step.origin, moved)
            return
        if self.rollout:
            for q, calls in _calls_per_query(step).items():
                if q in adjoint:
                    adjoint[q] = adjoint[q] / (1 + calls)
        updates: dict[str, Tensor] = {}
        for flow in _as_group(step):
            if flow.query not in adjoint:
                continue
            delta = (adjoint[flow.query].unsqueeze(1) @ flow.attention.to(dtype)).squeeze(1)
            _accumulate(updates, flow.key, delta)
        for q, keep in _residuals(step, dtype).items():
            if q in adjoint:
                adjoint[q] = adjoint[q] * keep
        for stream, delta in updates.items():
            _accumulate(adjoint, stream, delta)

    def result(self, reference: Tensor) -> dict[str, Tensor]:
        """``{stream: (B, n)}``, zeros for streams the readout never reached."""
        return {
            s: self.adjoint[s].contiguous() if s in self.adjoint else reference.new_zeros(
                self.batch, n, dtype=self.dtype)
            for s, n in self.sizes.items()
        }
