r"""A head-aggregated map ``Ā`` kept as its entries, not as a dense ``(B, n_q, n_k)`` tensor.

A windowed call (Swin) holds ``windows · w² · w²`` entries of a map over ``(windows · w²)²``
token pairs: its dense map is mostly zeros (Swin-T's first stage: 3136² floats, 39 MB, for 2% of
them set). Where the row adjoint uses such a map once and drops it (the streaming adjoint), it
needs two things of it — ``u · Ā`` (:func:`~captum_hetattn.rules.ops.row_increment`) and its
diagonal (the staying share) — which the entries give directly: the same sums, in another
order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FoldedMap:
    r"""``Ā`` of shape ``shape`` ``(B, n_q, n_k)`` as ``Ā[rows[e] // n_q, rows[e] % n_q,
    columns[e] % n_k] += values[e]``: ``rows`` are flat ``b·n_q + q``, ``columns`` flat
    ``b·n_k + k`` (the same example); ``diagonal_entries``: the entries with ``q == k``.
    Entries may repeat a pair (they add up)."""

    shape: tuple[int, int, int]
    values: Tensor
    rows: Tensor
    columns: Tensor
    diagonal_entries: Tensor

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def to(self, dtype: torch.dtype) -> FoldedMap:
        """The map with values of ``dtype``."""
        if dtype == self.values.dtype:
            return self
        return FoldedMap(self.shape, self.values.to(dtype), self.rows, self.columns,
                         self.diagonal_entries)

    def row_times(self, row: Tensor) -> Tensor:
        r"""``u · Ā`` per example: ``row`` ``(B, n_q)`` → ``(B, n_k)``."""
        batch, _, n_k = self.shape
        values = self.values.to(row.dtype) if row.dtype != self.values.dtype else self.values
        moved = row.reshape(-1)[self.rows] * values
        out = moved.new_zeros(batch * n_k).index_add_(0, self.columns, moved)
        return out.view(batch, n_k)

    def diagonal(self) -> Tensor:
        r"""``Ā``'s diagonal ``(B, n)`` (a square map)."""
        batch, n_q, n_k = self.shape
        if n_q != n_k:
            raise ValueError(f"the diagonal of a {self.shape} map: it is not square")
        out = self.values.new_zeros(batch * n_q)
        chosen = self.diagonal_entries
        return out.index_add_(0, self.rows[chosen], self.values[chosen]).view(batch, n_q)

    def dense(self) -> Tensor:
        """The dense ``(B, n_q, n_k)`` map."""
        batch, n_q, n_k = self.shape
        example = self.rows.div(n_q, rounding_mode="floor")
        flat = self.rows * n_k + self.columns - example * n_k
        out = self.values.new_zeros(batch * n_q * n_k)
        return out.index_add_(0, flat, self.values).view(self.shape)


__all__ = ["FoldedMap"]
