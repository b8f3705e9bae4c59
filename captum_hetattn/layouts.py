r"""Token layouts: attention calls whose maps are not one dense ``(B, H, n_q, n_k)`` map over
their hidden states, folded into one that is.

Windowed attention (Swin) computes ``(B·windows, H, w², w²)`` maps over a shifted,
window-partitioned copy of its layer's tokens; a packed vision tower (Qwen2-VL) computes one map
per image over slices of one packed sequence. Each such call gets a :class:`TokenLayout` that
says where every entry of its raw maps sits in the dense map over the tokens of its *canonical*
hidden states — the module's own input when it is laid out as ``(batch, tokens, ...)``, else the
input of the nearest enclosing module that is (a Swin layer's) — and the call then propagates
exactly like a dense map of the same call would: entries of the dense map that no raw entry
holds are zero (keys in another window), raw entries of padding slots are dropped (they hold no
token; their mass went to padding, as with masked keys).

**Where each slot comes from** is read from the autograd graph, not from the model's code: the
per-head query and key states that the attention function was handed are probed against the
canonical tokens with forward-mode derivatives (a Jacobian-vector product computed as the
derivative of a vector-Jacobian product, so it runs on the recorded graph): with
``K = ⌈log₂ n⌉`` bit planes of the canonical rows, two products per plane tell for each state row
the one token it is computed from (or none: padding, or several: a slot that is not one token —
channel attention, pooled keys).

Maps caught at the softmax of hand-written modules (banded Longformer/LED maps with global keys
and rows, LongT5's blocks, BigBird's block-sparse pieces, ProphetNet's n-gram stream, ViTDet's
windows) have no per-head states; there every *entry* of the softmax input is placed: bit planes
of the rows (and of the head's column block) of each ``F.linear`` output the module computed
before the softmax, as tangents, tell which projection row each score reads — the query side
reads one row along the softmax dimension, the key side a row that changes along it — and the
projection rows' tokens come from :func:`row_sources`. A fused ``q|k|v`` projection is read
chunk by chunk; a key row computed from several tokens (LongT5's transient-global block
aggregates) spreads its entry over them in equal shares; a later map of the call that recomputes
rows (Longformer's global tokens) holds those rows. Corrections are applied to raw entries before
folding (``rules.corrected``), which keeps them exact where entries overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from captum_hetattn.capture import AttentionRecord, AttentionRecorder, Context
from captum_hetattn.dataflow import CHANNELS_FIRST, TILES, _dependence, _restore_layout, tokens_view

__all__ = [
    "NO_SOURCE", "SEVERAL_SOURCES", "TokenLayout", "canonicalise", "row_sources", "rows_sources",
]

#: codes of :func:`row_sources` for rows that are not one token
NO_SOURCE, SEVERAL_SOURCES = -1, -2

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

    def release(self) -> None:
        """Drop the index tensors (as large as the raw maps) once the call is folded for good."""
        empty = torch.zeros(0, dtype=torch.long)
        self.raw_index = self.dense_index = empty
        self.weight = None

    def fold(self, parts: Sequence[Tensor]) -> Tensor:
        r"""The dense map of raw maps ``parts`` (anything laid out like them: ``A``, ``G``,
        ``f(G) ⊙ A``); linear, so head aggregation and corrections commute with it."""
        flat = torch.cat([p.reshape(-1) for p in parts])
        out = flat.new_zeros(math.prod(self.dense_shape))
        values = flat[self.raw_index]
        if self.weight is not None:  # an aggregated key spread over its tokens
            values = values * self.weight.to(values)
        out.index_add_(0, self.dense_index, values)
        return out.view(self.dense_shape)


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
    (pullback,) = torch.autograd.grad([intos[i] for i in live], origin, probes,
                                      create_graph=True, allow_unused=True)
    if pullback is None or not pullback.requires_grad:
        return unknown
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
            pushes = torch.autograd.grad(pullback, probes,
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


def _tiled(
    record: AttentionRecord, side: str, batch: int, inputs: Sequence[object]
) -> _Canonical | None:
    """The call's own hidden states read as ``k`` consecutive sequences per example (crops of
    one image, frames of one video), when nothing around the call holds them per example —
    if a batched float model input confirms it: example ``b``'s sequences depend on input
    ``b`` only."""
    tensor = record.query_input if side == "query" else record.key_input
    dim = record.token_dim if side == "query" else record.key_token_dim
    tiled_3d = dim == 1 and tensor is not None and tensor.dim() >= 3
    packed_2d = dim == 0 and tensor is not None and tensor.dim() == 2  # Qwen2-VL's vision rows
    if not (tiled_3d or packed_2d) or not tensor.requires_grad:
        return None
    sequences = tensor.shape[0]
    if sequences <= batch or sequences % batch:
        return None
    per_example = sequences // batch
    # a witness: a traced float input split the same way (batch-first, or packed rows)
    witnesses = [x for x in inputs if isinstance(x, Tensor) and x.is_floating_point()
                 and x.requires_grad and x.dim() >= 2 and x.shape[0] % batch == 0]
    confirmed = False
    for b in range(batch):
        weights = torch.zeros(tensor.shape, dtype=tensor.dtype, device=tensor.device)
        rows = slice(b * per_example, (b + 1) * per_example)  # random: a norm's sum is flat
        weights[rows] = torch.randn(weights[rows].shape, generator=_GENERATOR).to(weights)
        grads = torch.autograd.grad(tensor, witnesses, weights, retain_graph=True,
                                    allow_unused=True) if witnesses else ()
        for grad in grads:
            if grad is None:
                continue
            reached = grad.reshape(batch, -1).ne(0).any(dim=1)
            if bool(reached[torch.arange(batch) != b].any()):
                return None  # units of one example read another's input: not its tiles
            confirmed = confirmed or bool(reached[b])
    if not confirmed:
        return None
    tiles = TILES + per_example
    output = record.output if side == "query" else None
    same = output is not None and output.shape == tensor.shape
    return _Canonical(tensor, tiles, record.nodes.get(side), output if same else None,
                      record.nodes.get("output") if same else None, f"'{record.name}' (tiles)")


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


def _is_plain(record: AttentionRecord, batch: int) -> bool:
    """One ``(batch, H, n_q, n_k)`` map over the call's own hidden states."""
    if record.query_input is None:
        return True  # nothing to lay out with: the data flow reports it
    if record.raw or len(record.shape) != 4:
        return False
    query = tokens_view(record.query_input, record.token_dim)
    if record.shape[0] != batch or query.shape[0] != batch or query.shape[1] != record.n_query:
        return False
    if record.key_input is not None:
        key = tokens_view(record.key_input, record.key_token_dim)
        return key.shape[0] == batch and key.shape[1] == record.n_key
    return record.n_key == record.n_query or record.role == "cross"


