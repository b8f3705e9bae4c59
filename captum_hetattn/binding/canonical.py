r"""The canonical hidden states of an attention call, and where each slot of its maps comes from.

A call's maps are laid out over the tokens of its *canonical* hidden states: the module's own
input when it is laid out as ``(batch, tokens, ...)``, else the input of the nearest enclosing
module that is (a Swin layer's), else its own states read as ``k`` tiles per example.
:func:`row_sources` finds the token every row of a tensor is computed from (forward-mode
products on the recorded graph, bit planes of the canonical rows); a :class:`TokenLayout`
says where each entry of the raw maps lands in the dense map
(see :mod:`~captum_hetattn.binding.layouts`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from captum_hetattn.binding.packed import owned_token_dim, packed_token_dim, witnessed
from captum_hetattn.binding.probe_budget import backward
from captum_hetattn.binding.tokens import CHANNELS_FIRST, _restore_layout, tokens_view
from captum_hetattn.capture import AttentionRecord, Context

#: codes of :func:`row_sources` for rows that are not one token
NO_SOURCE, SEVERAL_SOURCES = -1, -2

# one random stream for every probe of the layouts (the same draws in the same order as before)
_GENERATOR = torch.Generator().manual_seed(20261124)


@dataclass
class TokenLayout:
    r"""Where the entries of a call's raw maps go in its dense ``(B, H, n_q, n_k)`` map.

    ``raw_index[e]`` is an element of the raw maps (flattened and concatenated in part order)
    and ``dense_index[e]`` the element of the dense map it lands on. ``kind`` names the layout
    for messages (``"windowed"``, ``"packed"``, ``"local"``).
    """

    kind: str
    dense_shape: tuple[int, int, int, int]
    raw_index: Tensor
    dense_index: Tensor
    weight: Tensor | None = None
    #: ``dense_index`` with the head left out (``summed_index()``), kept once computed
    head_free_index: Tensor | None = None
    #: per raw entry, its query and key token and the entries on the diagonal (``tokens()``),
    #: kept once computed
    token_index: tuple[Tensor, Tensor, Tensor] | None = None
    #: the layout of the raw maps summed over their heads, where every head is laid out alike
    #: (``heads_alike()``; ``False``: they are not), kept once computed
    head_sums: HeadSums | bool | None = None

    def release(self) -> None:
        """Drop the index tensors (as large as the raw maps) once the call is folded for good."""
        empty = torch.zeros(0, dtype=torch.long)
        self.raw_index = self.dense_index = empty
        self.weight = self.head_free_index = self.token_index = self.head_sums = None

    def heads_alike(self, shapes: Sequence[tuple[int, ...]],
                    compute: bool = False) -> HeadSums | None:
        r"""For raw maps of ``shapes``: where each has a dimension of heads and every head's
        entries land alike (the same element of the maps summed over heads, the same pair of
        tokens, the same weight), their layout over the head-summed maps
        (:class:`HeadSums`: ``1/heads`` of the entries); ``None`` where they do not, or where
        it was not computed (``compute``: compute it now; the layout cache does, once per
        layout it keeps)."""
        if self.head_sums is None and compute:
            self.head_sums = _head_sums(self, [tuple(s) for s in shapes]) or False
        found = self.head_sums
        return found if isinstance(found, HeadSums) and found.shapes == [
            tuple(s) for s in shapes] else None

    def mean_over_heads(self, parts: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""The mean over heads of raw maps ``parts`` as entries: ``(values, rows, columns,
        diagonal)`` (see :class:`~captum_hetattn.rules.folded.FoldedMap`); from the maps summed
        over heads where the heads are laid out alike (``1/heads`` of the entries)."""
        heads = self.dense_shape[1]
        sums = self.heads_alike([tuple(p.shape) for p in parts])
        if sums is None:
            return (self.raw_values(parts).div_(heads), *self.tokens())
        return (sums.values(parts).div_(heads), sums.rows, sums.columns, sums.diagonal)

    def tokens(self) -> tuple[Tensor, Tensor, Tensor]:
        r"""Per raw entry, its query token (flat ``b·n_q + q``) and key token (``b·n_k + k``),
        and the raw entries (positions) whose query is their key (none for a map that is not
        square)."""
        if self.token_index is None:
            batch, heads, n_q, n_k = self.dense_shape
            example = self.dense_index.div(heads * n_q * n_k, rounding_mode="floor")
            query = self.dense_index.div(n_k, rounding_mode="floor") % n_q
            key = self.dense_index % n_k
            diagonal = ((query == key).nonzero().flatten() if n_q == n_k
                        else key.new_zeros(0))
            self.token_index = (example * n_q + query, example * n_k + key, diagonal)
        return self.token_index

    def raw_values(self, parts: Sequence[Tensor]) -> Tensor:
        """Per raw entry, its value in maps ``parts`` as folded (weighted)."""
        return self._values(torch.cat([p.reshape(-1) for p in parts]), None)

    def where_attention_goes(self, parts: Sequence[Tensor], mass: bool = True
                             ) -> tuple[Tensor | None, bool]:
        r"""Of maps ``parts`` of probabilities, what the dense map would say, without it: the
        ``(B, n_k)`` mass on each key (``fold(parts, sum_heads=True).sum(dim=(1, 2))``, the
        same sums in another order: only whether one is zero is read; ``None`` without
        ``mass``) and whether it is causal (``is_causal``: no entry is negative, so a dense
        entry is zero exactly when every raw entry on it is)."""
        batch, _, n_q, n_k = self.dense_shape
        flat = torch.cat([p.detach().reshape(-1) for p in parts])
        causal = n_q == n_k >= 2
        # the first entries settle most maps (a window sees later keys): the rest if need be
        for entries in (slice(0, 1 << 16), slice(1 << 16, None)):
            if not causal:
                break
            dense = self.dense_index[entries]
            upper = dense % n_k > dense.div(n_k, rounding_mode="floor") % n_q
            causal = not bool(self._values(flat, entries)[upper].ne(0).any())
        total = None
        sums = self.heads_alike([tuple(p.shape) for p in parts]) if mass else None
        if sums is not None:  # the same sums (of non-negative entries) in another order
            total = flat.new_zeros(batch * n_k).index_add_(
                0, sums.columns, sums.values([p.detach() for p in parts]))
        elif mass:
            total = flat.new_zeros(batch * n_k).index_add_(0, self.tokens()[1],
                                                           self._values(flat, None))
        return None if total is None else total.view(batch, n_k), causal

    def _values(self, flat: Tensor, entries: slice | None) -> Tensor:
        """The values of raw entries ``entries`` (all: ``None``) as folded (weighted)."""
        raw = self.raw_index if entries is None else self.raw_index[entries]
        values = flat[raw]
        if self.weight is not None:  # an aggregated key spread over its tokens
            weight = self.weight if entries is None else self.weight[entries]
            values = values * weight.to(values)
        return values

    def summed_index(self) -> Tensor:
        """The element of the head-summed ``(B, 1, n_q, n_k)`` map each raw entry lands on."""
        if self.head_free_index is None:
            batch, heads, n_q, n_k = self.dense_shape
            size = n_q * n_k
            self.head_free_index = (self.dense_index.div(heads * size, rounding_mode="floor")
                                    * size + self.dense_index % size)
        return self.head_free_index

    def fold(self, parts: Sequence[Tensor], sum_heads: bool = False) -> Tensor:
        r"""The dense map of raw maps ``parts`` (anything laid out like them: ``A``, ``G``,
        ``f(G) ⊙ A``); linear, so head aggregation and corrections commute with it. With
        ``sum_heads``, its sum over heads ``(B, 1, n_q, n_k)``, without the per-head map."""
        batch, heads, n_q, n_k = self.dense_shape
        sums = self.heads_alike([tuple(p.shape) for p in parts]) if sum_heads else None
        if sums is not None:
            out = parts[0].new_zeros(batch * n_q * n_k)
            head_free = sums.rows * n_k + sums.columns % n_k  # b·n_q·n_k + q·n_k + k
            return out.index_add_(0, head_free, sums.values(parts)).view(batch, 1, n_q, n_k)
        flat = torch.cat([p.reshape(-1) for p in parts])
        shape = (batch, 1, n_q, n_k) if sum_heads else self.dense_shape
        out = flat.new_zeros(math.prod(shape))
        out.index_add_(0, self.summed_index() if sum_heads else self.dense_index,
                       self._values(flat, None))
        return out.view(shape)


