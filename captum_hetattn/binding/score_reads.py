r"""Which projection row and head every score entry reads, in a few products: tangents scaled by
powers of two.

A score entry of a banded, blocked or chunked attention (Longformer's sliding chunks, LongT5's
``_concatenate_3_blocks``, BigBird's gathered blocks) is an ``einsum`` / ``matmul`` of one
query row and one key row that ``view`` / ``unfold`` / ``pad`` / ``cat`` moved into place: a
linear function of the projection that reads exactly one of its rows and one head's columns.
The forward-mode product of a tangent on the projection then responds at the entry with the
tangent's contraction against the other side, and scaling the tangent's row ``r`` by ``2ᵈ``
scales the entry's response by exactly ``2ᵈ``: a power of two passes every product and sum of
a linear computation without rounding. So one plain product and one scaled product per base-64
digit of the row number (and one for the head: its column block's number) read each entry's
row and head off the ratios' exponents — three or four products per projection, where bit
planes take two per bit of the row count (28 for LED-base sizes at 1024 tokens).

An entry whose ratio is not exactly a power of two reads several rows or head blocks (channel
attention, pooled queries), or its products left the range of exact scaling (overflow,
subnormal values): the caller then probes by bit planes, which tell those apart exactly. A
read never guesses: each ratio is an exact power of two or the read is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["aggregate_pairs", "aggregate_pieces", "read_by_scales", "steady_direction"]

#: digits of a row number read per product: the scales 2⁰ … 2⁶³ stay far from float32's range
BASE = 64


def steady_direction(push: Callable[[Tensor], Tensor], draw: Callable[[], Tensor],
                     tries: int = 4) -> tuple[Tensor, Tensor]:
    r"""A random tangent (from ``draw``) and its responses (``push``) that respond wherever a
    second, independent one does. A response is a sum of products (a score entry's: a query
    row's dot product with a key row), and at millions of entries a few sum to exactly zero
    by cancellation (about one in 3·10⁷ in float32): such an entry would read as reading
    nothing, and would be left out of the map. Two independent draws both cancelling on one
    entry is about 10⁻¹⁵; a draw whose zeros the other does not share is replaced."""
    direction = draw()
    plain = push(direction)
    for _ in range(tries):
        other = draw()
        again = push(other)
        union = (plain != 0) | (again != 0)
        if torch.equal(plain != 0, union):
            return direction, plain
        if torch.equal(again != 0, union):  # confirmed by the first draw's responses
            return other, again
        direction, plain = other, again
    return direction, plain  # (four draws that all cancel somewhere: not met)


def read_by_scales(
    push: Callable[[Tensor], Tensor], direction: Tensor, rows: Tensor, columns: Tensor,
    plain: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor] | None:
    r"""Each responding entry's row and column block, from scaled tangents.

    Args:
        push: the forward-mode product of a tangent shaped like ``direction`` (the
            projection's rows × columns): the responses at the score entries.
        direction: the random tangent (zero outside the columns probed).
        rows: ``(rows,)`` the number of each row (its index).
        columns: ``(columns,)`` the number of each column's block (the head), any value where
            ``direction`` is zero.
        plain: ``push(direction)`` if computed already (:func:`steady_direction`).

    Returns:
        ``(reached, row, block)``: which entries respond, and for them the row and block read
        (zero elsewhere); ``None`` where some entry's ratio is not one power of two (several
        rows or blocks, or values out of the range of exact scaling): probe otherwise.
    """
    plain = push(direction) if plain is None else plain
    reached = plain != 0
    base = torch.where(reached, plain, 1)  # full-size operations: masked indexing is slower
    row = _digits(push, direction, rows[:, None], base, reached)
    if row is None:
        return None
    block = _digits(push, direction, columns[None, :], base, reached)
    if block is None:
        return None
    return reached, row, block


def _digits(push: Callable[[Tensor], Tensor], direction: Tensor, numbers: Tensor, base: Tensor,
            reached: Tensor) -> Tensor | None:
    """The number each responding entry reads (zero elsewhere), one base-64 digit per scaled
    product."""
    count = int(numbers.max()) + 1
    code = torch.zeros(base.shape, dtype=torch.long, device=base.device)
    for digit in range(math.ceil(math.log(count, BASE)) if count > 1 else 0):
        scale = torch.exp2(((numbers // BASE ** digit) % BASE).double()).to(direction)
        out = push(direction * scale)
        mantissa, exponent = torch.frexp(out / base)
        # an exact 2ᵈ is 0.5 · 2^(d+1); anything else mixes rows (or was rounded); an entry
        # that did not respond must stay silent
        exact = (mantissa == 0.5) & (exponent >= 1) & (exponent <= BASE)
        if not bool(torch.where(reached, exact, out == 0).all()):
            return None
        code += (exponent.long() - 1).clamp_(min=0) * BASE ** digit
    return code.masked_fill_(~reached, 0)


def aggregate_pairs(fresh: Tensor, row: Tensor, members: dict[int, Tensor]
                    ) -> tuple[Tensor, Tensor, Tensor]:
    r"""The (entry, key token, share) pairs of the entries ``fresh`` whose key is a block
    aggregate: ``row`` (flat, per entry) the projection row it reads, ``members`` the tokens of
    each aggregate row. Ordered by aggregate row, then entry, then token (as one pass per
    aggregate row would give them), in a few full-size operations instead of one per row."""
    pieces = list(aggregate_pieces(fresh, row, members))
    if not pieces:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty.clone(), torch.zeros(0)
    return tuple(torch.cat(p) for p in zip(*pieces, strict=True))  # type: ignore[return-value]


#: pairs of one piece of :func:`aggregate_pieces`: 2 MB per int64 array (small pieces reuse the
#: same memory; pieces of 64 MB raised the first call's peak by 280 MB, LongT5-small tglobal)
PIECE = 1 << 18


def aggregate_pieces(fresh: Tensor, row: Tensor, members: dict[int, Tensor],
                     piece: int = PIECE) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    r""":func:`aggregate_pairs` in consecutive pieces of about ``piece`` pairs (whole entries
    each): the pairs are many (LongT5-small's transient-global keys at 1024 tokens: 8M per
    layer), and a piece is placed and let go before the next is built."""
    keys = torch.tensor(sorted(members), dtype=torch.long)
    tokens = [members[k] for k in keys.tolist()]
    counts = torch.tensor([t.numel() for t in tokens], dtype=torch.long)
    starts = torch.cumsum(counts, 0) - counts
    flat_tokens = torch.cat(tokens) if tokens else torch.zeros(0, dtype=torch.long)
    size = max(int(row.max()) if row.numel() else 0, int(keys.max()) if keys.numel() else 0)
    slot = torch.full((size + 1,), -1, dtype=torch.long)
    slot[keys] = torch.arange(keys.numel())
    which = torch.where(fresh & (row >= 0), slot[row.clamp(min=0)], -1)
    entries = (which >= 0).nonzero().flatten()
    entries = entries[torch.argsort(which[entries], stable=True)]
    agg = which[entries]
    del which
    ends = torch.cumsum(counts[agg], 0)  # pairs up to each entry's last
    total = int(ends[-1]) if ends.numel() else 0
    bounds = torch.searchsorted(ends, torch.arange(piece, max(total, piece), piece),
                                right=True).tolist()
    for lo, hi in zip([0, *bounds], [*bounds, entries.numel()], strict=True):
        if hi <= lo:
            continue
        part = agg[lo:hi]
        each = counts[part]
        first = torch.cumsum(each, 0) - each
        offsets = torch.arange(int(each.sum())) - first.repeat_interleave(each)
        pair_tokens = flat_tokens[starts[part].repeat_interleave(each) + offsets]
        shares = (1 / counts.double())[part].repeat_interleave(each).float()
        yield entries[lo:hi].repeat_interleave(each), pair_tokens, shares
