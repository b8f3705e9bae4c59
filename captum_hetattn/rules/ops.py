r"""Pure relevance math (torch only): head aggregation, the rules of one call, the noise link,
GAE's cross term, attention rollout's closed form, and the readout rows.

Notation (docs/architecture.md §1). Streams ``x, s``; the relevance block ``R[x, s]`` is a
``(B, n_x, n_s)`` tensor: how much source token ``j`` of stream ``s`` has flowed into token ``i``
of stream ``x``. The state starts at ``R[x, x] = I`` and ``R[x, s] = 0``; each attention call
updates it:

- head aggregation with gradient correction (paper eq. 1–3): ``Ā = mean_h(f(G) ⊙ A)``;
- self-attention (TypeA / TypeC, eq. 4–5): ``R[x, s] += Ā · R[x, s]`` for every source ``s``;
- cross-attention (TypeB, eq. 6–7): ``R[q, s] += Ā · R[k, s]`` for every source ``s``;
- noise link (eq. 8–10): a cross call reads ``(R[k, k] − I) / rowsum + I`` instead of ``R[k, k]``.

The increment of one call, ``Ā · R[k, s]`` (:func:`flow_increment`), and its adjoint on a readout
row, ``u_q · Ā`` (:func:`row_increment`), are defined once here and used by the full propagation
and the row adjoint (:mod:`captum_hetattn.rules.adjoint`); :func:`self_rule` and
:func:`cross_rule` are the one-call updates built from them.

Relevance is computed in float32 (float64 inputs stay float64), whatever the maps' dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from captum_hetattn.rules.folded import FoldedMap

Correction = Literal["pos", "full", "abs", "none"]
CORRECTIONS: tuple[str, ...] = ("pos", "full", "abs", "none")
NODE_TYPES: tuple[str, ...] = ("A", "B", "C")

Block = tuple[str, str]
Relevance = dict[Block, Tensor]


@dataclass(frozen=True)
class AttentionFlow:
    r"""One head-aggregated attention call: ``query`` stream reads from ``key`` stream.

    Args:
        query: stream the queries come from (the stream whose relevance is updated).
        key: stream the keys/values come from (== ``query`` for self-attention).
        attention: the aggregated map ``Ā`` of shape ``(B, n_query, n_key)`` (for the row
            adjoint alone, also a :class:`~captum_hetattn.rules.folded.FoldedMap`).
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

def flow_increment(attention: Tensor, key_relevance: Tensor) -> Tensor:
    r"""What one call adds to ``R[q, s]``: ``Ā · R[k, s]`` (eq. 4–7).

    Args:
        attention: ``Ā`` of shape ``(B, n_q, n_k)``.
        key_relevance: ``R[k, s]`` of shape ``(B, n_k, n_s)``.

    Returns:
        ``(B, n_q, n_s)``.
    """
    return attention @ key_relevance


def row_increment(row: Tensor, weights: Tensor) -> Tensor:
    r"""The adjoint of :func:`flow_increment` on readout rows: ``u · M`` per example.

    Args:
        row: ``u`` of shape ``(B, n_q)``.
        weights: ``M`` of shape ``(B, n_q, n_k)`` (a map ``Ā`` or a junction's token map).

    Returns:
        ``(B, n_k)``.
    """
    if isinstance(weights, FoldedMap):  # a map kept as its entries (a windowed call)
        return weights.row_times(row)
    return (row.unsqueeze(1) @ weights).squeeze(1)


def self_rule(relevance: Tensor, attention: Tensor) -> Tensor:
    r"""Rollout step of self-attention (eq. 4–5): ``R + Ā · R``.

    Args:
        relevance: ``R[x, s]`` of shape ``(B, n_x, n_s)``.
        attention: ``Ā`` of shape ``(B, n_x, n_x)``.
    """
    return cross_rule(relevance, attention, relevance)


def cross_rule(query_relevance: Tensor, attention: Tensor, key_relevance: Tensor) -> Tensor:
    r"""Cross-attention step (eq. 6–7): ``R[q, s] + Ā · R[k, s]``.

    Args:
        query_relevance: ``R[q, s]`` of shape ``(B, n_q, n_s)``.
        attention: ``Ā`` of shape ``(B, n_q, n_k)``.
        key_relevance: ``R[k, s]`` of shape ``(B, n_k, n_s)``.
    """
    return query_relevance + flow_increment(attention, key_relevance)



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


def as_group(step: FlowStep) -> tuple[AttentionFlow, ...]:
    """The attention calls of a step (none for a junction), checked."""
    if isinstance(step, TokenMap):
        return ()
    if isinstance(step, AttentionFlow):
        return (step,)
    group = tuple(step)
    for flow in group:
        if not isinstance(flow, AttentionFlow):
            raise TypeError(f"A step holds AttentionFlow objects, got {type(flow).__name__}")
    return group


