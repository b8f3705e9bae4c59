r"""Token layouts of calls whose maps were caught at the softmax (banded Longformer/LED maps with
global keys and rows, LongT5's blocks, BigBird's block-sparse pieces, ProphetNet's n-gram stream,
ViTDet's windows): they have no per-head states, so every *entry* of the softmax input is placed.

Tangents on each ``F.linear`` output the module computed before the softmax, scaled by powers
of two per row and per head's column block (:mod:`~captum_hetattn.binding.score_reads`: three or
four products; bit planes of the rows where a ratio is not exact), tell which projection row
and head each score reads — the query
side reads one row along the softmax dimension, the key side a row that changes along it — and
the projection rows' tokens come from :func:`~captum_hetattn.binding.canonical.row_sources`. A
fused ``q|k|v`` projection is read chunk by chunk; a key row computed from several tokens
(LongT5's transient-global block aggregates) spreads its entry over them in equal shares; a later
map of the call that recomputes rows (Longformer's global tokens) holds those rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from captum_hetattn.binding.canonical import (
    _GENERATOR,
    NO_SOURCE,
    SEVERAL_SOURCES,
    TokenLayout,
    _call_of,
    _Canonical,
    _describe,
    _with_tiles,
    row_sources,
)
from captum_hetattn.binding.padding import key_padding
from captum_hetattn.binding.probe_budget import backward, row_support, several_reason
from captum_hetattn.binding.score_reads import aggregate_pieces, read_by_scales, steady_direction
from captum_hetattn.binding.tokens import tokens_view
from captum_hetattn.capture import AttentionRecord


def _entry_rows(
    scores: Tensor, projection: Tensor, heads: int, part: tuple[int, int] = (0, 1)
) -> tuple[Tensor, Tensor]:
    r"""For every entry of ``scores``, the row of ``projection`` (all dimensions but the last)
    it is computed from and the head (the column block of ``projection``): tangents scaled by
    powers of two (:func:`~captum_hetattn.binding.score_reads.read_by_scales`), else bit
    planes of the row (column block) numbers as tangents of forward-mode products, as in
    :func:`row_sources` (zero or not is exact where ratios of values are not). ``part=(k, m)``
    probes only the k-th of m equal column chunks (the queries or keys of a fused projection).

    Returns:
        ``(row, head)`` long, shaped like ``scores``: :data:`NO_SOURCE` where the entry does not
        read ``projection``, :data:`SEVERAL_SOURCES` where it reads several of its rows.
    """
    none = torch.full(scores.shape, NO_SOURCE, dtype=torch.long, device=scores.device)
    probe = torch.zeros_like(scores, requires_grad=True)
    (pullback,) = backward(scores, projection, probe, create_graph=True,
                                      allow_unused=True)
    if pullback is None or not pullback.requires_grad:
        return none, none
    rows, width = math.prod(projection.shape[:-1]), projection.shape[-1]
    # `part` (k, of): only the k-th of `of` equal column chunks (a fused q|k|v projection)
    chunk = width // part[1]
    columns = torch.zeros(width, dtype=torch.bool)
    columns[part[0] * chunk:(part[0] + 1) * chunk] = True

    def draw() -> Tensor:
        direction = torch.randn(rows, width, generator=_GENERATOR).to(projection)
        return direction * columns.to(direction)

    def push(tangent: Tensor) -> Tensor:
        (out,) = backward(pullback, probe, tangent.reshape(projection.shape),
                          retain_graph=True)
        return out

    direction, plain = steady_direction(push, draw)
    width = chunk

    def responds(mask: Tensor) -> Tensor:
        return push(direction * mask.to(projection)) != 0

    block = max(1, width // heads)
    numbers = torch.zeros(projection.shape[-1], dtype=torch.long)
    numbers[columns] = torch.arange(width) // block
    read = read_by_scales(push, direction, torch.arange(rows), numbers, plain)
    if read is not None:  # a few scaled products; bit planes where they cannot tell
        reached, row, head = read
        return torch.where(reached, row, NO_SOURCE), torch.where(reached, head, NO_SOURCE)

    def decode(numbers: Tensor, count: int, as_mask) -> tuple[Tensor, Tensor, Tensor]:
        code = torch.zeros(scores.shape, dtype=torch.long, device=scores.device)
        reached = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        several = reached.clone()
        for plane in range(max(1, math.ceil(math.log2(max(count, 2))))):
            bit = ((numbers >> plane) & 1).bool()
            on, off = responds(as_mask(bit)), responds(as_mask(~bit))
            code |= on.long() << plane
            reached |= on | off
            several |= on & off
        return code, reached, several

    row, reached, several = decode(torch.arange(rows), rows, lambda bit: bit[:, None])
    head, _, _ = decode(numbers, heads, lambda bit: (bit & columns)[None, :])
    row = torch.where(several, SEVERAL_SOURCES, torch.where(reached, row, NO_SOURCE))
    return row, torch.where(reached, head, NO_SOURCE)


def _lay_out_scores(
    group: list[AttentionRecord], batch: int, inputs: Sequence[object] = ()
) -> AttentionRecord | str:
    r"""A call whose maps were caught at the softmax (banded, blocked, global rows): every entry
    of each map is placed by the projections its score reads (query side: the same projection
    row along the softmax dimension; key side: a row that changes along it). A key row computed
    from several tokens (LongT5's transient-global block aggregates) spreads its entry over
    those tokens in equal shares, as a junction spreads a merged token."""
    first = group[0]
    reason: str | None = None
    tried = 0
    reads: dict[int, _Reads] = {}  # which projection row each entry reads: the same for all
    for candidate in _with_tiles(first, "query", batch, inputs):
        # the first whose tokens the scores read one by one
        tried += 1
        call = _lay_out_over(group, batch, candidate, reads)
        if not isinstance(call, str):
            return call
        reason = reason or call
    if not tried:
        raise NotImplementedError(
            f"{_describe(first)}: no hidden states around it hold (batch={batch}, tokens) rows"
        )
    assert reason is not None
    return reason


def _lay_out_over(
    group: list[AttentionRecord], batch: int, canonical: _Canonical,
    reads: dict[int, _Reads] | None = None,
) -> AttentionRecord | str:
    """:func:`_lay_out_scores` over one choice of the canonical hidden states (``reads``: what
    the score entries read, kept across the choices)."""
    first = group[0]
    heads = _heads_of(group)
    n = canonical.size
    sources: dict[int, tuple[Tensor, dict[int, Tensor] | None]] = {}  # by id(projection)
    reads = {} if reads is None else reads
    placed = []
    for record in group:
        if id(record) not in reads:
            reads[id(record)] = _Reads(record.scores, record.linears, heads)
        entries = _place_entries(record, canonical, heads, sources, reads[id(record)])
        if isinstance(entries, str):
            return entries
        positions, flat, shares, queried = entries
        mass = record.attention.reshape(-1)
        share = torch.zeros_like(mass)
        for where, weight in zip(positions, shares, strict=True):
            share.index_add_(0, where, weight.to(mass) if weight is not None
                             else torch.ones(1).to(mass).expand(where.numel()))
        lost = mass * (1 - share)  # on a query token, off any key token
        padding = key_padding(record)  # keys on all-zero rows: checked once laid out
        if padding is not None:
            lost = lost * ~padding.expand(record.shape).reshape(-1).to(lost.device)
        lost = lost[queried].sum()
        if float(lost) > 1e-3 * float(mass[queried].sum()):
            raise NotImplementedError(
                f"{_describe(first)}: {float(lost):.3g} of the attention mass of its map of "
                f"shape {tuple(record.shape)} lies on entries that are not one (query token, "
                "key token) pair of its hidden states, so the map cannot be laid out exactly"
                + _foreign_keys(record, queried, share, canonical)
            )
        placed.append((positions, flat, shares))
    return _call_of(group, _later_rows(group, placed, batch, heads, n, canonical, first),
                    canonical, None, "self")


def _later_rows(group: list[AttentionRecord], placed: list, batch: int, heads: int, n: int,
                canonical: _Canonical, first: AttentionRecord) -> TokenLayout:
    r"""The layout of the placed pairs (per map: lists of raw positions, dense elements and
    shares, ``None`` for whole ones). A later map of the call recomputes rows an earlier one
    had (Longformer's global tokens: their output rows are overwritten), so the later one holds
    those rows. Pieces are copied only where some row is taken, and joined once."""
    raw, dense, weight = [], [], []
    taken = torch.zeros(batch * heads * n, dtype=torch.bool)  # a mask: no sort of the rows
    sizes = [math.prod(r.shape) for r in group]
    for k in range(len(group) - 1, -1, -1):
        offset = sum(sizes[:k])
        now = torch.zeros_like(taken)
        for positions, flat, share in zip(*placed[k], strict=True):
            rows = flat.div(n, rounding_mode="floor")
            keep = ~taken[rows]
            now[rows] = True
            if not bool(keep.all()):
                positions, flat = positions[keep], flat[keep]
                share = share[keep] if share is not None else None
            del rows, keep
            raw.append(positions + offset if offset else positions)
            dense.append(flat)
            weight.append(share)
        taken |= now
    weights = None if all(w is None for w in weight) else torch.cat(  # None: all whole
        [w if w is not None else torch.ones(p.numel()) for w, p in zip(weight, raw, strict=True)])
    weight.clear()
    raw_index = _joined(raw)
    raw.clear()  # each piece let go once joined
    dense_index = _joined(dense)
    dense.clear()
    kind = ("tiled" if canonical.where.endswith("(tiles)") else
            "local" if canonical.where == f"'{first.name}'" else "windowed")
    return TokenLayout(kind, (batch, heads, n, n), raw_index, dense_index, weights)


def _joined(pieces: list[Tensor]) -> Tensor:
    """``torch.cat`` that does not copy a single piece."""
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _dense_of(q_token: Tensor, k_token: Tensor, head: Tensor, heads: int, n: int,
              name: str) -> Tensor:
    r"""The element of the dense ``(B, H, n, n)`` map of each placed pair (flat tokens
    ``b·n + t``); a pair of tokens of different examples is an error."""
    example = q_token.div(n, rounding_mode="floor")
    if not torch.equal(example, k_token.div(n, rounding_mode="floor")):
        raise NotImplementedError(f"{name}: a map pairs tokens of different examples")
    flat = example.mul_(heads).add_(head).mul_(n).add_(q_token % n).mul_(n)
    return flat.add_(k_token % n)


def _place_entries(
    record: AttentionRecord, canonical: _Canonical, heads: int,
    sources: dict[int, tuple[Tensor, dict[int, Tensor] | None]], reads: _Reads,
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None], Tensor] | str:
    r"""The placed pairs of one raw map, in pieces: each piece's raw entries, the elements of
    the dense map they land on and their shares (``None``: whole; an entry whose key is an
    aggregate of several tokens gives one pair per token, ``1/|tokens|`` each), and which
    entries have a query token."""
    found = _entry_tokens(record, canonical, heads, sources, reads)
    if isinstance(found, str):
        return found
    q_token, k_token, head, aggregated = found
    name, n = _describe(record), canonical.size
    placed = (q_token >= 0) & (head >= 0)
    direct = (placed & (k_token >= 0)).nonzero().flatten()
    positions, shares = [direct], [None]
    dense = [_dense_of(q_token[direct], k_token[direct], head[direct], heads, n, name)]
    for fresh, row, members in aggregated:  # in bounded pieces: pairs are many
        for rows, key_tokens, share in aggregate_pieces(fresh & placed, row, members):
            positions.append(rows)
            dense.append(_dense_of(q_token[rows], key_tokens, head[rows], heads, n, name))
            shares.append(share)
    return positions, dense, shares, q_token >= 0


def _entry_tokens(
    record: AttentionRecord, canonical: _Canonical, heads: int,
    sources: dict[int, tuple[Tensor, dict[int, Tensor] | None]], reads: _Reads,
) -> tuple[Tensor, Tensor, Tensor, list[tuple[Tensor, Tensor, dict[int, Tensor]]]] | str:
    r"""Per entry of one raw map, its query token, key token (:data:`NO_SOURCE` for none, and
    for a key that aggregates several tokens) and head, and the entries whose key is such an
    aggregate (``(entries, projection row, the tokens of each aggregate row)``)."""
    size = record.scores.numel()
    q_token = torch.full((size,), NO_SOURCE, dtype=torch.long)
    k_token = q_token.clone()
    head = q_token.clone()
    aggregated: list[tuple[Tensor, Tensor, dict[int, Tensor]]] = []
    for projection, row, row_head in reads:
        if bool((row == SEVERAL_SOURCES).any()):
            return ("each of its entries reads several tokens of one projection: the softmax "
                    "is not over tokens (channel attention), or its queries are pooled from "
                    "several tokens each (Hiera's and MViT's query pooling: the queries are "
                    "new tokens, which the engine does not lay out yet)")
        read = row >= 0
        if not bool(read.any()):
            continue
        # query side: one projection row along the softmax dimension (unread entries aside)
        low = torch.where(read, row, row.max() + 1).amin(dim=-1)
        high = torch.where(read, row, -1).amax(dim=-1)
        query_side = bool(((low == high) | ~read.any(dim=-1)).all())
        if query_side and id(projection) not in sources:
            # one query row that reads several tokens rules these hidden states out: one
            # pass, where decoding every row's token takes forty
            several = several_query_tokens(projection, row[read], canonical, record.name)
            if several is not None:
                return several
        if id(projection) not in sources:
            sources[id(projection)] = _projection_tokens(projection, canonical)
        tokens, _ = sources[id(projection)]
        if not bool((tokens != NO_SOURCE).any()):
            continue
        read, row, row_head = read.flatten(), row.flatten(), row_head.flatten()
        token = torch.where(read, tokens[row.clamp(min=0)], NO_SOURCE)
        if query_side:
            if bool((token == SEVERAL_SOURCES).any()):
                return "its query slots are each computed from several tokens (not tokens)"
            q_token = torch.where(read & (q_token == NO_SOURCE), token, q_token)
        else:
            fresh = read & (k_token == NO_SOURCE)
            k_token = torch.where(fresh, token, k_token)
            members = _members_of(projection, canonical, sources)
            if members:  # block aggregates: their tokens
                aggregated.append((fresh, row, members))
        head = torch.where(read & (head == NO_SOURCE), row_head, head)
    if not bool((k_token != NO_SOURCE).any()):
        return "no projection computed before its softmax gives its key slots"
    return q_token, k_token, head, aggregated


class _Reads:
    """:func:`_projection_reads` of one raw map, probed once and lazily (a candidate refused at
    its first projection leaves the others unprobed), then replayed for every candidate: which
    projection row each entry reads does not depend on the hidden states it is laid out over."""

    def __init__(self, scores: Tensor, projections: Sequence[Tensor], heads: int) -> None:
        self._source = _projection_reads(scores, projections, heads)
        self._seen: list[tuple[Tensor, Tensor, Tensor]] = []

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        index = 0
        while True:
            if index == len(self._seen):
                found = next(self._source, None)
                if found is None:
                    return
                self._seen.append(found)
            yield self._seen[index]
            index += 1


def several_query_tokens(projection: Tensor, rows: Tensor, canonical: _Canonical,
                         name: str) -> str | None:
    r"""Why ``canonical`` cannot hold a call's query slots when one of the projection ``rows``
    its queries read (at a half, a quarter, three quarters of them: a ``[CLS]`` row or a
    border may read one token where the others read several) is computed from several of its
    tokens (one backward pass each,
    :func:`~captum_hetattn.binding.probe_budget.row_support`), else ``None`` (probe them all)."""
    present = torch.zeros(int(rows.max()) + 1 if rows.numel() else 0, dtype=torch.bool)
    present[rows] = True  # the rows read, in order: as `unique`, without its sort
    picked = present.nonzero().flatten()
    for at in (picked.numel() // 2, picked.numel() // 4, 3 * picked.numel() // 4):
        support = row_support(projection, int(picked[at]), canonical.tensor, canonical.token_dim)
        if support is None:
            return None
        reason = several_reason("query", support, canonical, name)
        if reason is not None:
            return reason
    return None


def _projection_reads(scores: Tensor, projections: Sequence[Tensor], heads: int):
    """Per projection (per q / k / v chunk of a fused one), which row and head each score
    entry reads (see :func:`_entry_rows`)."""
    for projection in projections:
        row, head = _entry_rows(scores, projection, heads)  # values: nothing read, cheap
        if not bool((row == SEVERAL_SOURCES).any()):
            yield projection, row, head
            continue
        for chunks in (3, 2):  # one output computing queries and keys: read chunk by chunk
            if projection.shape[-1] % chunks:
                continue
            parts = [_entry_rows(scores, projection, heads, (k, chunks)) for k in range(chunks)]
            if not any(bool((r == SEVERAL_SOURCES).any()) for r, _ in parts):
                for r, h in parts:
                    yield projection, r, h
                break
        else:
            yield projection, row, head  # several rows for real: not over tokens


def _projection_tokens(
    projection: Tensor, canonical: _Canonical
) -> tuple[Tensor, dict[int, Tensor] | None]:
    r"""The token of each row of a projection; the tokens of its rows computed from several
    tokens come later, from :func:`_members_of`, only if it gives key slots."""
    return row_sources(projection, canonical.tensor, canonical.token_dim), None


def _members_of(projection: Tensor, canonical: _Canonical,
                sources: dict[int, tuple[Tensor, dict[int, Tensor] | None]]
                ) -> dict[int, Tensor]:
    r"""For each row of a key projection computed from several tokens (a block aggregate)
    those tokens, one reverse pass per row, cached in ``sources``. A query projection never
    needs them (its mixed rows are refused), which spares CvT's and MobileViT's thousands of
    passes before their refusal."""
    tokens, members = sources[id(projection)]
    if members is None:
        members = {row: _row_members(projection, row, canonical).nonzero().flatten()
                   for row in (tokens == SEVERAL_SOURCES).nonzero().flatten().tolist()}
        sources[id(projection)] = (tokens, members)
    return members


def _row_members(projection: Tensor, row: int, canonical: _Canonical) -> Tensor:
    """``(B·n,)``: the tokens one projection row depends on (one reverse pass)."""
    weights = torch.zeros_like(projection).reshape(-1, projection.shape[-1])
    weights[row] = torch.randn(projection.shape[-1], generator=_GENERATOR).to(weights)
    (grad,) = backward(projection, canonical.tensor, weights.view_as(projection),
                                  retain_graph=True, allow_unused=True)
    if grad is None:
        return torch.zeros(tokens_view(canonical.tensor, canonical.token_dim).shape[:2].numel())
    return (tokens_view(grad, canonical.token_dim) != 0).any(dim=-1).flatten().float()


def _heads_of(group: list[AttentionRecord]) -> int:
    """The head count of a call's module (a banded or blocked map does not say where heads are)."""
    return next((r.heads for r in group if r.heads), group[0].shape[1])


def _foreign_keys(record: AttentionRecord, queried: Tensor, share: Tensor,
                  canonical: _Canonical) -> str:
    r"""What the lost mass is on, when it is on whole key columns that read no token of the
    canonical hidden states (keys computed from another input of the module: Pegasus-X's
    global tokens, ``keys = [global tokens; block]``, a second stream)."""
    keyless = (queried & (share == 0)).reshape(-1, record.shape[-1])
    rows = queried.reshape(-1, record.shape[-1]).any(dim=1)
    columns = keyless[rows].all(dim=0) if bool(rows.any()) else keyless[rows].any(dim=0)
    if not bool(columns.any()):
        return ""
    found = columns.nonzero().flatten().tolist()
    found = found if len(found) <= 8 else f"{found[0]}-{found[-1]} ({len(found)} slots)"
    return (f": its key slots {found} (of {record.shape[-1]}) read no token of "
            f"{canonical.where} in any row: keys computed from another input of the module "
            "(a second stream, such as Pegasus-X's global tokens: keys = [global tokens; "
            "block]); a call whose keys span two streams is not supported")