def _reads_tokens(record: AttentionRecord) -> bool:
    r"""Whether a map that looks like one over its hidden states is: a score over tokens reads
    one query token and one key token, so moving the first token moves only the first row (and
    for self-attention the first column) of the scores, up to a shift shared by a whole row. A
    map over channel groups (DaViT's channel attention) moves (almost) everywhere, even when it
    happens to have as many rows as tokens. On maps caught at the softmax the scores are probed; on
    interface calls, whether the first query row reads only some of its example's tokens."""
    scores, hidden = record.scores, record.query_input
    if hidden is None or not hidden.requires_grad:
        return True
    if scores is None and record.states is not None:
        return _state_row_is_local(record.states[0], hidden, record.token_dim)
    if scores is None or scores.dim() != 4:
        return True
    probe = torch.zeros_like(scores, requires_grad=True)
    (pullback,) = torch.autograd.grad(scores, hidden, probe, create_graph=True, allow_unused=True)
    if pullback is None or not pullback.requires_grad:
        return True
    view = tokens_view(hidden, record.token_dim)
    tangent = torch.zeros_like(view)
    tangent[0, 0] = torch.randn(view.shape[-1], generator=_GENERATOR).to(view)
    (push,) = torch.autograd.grad(pullback, probe, _restore_layout(tangent, hidden,
                                                                    record.token_dim))
    moved = push[0].reshape(-1, *push.shape[-2:]).double()  # (heads, rows, cols), example 0
    elsewhere = moved[:, 1:, 1:] if record.key_input is None else moved[:, 1:, :]
    if elsewhere.numel() == 0:
        return True
    # a shift shared by a whole row (a max subtracted before the softmax, LayoutLMv3) is fine,
    # and so are a few more rows and columns (queries and keys projected by a convolution over
    # neighbouring tokens, CvT); a map over channels moves almost everywhere
    spread = (elsewhere[..., 1:] - elsewhere[..., :1]).abs()  # against each row's first entry
    if spread.numel() == 0:
        return True
    moving = spread > 1e-4 * moved.abs().max().clamp(min=1e-30)
    return float(moving.double().mean()) < 0.9