def calls_per_query(step: FlowStep) -> dict[str, int]:
    """How many calls of a step update each query stream."""
    counts: dict[str, int] = {}
    for flow in as_group(step):
        counts[flow.query] = counts.get(flow.query, 0) + 1
    return counts


def accumulate(updates: dict, key: object, delta: Tensor) -> None:
    """Sum the increments a parallel group makes to one block (or one adjoint row)."""
    updates[key] = updates[key] + delta if key in updates else delta


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
            term = row_increment(weights.to(block.dtype), block)
            total = term if total is None else total + term
        assert total is not None
        out[s] = total.contiguous()
    return out


def own_entries(blocks: Relevance, sizes: Mapping[str, int], readout: Mapping[str, Tensor],
                steps: Sequence[FlowStep] = ()) -> dict[str, Tensor]:
    r"""The read tokens' own share of the readout rows: ``w_x[j] · R[x, x][j, j]`` for every
    read token ``j`` of every readout stream ``x`` (zeros elsewhere) — GAE's ``R_tt[0, 0] = 0``
    (Chefer et al., ICCV 2021), generalised to a readout vector over several tokens. A read
    token whose row a junction brought over from one token ``c`` of another stream ``o`` (a
    copy of a stream, an additive link of two towers, a copied ``[CLS]``: :func:`copied_tokens`)
    has its own entry there: ``w_x[j] · R[x, o][j, c]``.

    Args:
        blocks: every block, as :func:`~captum_hetattn.rules.adjoint.propagate` returns them.
        sizes: tokens per stream.
        readout: ``{stream x: w_x (B, n_x)}`` readout weights.
        steps: the steps the blocks were propagated through (for the junctions).

    Returns:
        ``{stream: (B, n_stream)}``, to subtract from :func:`read_rows`.
    """
    reference = next(iter(readout.values()))
    own: dict[str, Tensor] = {}
    for s, n in sizes.items():
        block = blocks.get((s, s))
        dtype = block.dtype if block is not None else relevance_dtype(reference.dtype)
        own[s] = reference.new_zeros(reference.shape[0], n, dtype=dtype)
    for x, weights in readout.items():
        for s, tokens in copied_tokens(steps, x, weights != 0).items():
            block = blocks.get((x, s))
            if block is not None:
                own[s] = own[s] + row_increment(weights.to(block.dtype), block * tokens)
    return {s: o.contiguous() for s, o in own.items()}


def copy_map(step: TokenMap) -> Tensor:
    r"""``(B, n_into, n_origin)``: which replaced row of a junction is a copy of which origin
    token. In a square map (a copy of a stream, an additive link of two towers) a row is the
    same token where its diagonal entry is non-zero; in any other map a row is a copy where it
    reads exactly one token (CANINE's first molecule is its ``[CLS]`` character)."""
    weights = step.weights * step.rows.unsqueeze(-1).to(step.weights.dtype)
    if weights.shape[-1] == weights.shape[-2]:
        return torch.diag_embed(weights.diagonal(dim1=-2, dim2=-1))
    single = (weights != 0).sum(dim=-1, keepdim=True) == 1
    return weights * single.to(weights.dtype)


def copied_tokens(steps: Sequence[FlowStep], stream: str, tokens: Tensor) -> dict[str, Tensor]:
    r"""Where ``tokens`` (``(B, n)`` booleans) of ``stream`` are themselves at the start: the
    junctions, walked backwards, that bring a token's row over from one token of another stream
    (:func:`copy_map`) move it there; one that replaces the row with other tokens ends it.
    ``{stream: (B, n, n_stream)}`` booleans: read token ``j`` is token ``c`` of that stream."""
    at = {stream: torch.diag_embed(tokens)}
    for step in reversed(steps):
        if not isinstance(step, TokenMap) or step.into not in at:
            continue
        copies = (copy_map(step) != 0).to(step.weights.dtype)
        moved = (at[step.into].to(copies.dtype) @ copies) != 0
        at[step.origin] = at[step.origin] | moved if step.origin in at else moved
        if not step.additive:
            at[step.into] = at[step.into] & ~step.rows.unsqueeze(1)
    return at


def one_token_read(readout: Mapping[str, Tensor]) -> Tensor:
    """``(B,)`` whether each example's readout weighs exactly one token (over every stream):
    then the readout row's own entry is ``w_r · R[r, r]`` itself."""
    return sum((w != 0).sum(dim=1) for w in readout.values()) == 1  # type: ignore[return-value]


def without_own(rows: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The context relevance: the readout rows with the read tokens' own share taken out."""
    return {s: (row - own[s].to(row.dtype)).contiguous() if s in own else row
            for s, row in rows.items()}
