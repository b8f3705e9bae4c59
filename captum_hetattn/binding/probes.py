r"""Probes of which rows of one tensor each token of another feeds (the data flow's and the
layouts' gradient probes).

A walk of the autograd graph gives which calls a tensor depends on at no cost; which *row*
depends on which token needs gradients: with ``K = ⌈log₂ n⌉`` bit planes of the ``n`` rows, two
backward passes per plane (rows with the bit set, rows without), each from-token's code reads off
the one row it feeds; a token that feeds two rows shows up in both passes of some plane and the
map is then computed row by row. The passes only traverse the graph between the two tensors
(projectors, embeddings, norms), so they cost a small fraction of one model backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from captum_hetattn.binding.tokens import _restore_layout, _token_count, tokens_view


@dataclass
class TokenRows:
    r"""Which rows of a tensor each token of another feeds, per example.

    ``matrix`` ``(B, n_into, n_from)`` is 1 where into-row ``i`` depends on from-token ``j``.
    """

    matrix: Tensor

    def is_identity(self) -> bool:
        batch, n_into, n_from = self.matrix.shape
        if n_into != n_from:
            return False
        eye = torch.eye(n_into, dtype=torch.bool, device=self.matrix.device)
        return bool((self.matrix == eye).all())



#: every probe draws its weights from a generator seeded here, so that the same input gives the
#: same support on every call (a trace near round-off may vanish under one draw, not another)
_SEED = 20261123


#: a feeder whose dependence is below this fraction of its row's largest feeder's is within
#: float32 round-off of the row (≈ 8 ε): its junction share is scaled down by it
ROUND_OFF = 1e-6


#: the layouts' probes (forward-mode tangents) still draw from one running generator
_GENERATOR = torch.Generator().manual_seed(_SEED)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(_SEED)


def _draw(view: Tensor, generator: torch.Generator) -> Tensor:
    r"""Random weights shaped like ``view`` ``(B, n, d)``, the same for every example, so that an
    example's support does not depend on the batch it is in."""
    return torch.randn(view.shape[1:], generator=generator).to(view).expand_as(view)


@dataclass
class _Dependence:
    r"""Which into-row each origin token feeds: ``codes`` ``(B, n_origin)`` (``-1``: none), or,
    when some token feeds several rows, the full ``matrix`` ``(B, n_into, n_origin)`` (or
    ``None`` if it was not computed)."""

    n_into: int
    codes: Tensor | None
    full: Tensor | None = None
    #: how strongly each origin token feeds: ``(B, n_origin)`` with ``codes`` (its row's),
    #: ``(B, n_into, n_origin)`` with ``full``; ``None``: not measured (every feeder alike)
    strength: Tensor | None = None

    def matrix(self) -> Tensor | None:
        if self.full is not None or self.codes is None:
            return self.full
        batch, n_origin = self.codes.shape
        out = torch.zeros(batch, self.n_into, n_origin, dtype=torch.bool,
                          device=self.codes.device)
        b, j = (self.codes >= 0).nonzero(as_tuple=True)
        out[b, self.codes[b, j], j] = True
        return out

    def shares(self) -> Tensor | None:
        r"""``(B, n_into, n_origin)`` float: 1 where a token feeds a row, as :meth:`matrix`,
        but a feeder whose measured dependence is below :data:`ROUND_OFF` of the row's largest
        feeder's gets its strength relative to that (a trace at the level of round-off: it may
        vanish in another batch, which must then move the junction weights only as much)."""
        matrix = self.matrix()
        if matrix is None or self.strength is None:
            return None if matrix is None else matrix.float()
        strength = self.strength
        if self.full is None:  # each token's strength, in the one row it feeds
            strength = strength.unsqueeze(1) * matrix
        top = strength.amax(dim=-1, keepdim=True)
        ramp = (strength / (top * ROUND_OFF).clamp(min=torch.finfo(strength.dtype).tiny))
        return torch.where(matrix, ramp.clamp(max=1.0), 0.0)

    def feeds(self) -> Tensor:
        """``(B, n_into)``: rows fed by some origin token."""
        if self.full is not None:
            return self.full.any(dim=-1)
        assert self.codes is not None
        batch = self.codes.shape[0]
        # a scatter of True into a spare last column for the unfed (-1) elements: every write
        # is True, so their order does not matter (2-3x faster than nonzero + index_put)
        out = torch.zeros(batch, self.n_into + 1, dtype=torch.bool, device=self.codes.device)
        out.scatter_(1, self.codes.masked_fill(self.codes < 0, self.n_into), True)
        return out[:, :self.n_into].contiguous()