def _state_row_is_local(states: Tensor, hidden: Tensor, token_dim: int) -> bool:
    """Whether the first query row handed to the attention function is computed from some of
    its example's tokens, not from all of them (a channel's row reads every token)."""
    if not states.requires_grad:
        return True
    weights = torch.zeros(states.shape, dtype=states.dtype, device=states.device)
    weights.view(-1, states.shape[-1])[0] = torch.randn(states.shape[-1],
                                                        generator=_GENERATOR).to(weights)
    (grad,) = torch.autograd.grad(states, hidden, weights, retain_graph=True, allow_unused=True)
    if grad is None:
        return True
    reached = (tokens_view(grad, token_dim)[0] != 0).any(dim=-1)
    return reached.numel() <= 4 or not bool(reached.all())


def canonicalise(
    recorder: AttentionRecorder, batch: int, inputs: Sequence[object] = ()
) -> list[tuple[AttentionRecord, str]]:
    r"""Give every call of the recording that is not one dense map over its own hidden states a
    :class:`TokenLayout` (the recorder then holds one record per call, see
    :meth:`~captum_hetattn.capture.AttentionRecorder.use_layouts`), inside the recorder's
    context and before the gradient pass.

    ``inputs`` are the model inputs (float ones traced): they confirm which example a call's
    tiles (``k`` sequences per example) belong to.

    Returns:
        ``(record, reason)`` for softmaxes that are not attention over tokens (left out of the
        recording, for the caller to report).

    Raises:
        NotImplementedError: a call whose layout cannot be mapped to tokens exactly, naming the
            module and what it found.
    """
    groups: dict[int, list[AttentionRecord]] = {}
    for record in recorder.records:
        groups.setdefault(record.call_id if record.call_id >= 0 else -1 - id(record),
                          []).append(record)
    calls: list[AttentionRecord] = []
    dropped: list[tuple[AttentionRecord, str]] = []
    for group in groups.values():
        if len(group) == 1 and _is_plain(group[0], batch) and _reads_tokens(group[0]):
            continue
        for record in group:  # a flash record's map is needed now: laying it out reads it
            if record.attention is None and record.recompute is not None:
                record.attention = record.recompute()
        call = _lay_out(group, batch, inputs)
        if isinstance(call, str):
            dropped += [(r, call) for r in group]
        else:
            calls.append(call)
    if calls or dropped:
        recorder.use_layouts(calls, drop=[r for r, _ in dropped])
    return dropped


def _describe(record: AttentionRecord) -> str:
    return f"attention module '{record.name}' [call {record.call_index}]"