@dataclass
class HeadSums:
    r"""A layout over raw maps summed over their heads (:meth:`TokenLayout.heads_alike`):
    ``raw`` the element of the summed maps (flattened, concatenated) each entry reads,
    ``rows`` / ``columns`` its query / key token (flat over the examples), ``diagonal`` the
    entries whose query is their key, ``weight`` as the layout's; ``dims``: each map's
    dimension of heads."""

    shapes: list[tuple[int, ...]]
    dims: list[int]
    raw: Tensor
    rows: Tensor
    columns: Tensor
    diagonal: Tensor
    weight: Tensor | None

    def values(self, parts: Sequence[Tensor]) -> Tensor:
        """Per entry, its value in ``parts`` summed over heads (weighted)."""
        flat = torch.cat([p.sum(dim=d).reshape(-1) for p, d in zip(parts, self.dims,
                                                                    strict=True)])
        values = flat[self.raw]
        return values if self.weight is None else values * self.weight.to(values)


def _head_sums(layout: TokenLayout, shapes: list[tuple[int, ...]]) -> HeadSums | None:
    """:meth:`TokenLayout.heads_alike` computed. Each entry's head (from the dense map) must be
    its index along one dimension of its raw map, and the entries must come in runs of one
    head, each group of ``heads`` runs holding heads ``0, 1, …`` in turn, each run repeating
    the first run of its group entry by entry on the summed maps (the same element, the same
    tokens, the same weight): then head 0's runs are the layout over the sums."""
    batch, heads, n_q, n_k = layout.dense_shape
    raw, dense = layout.raw_index, layout.dense_index
    if heads < 2 or raw.numel() == 0:
        return None
    head = _floor_div(dense, n_q * n_k) % heads
    sizes = [math.prod(s) for s in shapes]
    part = (torch.searchsorted(torch.tensor(sizes).cumsum(0).to(raw.device), raw, right=True)
            if len(shapes) > 1 else torch.zeros_like(raw))
    change = torch.ones(raw.numel(), dtype=torch.bool, device=raw.device)
    change[1:] = part[1:] != part[:-1]
    bounds = [*change.nonzero().flatten().tolist(), raw.numel()]
    if len(bounds) - 1 > len(shapes) or int(part[-1]) >= len(shapes):
        return None  # a map's entries in more than one run (or past the maps)
    reduced = raw.new_empty(raw.shape)
    dims = [-1] * len(shapes)
    for begin, end in zip(bounds[:-1], bounds[1:], strict=False):  # the entries of one map
        k = int(part[begin])
        shape, start = shapes[k], sum(sizes[:k])
        local = raw[begin:end] - start
        dim = _head_dim(shape, heads, local, head[begin:end])
        if dim is None or dims[k] not in (-1, dim):
            return None
        inner = math.prod(shape[dim + 1:])
        reduced[begin:end] = (_floor_div(local, inner * heads) * inner + local % inner
                              + sum(sizes[:k]) // heads)
        dims[k] = dim
    for k, shape in enumerate(shapes):  # a map no entry reads: still summed over a head dim
        if dims[k] < 0:
            dims[k] = next((d for d, size in enumerate(shape) if size == heads), -1)
            if dims[k] < 0:
                return None
    partner = _partners(head, heads)
    rows, columns, _ = layout.tokens()
    if partner is None or not all(torch.equal(x, x[partner]) for x in (reduced, rows, columns)) \
            or (layout.weight is not None and not torch.equal(layout.weight,
                                                              layout.weight[partner])):
        return None
    first = (head == 0).nonzero().flatten()
    rows, columns = rows[first], columns[first]
    diagonal = ((rows % n_q == columns % n_k).nonzero().flatten() if n_q == n_k
                else rows.new_zeros(0))
    weight = None if layout.weight is None else layout.weight[first]
    return HeadSums(shapes, dims, reduced[first], rows, columns, diagonal, weight)


def _floor_div(index: Tensor, by: int) -> Tensor:
    """``index // by`` for non-negative indices below ``2**53`` (in float64: exact there, and
    many times faster than integer division)."""
    return index.double().div_(by).floor_().long()


def _partners(head: Tensor, heads: int) -> Tensor | None:
    """Per entry, the entry of head 0 it must repeat: runs of one head come in groups of
    ``heads`` runs of equal length holding heads ``0, 1, …``; ``None`` where they do not."""
    change = torch.ones(head.numel(), dtype=torch.bool, device=head.device)
    change[1:] = head[1:] != head[:-1]
    starts = change.nonzero().flatten()
    if starts.numel() % heads:
        return None
    lengths = torch.diff(starts, append=starts.new_tensor([head.numel()])).view(-1, heads)
    if not torch.equal(head[starts].view(-1, heads),
                       torch.arange(heads, device=head.device).expand(lengths.shape[0], -1)) \
            or not bool((lengths == lengths[:, :1]).all()):
        return None
    shift = (starts.view(-1, heads) - starts.view(-1, heads)[:, :1]).reshape(-1)
    return torch.arange(head.numel(), device=head.device) - shift.repeat_interleave(
        lengths.reshape(-1))


def _head_dim(shape: tuple[int, ...], heads: int, local: Tensor, head: Tensor) -> int | None:
    """The dimension of ``shape`` whose index is each entry's ``head`` (``local``: the entries'
    flat positions in a map of ``shape``), or ``None``."""
    for dim, size in enumerate(shape):
        if size != heads:
            continue
        inner = math.prod(shape[dim + 1:])
        if torch.equal(_floor_div(local, inner) % heads, head):
            return dim
    return None


# ------------------------------------------------------------------------------ probing
def row_sources(into: Tensor, origin: Tensor, origin_dim: int) -> Tensor:
    r"""For every row of ``into`` (all dimensions but the last), the row of ``origin``'s
    ``(B, n)`` tokens (flattened: ``b·n + t``) it is computed from.

    Returns:
        ``(rows,)`` long: the flat token index, :data:`NO_SOURCE` for a row that depends on no
        token (padding), :data:`SEVERAL_SOURCES` for one that depends on several.
    """
    return rows_sources([into], origin, origin_dim)[0]


def rows_sources(intos: Sequence[Tensor], origin: Tensor, origin_dim: int) -> list[Tensor]:
    r""":func:`row_sources` of several tensors at once (one set of products for all: the
    pull-back of all of them is one vector-Jacobian product)."""
    view = tokens_view(origin, origin_dim)
    batch, n, _ = view.shape
    rows = [math.prod(t.shape[:-1]) for t in intos]
    unknown = [torch.full((r,), NO_SOURCE, dtype=torch.long, device=origin.device) for r in rows]
    live = [i for i, t in enumerate(intos) if t.requires_grad]
    if not live or not origin.requires_grad:
        return unknown
    probes = [torch.zeros_like(intos[i], requires_grad=True) for i in live]
    (pullback,) = backward([intos[i] for i in live], origin, probes,
                                      create_graph=True, allow_unused=True)
    if pullback is None or not pullback.requires_grad:
        return unknown
    decoded = _decode_by_ratio(pullback, probes, view, origin, origin_dim,
                               [rows[i] for i in live])
    if decoded is not None:
        out = list(unknown)
        for k, i in enumerate(live):
            out[i] = decoded[k]
        return out
    index = torch.arange(batch * n, device=origin.device).view(batch, n)
    planes = max(1, math.ceil(math.log2(max(batch * n, 2))))
    code = [torch.zeros(rows[i], dtype=torch.long, device=origin.device) for i in live]
    reached = [torch.zeros(rows[i], dtype=torch.bool, device=origin.device) for i in live]
    several = [r.clone() for r in reached]
    for plane in range(planes):
        bit = ((index >> plane) & 1).bool()
        responses = []
        for side in (bit, ~bit):
            weights = torch.randn(view.shape, generator=_GENERATOR).to(view) * side[..., None]
            pushes = backward(pullback, probes,
                                         _restore_layout(weights, origin, origin_dim),
                                         retain_graph=True, allow_unused=True)
            responses.append([
                torch.zeros(rows[i], dtype=torch.bool) if push is None
                else (push.reshape(rows[i], -1) != 0).any(dim=-1)
                for i, push in zip(live, pushes, strict=True)
            ])
        for k, (on, off) in enumerate(zip(*responses, strict=True)):
            code[k] |= on.long() << plane
            reached[k] |= on | off
            several[k] |= on & off
    out = list(unknown)
    for k, i in enumerate(live):
        out[i] = torch.where(several[k], SEVERAL_SOURCES,
                             torch.where(reached[k], code[k], NO_SOURCE))
    return out


def _scales(tangent: Tensor, count: int, dim: int, base: int) -> list[Tensor]:
    """``tangent``, then ``tangent`` scaled along ``dim`` (of ``count`` entries) by each
    digit (base ``base``, plus one) of the entry's number."""
    shape = [1] * tangent.dim()
    shape[dim] = count
    number = torch.arange(count, device=tangent.device).view(shape)
    digits = max(1, math.ceil(math.log(max(count, 2), base)))
    return [tangent] + [tangent * ((number // base ** k) % base + 1).to(tangent)
                        for k in range(digits)]


def _read_digits(plain: Tensor, scaled: Sequence[Tensor | None], base: int) -> Tensor | None:
    r"""``(m,)`` numbers from responses ``plain`` ``(m, width)`` and ``scaled`` (one per digit,
    see :func:`_scales`): in every component of a response, the ratio of a scaled response to
    the plain one is the digit plus one when the response comes from one entry; ``-1`` where
    nothing responds, ``None`` where a ratio is not one integer across the components (several
    entries) or a response is too narrow to tell."""
    first = plain.double()
    if first.shape[1] < 4:
        return None
    big = first.abs() > 1e-3 * first.abs().amax(dim=1, keepdim=True)
    code = torch.zeros(first.shape[0], dtype=torch.long, device=first.device)
    for digit, response in enumerate(scaled):
        if response is None:
            return None
        ratio = response.reshape(first.shape).double() / torch.where(big, first, 1.0)
        value = torch.where(big, ratio, -1.0).amax(dim=1).round()
        if bool((big & ((ratio - value[:, None]).abs() > 0.05)).any()):
            return None
        code += (value.long() - 1).clamp(min=0) * base ** digit
    return torch.where(big.any(dim=1), code, NO_SOURCE)


def _decode_by_ratio(pullback: Tensor, probes: Sequence[Tensor], view: Tensor, origin: Tensor,
                     origin_dim: int, rows: Sequence[int], base: int = 64) -> list[Tensor] | None:
    r""":func:`rows_sources` in a few products where every row reads at most one token (a
    random tangent, then scaled by the digits of each token's number: :func:`_read_digits`);
    ``None`` (probe by bit planes) where that cannot tell."""
    batch, n, _ = view.shape
    tangent = torch.randn(view.shape, generator=_GENERATOR).to(view).reshape(batch * n, -1)
    pushes = [backward(pullback, probes,
                                  _restore_layout(t.view(view.shape), origin, origin_dim),
                                  retain_graph=True, allow_unused=True)
              for t in _scales(tangent, batch * n, 0, base)]
    out = []
    for k, size in enumerate(rows):
        if pushes[0][k] is None:
            out.append(torch.full((size,), NO_SOURCE, dtype=torch.long, device=origin.device))
            continue
        code = _read_digits(pushes[0][k].reshape(size, -1), [p[k] for p in pushes[1:]], base)
        if code is None:
            return None
        out.append(code.to(origin.device))
    return out


def token_rows(into: Tensor, into_dim: int, origin: Tensor, origin_dim: int,
               base: int = 64) -> Tensor | None:
    r"""``(B, n)``: the row of ``into`` (flattened over its ``(B', rows)`` tokens) each token of
    ``origin`` feeds, ``-1`` for none, by a few first-order passes (a random cotangent of
    ``into``'s rows, then scaled by the digits of each row's number: :func:`_read_digits`);
    ``None`` where a token feeds several rows or that cannot tell (probe otherwise)."""
    if not into.requires_grad or not origin.requires_grad:
        return None
    view = tokens_view(into, into_dim)
    rows = view.shape[0] * view.shape[1]
    cotangent = torch.randn(view.shape, generator=_GENERATOR).to(view).reshape(rows, -1)
    grads = []
    for weights in _scales(cotangent, rows, 0, base):
        (grad,) = backward(into, origin,
                                      _restore_layout(weights.view(view.shape), into, into_dim),
                                      retain_graph=True, allow_unused=True)
        if grad is None:
            return None
        grads.append(tokens_view(grad, origin_dim))
    batch, n = grads[0].shape[:2]
    code = _read_digits(grads[0].reshape(batch * n, -1),
                        [g.reshape(batch * n, -1) for g in grads[1:]], base)
    return None if code is None else code.view(batch, n)


# ------------------------------------------------------------------------------ canonical calls
@dataclass
class _Canonical:
    """Hidden states in ``(batch, tokens)`` order that a call's slots are taken from."""

    tensor: Tensor
    token_dim: int
    node: object
    output: Tensor | None
    output_node: object
    where: str

    @property
    def size(self) -> int:
        return tokens_view(self.tensor, self.token_dim).shape[1]


def _candidates(record: AttentionRecord, side: str) -> list[_Canonical]:
    """The call's own hidden states, then those of the enclosing modules, innermost first."""
    tensor = record.query_input if side == "query" else record.key_input
    dim = record.token_dim if side == "query" else record.key_token_dim
    out: list[_Canonical] = []
    if tensor is not None:
        out.append(_Canonical(tensor, dim, record.nodes.get(side), record.output,
                              record.nodes.get("output"), f"'{record.name}'"))
    if side == "query":
        out += [view for c in record.contexts if _usable(c) for view in _from_context(c)]
    return out


def _batched(record: AttentionRecord, side: str, batch: int) -> list[_Canonical]:
    """:func:`_candidates` that hold ``(batch, tokens)`` rows."""
    return [c for c in _candidates(record, side)
            if tokens_view(c.tensor, c.token_dim).shape[0] == batch]


def _tiled(
    record: AttentionRecord, side: str, batch: int, inputs: Sequence[object],
    confirm: bool = True,
) -> _Canonical | None:
    """The call's own hidden states read as ``k`` consecutive sequences per example (crops of
    one image, frames of one video), when nothing around the call holds them per example —
    if a batched float model input confirms it: example ``b``'s sequences depend on input
    ``b`` only (``confirm=False``: unconfirmed, for a cached layout that is checked itself).
    One packed sequence of rows is read by whose rows each example's score reads, when the
    scores are at hand (:func:`~captum_hetattn.binding.packed.owned_token_dim`)."""
    tensor = record.query_input if side == "query" else record.key_input
    dim = record.token_dim if side == "query" else record.key_token_dim
    owned = owned_token_dim(tensor, dim, batch)  # whose rows, read off the examples' scores
    if owned is not None:
        return _tiles_of(record, side, tensor, owned)
    tiles = packed_token_dim(tensor, dim, batch)
    if tiles is None or (confirm and not witnessed(tensor, tiles, batch, inputs, _GENERATOR)):
        return None
    return _tiles_of(record, side, tensor, tiles)


def _tiles_of(record: AttentionRecord, side: str, tensor: Tensor, tiles: int) -> _Canonical:
    output = record.output if side == "query" else None
    same = output is not None and output.shape == tensor.shape
    return _Canonical(tensor, tiles, record.nodes.get(side), output if same else None,
                      record.nodes.get("output") if same else None, f"'{record.name}' (tiles)")


def _with_tiles(
    record: AttentionRecord, side: str, batch: int, inputs: Sequence[object]
) -> Iterator[_Canonical]:
    """The candidates holding ``(batch, tokens)`` rows, then (probed only when reached) the
    call's own states read as tiles."""
    yield from _batched(record, side, batch)
    tiled = _tiled(record, side, batch, inputs)
    if tiled is not None:
        yield tiled


def _usable(context: Context) -> bool:
    return (isinstance(context.input, Tensor) and context.input.is_floating_point()
            and context.input.dim() >= 2)


def _from_context(context: Context) -> list[_Canonical]:
    """A layer's input as tokens: rows, or (4-D) a grid, channels last or first (tried in turn:
    the probes tell which one the call's slots come from)."""
    tensor = context.input
    dims = [0] if tensor.dim() == 2 else [1, CHANNELS_FIRST] if tensor.dim() >= 4 else [1]
    # the layer's output stands for the stream after the call only if laid out like its input
    same = context.output is not None and context.output.shape == tensor.shape
    output, node = (context.output, context.output_node) if same else (None, None)
    return [_Canonical(tensor, dim, context.input_node, output, node, f"'{context.name}'")
            for dim in dims]



def _call_of(
    group: list[AttentionRecord], layout: TokenLayout, query: _Canonical,
    key: _Canonical | None, role: str,
) -> AttentionRecord:
    """The call record of raw maps ``group`` folded by ``layout`` over the canonical hidden
    states ``query`` (and ``key`` for a cross call)."""
    first = group[0]
    call = AttentionRecord(
        name=first.name, call_index=first.call_index, role=role, attention=None,
        gradient=None, shape=layout.dense_shape, query_input=query.tensor,
        key_input=key.tensor if key is not None else None, output=query.output,
        token_dim=query.token_dim, key_token_dim=(key or query).token_dim,
        call_id=first.call_id, layout=layout, parts=list(group),
    )
    call.nodes = {"query": query.node, "key": key.node if key is not None else None,
                  "output": query.output_node}
    return call


def _describe(record: AttentionRecord) -> str:
    return f"attention module '{record.name}' [call {record.call_index}]"