def _dependence(
    into: Tensor,
    into_dim: int,
    origins: Sequence[tuple[Tensor, int]],
    batch: int,
    exact: bool = True,
) -> list[_Dependence]:
    r"""Per origin, which rows of ``into`` its tokens feed (see the module docstring).

    ``origins`` are ``(tensor, token_dim)``; a token_dim of ``-1`` means "every element is a
    token" (model inputs without a token layout). With ``exact=False`` an origin whose tokens
    feed several rows gets ``codes=None`` instead of the row-by-row fallback.
    """
    view = tokens_view(into, into_dim)
    n_into = view.shape[1]

    generator = _generator()

    def pass_rows(rows: Tensor) -> list[Tensor]:
        return _pass_magnitudes(into, into_dim, origins, batch, rows, generator)

    # a vectorised backward (is_grads_batched) measured 1.7x slower on CPU: one pass per plane
    planes = max(1, math.ceil(math.log2(max(n_into, 2))))
    index = torch.arange(n_into, device=view.device)
    codes: list[Tensor] = []
    clash: list[Tensor] = []
    seen: list[Tensor] = []
    strength: list[Tensor] = []
    for plane in range(planes):
        bit = ((index >> plane) & 1).bool()
        on_size, off_size = pass_rows(bit.to(view.dtype)), pass_rows((~bit).to(view.dtype))
        on, off = [m != 0 for m in on_size], [m != 0 for m in off_size]
        if not codes:
            codes = [torch.zeros_like(o, dtype=torch.long) for o in on]
            clash = [torch.zeros_like(o) for o in on]
            seen = [torch.zeros_like(o) for o in on]
            strength = [torch.zeros_like(m) for m in on_size]
        for k in range(len(origins)):
            codes[k] |= on[k].long() << plane
            clash[k] |= on[k] & off[k]
            seen[k] |= on[k] | off[k]
            strength[k] = torch.maximum(strength[k], torch.maximum(on_size[k], off_size[k]))
    out = []
    for k, (tensor, dim) in enumerate(origins):
        if clash[k].any() or (codes[k][seen[k]] >= n_into).any():
            full, size = (_dependence_by_rows(into, into_dim, tensor, dim, batch) if exact
                          else (None, None))
            out.append(_Dependence(n_into, None, full, size))
        else:
            out.append(_Dependence(n_into, torch.where(seen[k], codes[k], -1), None,
                                   _measured(strength[k])))
    return out

def _pass_rows(into: Tensor, into_dim: int, origins: Sequence[tuple[Tensor, int]], batch: int,
               rows: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
    """``(B, n_origin)`` per origin: its tokens reached by one backward pass from ``rows``
    (``(n_into,)`` weights) of ``into``."""
    return [m != 0 for m in _pass_magnitudes(into, into_dim, origins, batch, rows, generator)]


def _pass_magnitudes(into: Tensor, into_dim: int, origins: Sequence[tuple[Tensor, int]],
                     batch: int, rows: Tensor,
                     generator: torch.Generator | None = None) -> list[Tensor]:
    """``(B, n_origin)`` per origin: the largest gradient magnitude of each of its tokens in one
    backward pass from ``rows`` (``(n_into,)`` weights) of ``into`` (0: not reached)."""
    view = tokens_view(into, into_dim)
    weights = _draw(view, generator or _generator()) * rows[None, :, None]
    grads = torch.autograd.grad(
        into, [t for t, _ in origins], _restore_layout(weights, into, into_dim),
        retain_graph=True, allow_unused=True,
    )
    return [_token_magnitude(g, t, d, batch) for g, (t, d) in zip(grads, origins, strict=True)]


def _measured(strength: Tensor) -> Tensor | None:
    """``strength`` if every value is finite (a NaN or inf gradient measures nothing)."""
    return strength if bool(torch.isfinite(strength).all()) else None


def _origin_tokens(tensor: Tensor, token_dim: int, batch: int) -> int:
    if token_dim < 0:
        return tensor.numel() // batch
    return _token_count(tensor, token_dim)


def _token_support(grad: Tensor | None, tensor: Tensor, token_dim: int, batch: int) -> Tensor:
    """``(B, n)``: tokens of ``tensor`` with a non-zero gradient."""
    return _token_magnitude(grad, tensor, token_dim, batch) != 0


def _token_magnitude(grad: Tensor | None, tensor: Tensor, token_dim: int,
                     batch: int) -> Tensor:
    """``(B, n)`` float: each token's largest gradient magnitude (0 where none reaches it; NaN
    stays NaN, so it counts as reached)."""
    n = _origin_tokens(tensor, token_dim, batch)
    if grad is None:
        return torch.zeros(batch, n, device=tensor.device)
    if token_dim < 0:
        return grad.reshape(batch, n).abs()
    return tokens_view(grad, token_dim).abs().amax(dim=-1)


def _dependence_by_rows(
    into: Tensor, into_dim: int, origin: Tensor, origin_dim: int, batch: int
) -> Tensor:
    """The exact row-by-row dependence (one backward per into-row): the fallback, and each
    feeder's strength (``None`` if not finite)."""
    view = tokens_view(into, into_dim)
    draws = _draw(view, _generator())
    rows = []
    for i in range(view.shape[1]):
        weights = torch.zeros_like(view)
        weights[:, i] = draws[:, i]
        (grad,) = torch.autograd.grad(
            into, [origin], _restore_layout(weights, into, into_dim), retain_graph=True,
            allow_unused=True,
        )
        rows.append(_token_magnitude(grad, origin, origin_dim, batch))
    size = torch.stack(rows, dim=1)
    return size != 0, _measured(size)