def _lay_out(
    group: list[AttentionRecord], batch: int, inputs: Sequence[object] = ()
) -> AttentionRecord | str:
    first = group[0]
    if all(r.scores is not None and r.linears for r in group):
        return _lay_out_scores(group, batch, inputs)
    if any(r.states is None for r in group):
        shapes = ", ".join(str(tuple(r.shape)) for r in group)
        raise NotImplementedError(
            f"{_describe(first)} computes maps of shape {shapes} that are not one "
            f"(batch={batch}, heads, n_query, n_key) map over its hidden states, and its query "
            "and key states were not seen (softmax interception), so its token layout is unknown"
        )
    heads = first.shape[1]
    cross = first.role == "cross" and first.key_input is not None
    # self-attention: queries and keys probed together against the same tokens (a window's keys
    # need not be its queries' tokens)
    states = [s for r in group for s in (r.states[:1] if cross else r.states)]
    query = _pick(first, "query", batch, states, inputs)
    if isinstance(query, str):
        return query
    if cross:
        key = _pick(first, "key", batch, [r.states[1] for r in group], inputs)
        if isinstance(key, str):
            return key
    else:
        canonical, sources = query
        query, key = (canonical, sources[0::2]), (canonical, sources[1::2])
    n_q, n_k = query[0].size, key[0].size
    dense_shape = (batch, heads, n_q, n_k)
    raw, dense, offset = [], [], 0
    for record, q_src, k_src in zip(group, query[1], key[1], strict=True):
        if record.shape[1] != heads or len(record.shape) != 4:
            raise NotImplementedError(
                f"{_describe(first)}: its maps of one call have different layouts "
                f"({tuple(first.shape)} and {tuple(record.shape)})"
            )
        parts, h, n_rows, n_cols = record.shape[0], heads, record.shape[2], record.shape[3]
        # every head's row i comes from the same token (key states may have fewer heads: GQA)
        q_src = q_src.view(parts, -1, n_rows)[:, :1].expand(parts, h, n_rows)
        k_src = k_src.view(parts, -1, n_cols)[:, :1].expand(parts, h, n_cols)
        valid = (q_src >= 0)[..., :, None] & (k_src >= 0)[..., None, :]
        b_q, t_q = q_src.div(n_q, rounding_mode="floor"), q_src % n_q
        b_k, t_k = k_src.div(n_k, rounding_mode="floor"), k_src % n_k
        same = b_q[..., :, None] == b_k[..., None, :]
        if bool((valid & ~same).any()):
            raise NotImplementedError(
                f"{_describe(first)}: a map of shape {tuple(record.shape)} pairs tokens of "
                "different examples (several examples packed into one sequence); explain one "
                "example at a time"
            )
        head = torch.arange(h, device=q_src.device).view(1, h, 1, 1)
        flat = ((b_q[..., :, None] * h + head) * n_q + t_q[..., :, None]) * n_k + t_k[..., None, :]
        positions = valid.flatten().nonzero().flatten()
        raw.append(positions + offset)
        dense.append(flat.flatten()[positions])
        offset += math.prod(record.shape)
    where = query[0].where
    kind = ("tiled" if where.endswith("(tiles)") else "packed" if where == f"'{first.name}'"
            else "windowed")
    layout = TokenLayout(kind, dense_shape, torch.cat(raw), torch.cat(dense))
    q_canon, k_canon = query[0], key[0]
    call = AttentionRecord(
        name=first.name, call_index=first.call_index, role=first.role, attention=None,
        gradient=None, shape=dense_shape, query_input=q_canon.tensor,
        key_input=k_canon.tensor if cross else None, output=q_canon.output,
        token_dim=q_canon.token_dim, key_token_dim=k_canon.token_dim, call_id=first.call_id,
        layout=layout, parts=list(group),
    )
    call.nodes = {"query": q_canon.node, "key": k_canon.node if cross else None,
                  "output": q_canon.output_node}
    return call


def _pick(
    record: AttentionRecord, side: str, batch: int, states: list[Tensor],
    inputs: Sequence[object] = (),
) -> tuple[_Canonical, list[Tensor]] | str:
    """The canonical hidden states of one side of a call and each state row's token there
    (``states``: one tensor per map, or for self-attention a query and a key tensor per map),
    or a reason why the side's slots are not tokens."""
    tried: list[str] = []
    reason = None
    tiled = _tiled(record, side, batch, inputs)
    for candidate in [*_candidates(record, side), *([tiled] if tiled is not None else [])]:
        if tokens_view(candidate.tensor, candidate.token_dim).shape[0] != batch:
            tried.append(candidate.where)
            continue
        sources = _state_tokens(record, side, states, candidate)
        if any(bool((s == SEVERAL_SOURCES).any()) for s in sources):
            reason = reason or (f"its {side} slots are each computed from several tokens of "
                                f"{candidate.where}: the softmax is not over tokens (e.g. "
                                "channel attention)")
            continue
        if not any(bool((s >= 0).any()) for s in sources):
            tried.append(candidate.where)
            continue
        return candidate, sources
    if reason is not None:
        return reason
    raise NotImplementedError(
        f"{_describe(record)}: none of the hidden states around it ({', '.join(tried) or '-'}) "
        f"hold its {side} tokens as (batch={batch}, tokens) rows (several examples packed into "
        "one sequence, or tiles), and no traced float input confirms which rows are whose "
        "(pass the pixel values as an input, not an additional argument), or explain one "
        "example at a time"
    )


