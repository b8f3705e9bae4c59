r"""What a flash call's mask and output gradient say about its backward's blocks of query
rows (:mod:`captum_hetattn.capture.backends.flash`): the blocks, the kernel's causal mode, the
keys each block's rows see, the rows hidden from every key, the blocks no gradient reaches."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor


def causal_kernel(mask: Tensor | None, n_query: int, n_key: int) -> tuple[bool, bool]:
    r"""How the kernel may take ``mask``: ``(causal, mask needed)``. Where the mask hides
    every key after each query (a causal mask over a square map) and every query sees some
    key, the kernel runs causal — it then skips the blocks of keys after each query's block,
    as the plain model's ``is_causal`` call does, instead of adding the mask over the whole
    square (half the work) — and without the mask where it hides nothing else. The same
    output and log-sum-exp to the bit: each skipped entry contributed an exact 0 (``exp`` of
    a hidden score, the row's maximum being over a key it sees). Read once per mask tensor
    (the layers of a forward share it), in blocks of rows (small temporaries)."""
    if (mask is None or n_query != n_key or n_query < 2 or mask.dim() < 2
            or tuple(mask.shape[-2:]) != (n_query, n_key) or not mask.is_floating_point()):
        return False, mask is not None
    global _CAUSAL_READ
    read = _CAUSAL_READ
    stamp = (mask.data_ptr(), mask._version, tuple(mask.shape), tuple(mask.stride()))
    if read is not None and read[0]() is mask and read[1] == stamp:
        return read[2]
    level = torch.finfo(mask.dtype).min / 2
    step = max(1, 2**22 // max(mask.numel() // n_query, 1))
    causal, needed = True, False
    for start in range(0, n_query, step):
        block = mask[..., start:start + step, :]
        hidden = block <= level  # (NaN: not hidden)
        rows = hidden.numel() // n_key
        # every key after each row hidden, no row hidden from every key
        if (int(hidden.triu(start + 1).sum()) != _upper_count(start, block.shape[-2], n_key)
                * (rows // block.shape[-2]) or bool(hidden.all(-1).any())):
            causal, needed = False, True
            break
        needed = needed or bool(block.tril(start).any())  # it hides something else too
    _CAUSAL_READ = (weakref.ref(mask), stamp, (causal, needed))
    return causal, needed


def _upper_count(start: int, rows: int, n_key: int) -> int:
    """Entries after the diagonal in rows ``start .. start + rows`` of a square map."""
    return rows * (n_key - 1) - (start * rows + rows * (rows - 1) // 2)


#: the last mask :func:`causal_kernel` read: ``(tensor, stamp, verdict)``
_CAUSAL_READ: tuple[Any, tuple, tuple[bool, bool]] | None = None


#: the fewest query rows of a block: a product of one or two rows may round differently from
#: the same rows of the whole product (a matrix-vector kernel), from three on it was the same
#: to the bit (tests/test_perf_flash.py)
MIN_ROWS = 16


def _row_blocks(n_query: int, rows: int | None) -> list[slice]:
    """``rows`` query rows at a time (all at once when ``None``), at least :data:`MIN_ROWS`:
    a shorter last block joins the one before."""
    block = n_query if rows is None else max(MIN_ROWS, int(rows))
    starts = list(range(0, n_query, block)) or [0]
    if len(starts) > 1 and n_query - starts[-1] < MIN_ROWS:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, [*starts[1:], n_query],
                                                    strict=True)]


def _mask_rows(mask: Tensor | None, rows: slice, width: int | None = None) -> Tensor | None:
    """The query rows ``rows`` (and the leading ``width`` keys) of a mask laid out over the
    scores (one broadcast over the rows or keys stays whole)."""
    if mask is None or mask.dim() < 2:
        return mask
    if mask.shape[-2] != 1:
        mask = mask[..., rows, :]
    if width is not None and mask.shape[-1] > width:
        mask = mask[..., :width]
    return mask


def _dead_blocks(ctx: Any, grad_output: Tensor, blocks: list[slice]) -> list[bool]:
    r"""Per block of query rows, whether no output gradient reaches any of its rows (in any
    example or head): its ``G = dO · Vᵀ`` is zero, and so is its part of a map corrected by
    ``G`` — the last layer under a one-token readout (``[CLS]``, the last token) has one live
    block. Only where a sink may take such blocks unbuilt (``ctx.dead``) and the states and
    mask are finite (``0 · A`` is 0 only for a finite ``A``)."""
    if len(blocks) < 2 or ctx.dead is None:
        return [False] * len(blocks)
    live = grad_output.ne(0).any(-1).flatten(0, -2).any(0)  # per query row (NaN: live)
    dead = [not bool(live[rows].any()) for rows in blocks]
    if not any(dead):
        return dead
    query, key, value, mask = ctx.saved_tensors[:4]
    finite = all(bool(torch.isfinite(t).all()) for t in (query, key, value)) and (
        mask is None or not bool((mask.isnan() | (mask == float("inf"))).any()))
    return dead if finite else [False] * len(blocks)


def _read_mask(mask: Tensor | None, blocks: list[slice], n_key: int, narrow: bool
               ) -> tuple[list[int] | None, list[bool]]:
    """What a call's mask says about its blocks of query rows, read once per call (per chunk
    of heads only for a mask per head): their key extents (with ``narrow``,
    :func:`key_extents`) and whether each holds a row the mask hides from every key (only
    those are looked at again: :func:`huge_rows`, :func:`clear_empty_rows`)."""
    extents = key_extents(mask, blocks, n_key) if narrow else None
    if mask is None or mask.dim() < 2 or not mask.is_floating_point():
        return extents, [mask is not None] * len(blocks)
    hidden = (mask <= torch.finfo(mask.dtype).min / 2).all(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1]).any(0)  # per query row (or one broadcast)
    if hidden.numel() == 1:
        return extents, [bool(hidden)] * len(blocks)
    return extents, [bool(hidden[rows].any()) for rows in blocks]


def key_extents(mask: Tensor | None, blocks: list[slice], n_key: int) -> list[int]:
    r"""Per block of query rows, how many leading keys some row of the block sees: past it,
    ``mask`` hides every key from every row (a causal mask: the keys after the block's last
    row), so the block's map is zero there. ``n_key`` for a block with a row that sees no key
    (its row is the softmax of the mask itself, or zero: built whole as before) and without a
    mask over the rows and keys."""
    if mask is None or mask.dim() < 2 or mask.shape[-2] == 1 or mask.shape[-1] != n_key:
        return [n_key] * len(blocks)
    seen = mask > torch.finfo(mask.dtype).min / 2
    seen = seen.reshape(-1, *seen.shape[-2:]).any(0)  # (n_query, n_key): any example or head
    # one past the last key each row sees (0 for a row that sees none)
    last = torch.where(seen.any(-1), n_key - seen.flip(-1).int().argmax(-1), 0)
    extents = []
    for rows in blocks:
        block = last[rows]
        extents.append(n_key if bool((block == 0).any()) else int(block.max()))
    return extents