def _state_tokens(
    record: AttentionRecord, side: str, states: list[Tensor], canonical: _Canonical
) -> list[Tensor]:
    r"""The canonical token of every row of per-head states: through the module's own hidden
    states when the canonical ones enclose them — the forward-mode products then only cross the
    projections, and first-order probes through the partition (which only permutes rows) map the
    module's rows to the layer's tokens — else directly."""
    own = record.query_input if side == "query" else record.key_input
    dim = record.token_dim if side == "query" else record.key_token_dim
    if own is None or own is canonical.tensor or not own.requires_grad:
        return rows_sources(states, canonical.tensor, canonical.token_dim)
    rows = own.reshape(1, -1, own.shape[-1]) if dim != 0 else own.reshape(1, -1)
    (found,) = _dependence(rows, 1, [(canonical.tensor, canonical.token_dim)], 1, exact=False)
    fed = found.codes.flatten() >= 0 if found.codes is not None else None
    if fed is None or bool((torch.bincount(found.codes.flatten()[fed]) > 1).any()):
        # a token feeding several rows (overlapping windows) or a row fed by several tokens
        # (a merge before the windows): not a permutation, probe directly
        return rows_sources(states, canonical.tensor, canonical.token_dim)
    token_of_row = torch.full((rows.shape[1],), NO_SOURCE, dtype=torch.long)
    token_of_row[found.codes.flatten()[fed]] = fed.nonzero().flatten()
    out = []
    for to_own in rows_sources(states, own, dim):
        mapped = token_of_row[to_own.clamp(min=0)]
        out.append(torch.where(to_own >= 0, mapped, to_own))
    return out


def canonical_batch(inputs: Sequence[object]) -> int | None:
    """The batch size of the first batched tensor input (for callers without one)."""
    for value in inputs:
        if isinstance(value, Tensor) and value.dim() >= 2:
            return value.shape[0]
    return None


# ------------------------------------------------------------------------------ softmax calls
def _entry_rows(
    scores: Tensor, projection: Tensor, heads: int, part: tuple[int, int] = (0, 1)
) -> tuple[Tensor, Tensor]:
    r"""For every entry of ``scores``, the row of ``projection`` (all dimensions but the last)
    it is computed from and the head (the column block of ``projection``): bit planes of the
    row (column block) numbers as tangents of forward-mode products, as in
    :func:`row_sources` (zero or not is exact where ratios of values are not). ``part=(k, m)``
    probes only the k-th of m equal column chunks (the queries or keys of a fused projection).

    Returns:
        ``(row, head)`` long, shaped like ``scores``: :data:`NO_SOURCE` where the entry does not
        read ``projection``, :data:`SEVERAL_SOURCES` where it reads several of its rows.
    """
    none = torch.full(scores.shape, NO_SOURCE, dtype=torch.long, device=scores.device)
    probe = torch.zeros_like(scores, requires_grad=True)
    (pullback,) = torch.autograd.grad(scores, projection, probe, create_graph=True,
                                      allow_unused=True)
    if pullback is None or not pullback.requires_grad:
        return none, none
    rows, width = math.prod(projection.shape[:-1]), projection.shape[-1]
    direction = torch.randn(rows, width, generator=_GENERATOR).to(projection)
    # `part` (k, of): only the k-th of `of` equal column chunks (a fused q|k|v projection)
    chunk = width // part[1]
    columns = torch.zeros(width, dtype=torch.bool)
    columns[part[0] * chunk:(part[0] + 1) * chunk] = True
    direction = direction * columns.to(direction)
    width = chunk

    def responds(mask: Tensor) -> Tensor:
        tangent = (direction * mask.to(projection)).reshape(projection.shape)
        (out,) = torch.autograd.grad(pullback, probe, tangent, retain_graph=True)
        return out != 0

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
    block = max(1, width // heads)
    numbers = torch.zeros(projection.shape[-1], dtype=torch.long)
    numbers[columns] = torch.arange(width) // block
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
    candidates = [c for c in _candidates(first, "query")
                  if tokens_view(c.tensor, c.token_dim).shape[0] == batch]
    tiled = _tiled(first, "query", batch, inputs)
    candidates += [tiled] if tiled is not None else []
    if not candidates:
        raise NotImplementedError(
            f"{_describe(first)}: no hidden states around it hold (batch={batch}, tokens) rows"
        )
    reason: str | None = None
    for candidate in candidates:  # the first whose tokens the scores read one by one
        call = _lay_out_over(group, batch, candidate)
        if not isinstance(call, str):
            return call
        reason = reason or call
    assert reason is not None
    return reason


def _lay_out_over(
    group: list[AttentionRecord], batch: int, canonical: _Canonical
) -> AttentionRecord | str:
    """:func:`_lay_out_scores` over one choice of the canonical hidden states."""
    first = group[0]
    heads = _heads_of(group)
    n = canonical.size
    sources: dict[int, tuple[Tensor, dict[int, Tensor]]] = {}  # id(projection) -> tokens
    placed = []
    for record in group:
        entries = _place_entries(record, canonical, heads, sources)
        if isinstance(entries, str):
            return entries
        q_token, k_token, shares, head, queried = entries
        b_q = q_token.div(n, rounding_mode="floor")
        if bool(((k_token >= 0) & (b_q != k_token.div(n, rounding_mode="floor"))).any()):
            raise NotImplementedError(
                f"{_describe(first)}: a map pairs tokens of different examples"
            )
        flat = ((b_q * heads + head) * n + q_token % n) * n + k_token % n
        mass = record.attention.reshape(-1)
        share = torch.zeros_like(mass).index_add_(0, shares[0], shares[1].to(mass))
        lost = (mass * (1 - share))[queried].sum()  # on a query token, off any key token
        if float(lost) > 1e-3 * float(mass[queried].sum()):
            raise NotImplementedError(
                f"{_describe(first)}: {float(lost):.3g} of the attention mass of its map of "
                f"shape {tuple(record.shape)} lies on entries that are not one (query token, "
                "key token) pair of its hidden states, so the map cannot be laid out exactly"
            )
        placed.append((shares[0], flat, shares[1]))
    # a later map of the call recomputes rows an earlier one had (Longformer's global tokens:
    # their output rows are overwritten), so the later one holds those rows
    raw, dense, weight, taken = [], [], [], torch.zeros(0, dtype=torch.long)
    sizes = [math.prod(r.shape) for r in group]
    for k in range(len(group) - 1, -1, -1):
        positions, flat, share = placed[k]
        rows = flat.div(n, rounding_mode="floor")
        keep = ~torch.isin(rows, taken)
        taken = torch.cat([taken, rows[keep].unique()])
        raw.append(positions[keep] + sum(sizes[:k]))
        dense.append(flat[keep])
        weight.append(share[keep])
    kind = ("tiled" if canonical.where.endswith("(tiles)") else
            "local" if canonical.where == f"'{first.name}'" else "windowed")
    layout = TokenLayout(kind, (batch, heads, n, n), torch.cat(raw), torch.cat(dense),
                         torch.cat(weight))
    call = AttentionRecord(
        name=first.name, call_index=first.call_index, role="self", attention=None,
        gradient=None, shape=layout.dense_shape, query_input=canonical.tensor, key_input=None,
        output=canonical.output, token_dim=canonical.token_dim, call_id=first.call_id,
        layout=layout, parts=list(group),
    )
    call.nodes = {"query": canonical.node, "key": None, "output": canonical.output_node}
    return call


def _place_entries(
    record: AttentionRecord, canonical: _Canonical, heads: int,
    sources: dict[int, tuple[Tensor, dict[int, Tensor]]],
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], Tensor, Tensor] | str:
    r"""``(query token, key token, (entry, share), head)`` per placed pair of one raw map
    (flat tensors over the pairs; an entry whose key is an aggregate of several tokens gives one
    pair per token, ``share`` ``1/|tokens|`` each) and which entries have a query token."""
    scores = record.scores
    size = scores.numel()
    q_token = torch.full((size,), NO_SOURCE, dtype=torch.long)
    k_token = q_token.clone()
    head = q_token.clone()
    aggregated: list[tuple[Tensor, Tensor]] = []  # (entries, their key's tokens)
    for projection, row, row_head in _projection_reads(scores, record.linears, heads):
        if bool((row == SEVERAL_SOURCES).any()):
            return ("each of its entries reads several tokens of one projection: the softmax "
                    "is not over tokens (e.g. channel attention)")
        read = row >= 0
        if not bool(read.any()):
            continue
        if id(projection) not in sources:
            sources[id(projection)] = _projection_tokens(projection, canonical)
        tokens, members = sources[id(projection)]
        if not bool((tokens != NO_SOURCE).any()):
            continue
        # query side: one projection row along the softmax dimension (unread entries aside)
        low = torch.where(read, row, row.max() + 1).amin(dim=-1)
        high = torch.where(read, row, -1).amax(dim=-1)
        query_side = bool(((low == high) | ~read.any(dim=-1)).all())
        read, row, row_head = read.flatten(), row.flatten(), row_head.flatten()
        token = torch.where(read, tokens[row.clamp(min=0)], NO_SOURCE)
        if query_side:
            if bool((token == SEVERAL_SOURCES).any()):
                return "its query slots are each computed from several tokens (not tokens)"
            q_token = torch.where(read & (q_token == NO_SOURCE), token, q_token)
        else:
            fresh = read & (k_token == NO_SOURCE)
            k_token = torch.where(fresh, token, k_token)
            for key_row, key_tokens in members.items():  # a block aggregate: its tokens
                entries = (fresh & (row == key_row)).nonzero().flatten()
                aggregated.append((entries, key_tokens))
        head = torch.where(read & (head == NO_SOURCE), row_head, head)
    if not bool((k_token != NO_SOURCE).any()):
        return "no projection computed before its softmax gives its key slots"
    placed = (q_token >= 0) & (head >= 0)
    direct = (placed & (k_token >= 0)).nonzero().flatten()
    entries, keys, shares = [direct], [k_token[direct]], [torch.ones(direct.numel())]
    for rows, key_tokens in aggregated:
        rows = rows[placed[rows]]
        entries.append(rows.repeat_interleave(key_tokens.numel()))
        keys.append(key_tokens.repeat(rows.numel()))
        shares.append(torch.full((rows.numel() * key_tokens.numel(),), 1 / key_tokens.numel()))
    entry = torch.cat(entries)
    return (q_token[entry], torch.cat(keys), (entry, torch.cat(shares)), head[entry],
            q_token >= 0)


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
) -> tuple[Tensor, dict[int, Tensor]]:
    r"""The token of each row of a projection, and for each row computed from several tokens
    (a block aggregate) those tokens."""
    tokens = row_sources(projection, canonical.tensor, canonical.token_dim)
    members = {row: _row_members(projection, row, canonical).nonzero().flatten()
               for row in (tokens == SEVERAL_SOURCES).nonzero().flatten().tolist()}
    return tokens, members


def _row_members(projection: Tensor, row: int, canonical: _Canonical) -> Tensor:
    """``(B·n,)``: the tokens one projection row depends on (one reverse pass)."""
    weights = torch.zeros_like(projection).reshape(-1, projection.shape[-1])
    weights[row] = torch.randn(projection.shape[-1], generator=_GENERATOR).to(weights)
    (grad,) = torch.autograd.grad(projection, canonical.tensor, weights.view_as(projection),
                                  retain_graph=True, allow_unused=True)
    if grad is None:
        return torch.zeros(tokens_view(canonical.tensor, canonical.token_dim).shape[:2].numel())
    return (tokens_view(grad, canonical.token_dim) != 0).any(dim=-1).flatten().float()


def _heads_of(group: list[AttentionRecord]) -> int:
    """The head count of a call's module (a banded or blocked map does not say where heads are)."""
    return next((r.heads for r in group if r.heads), group[0].shape[1])
