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
token and their outputs are cropped; their mass went to padding, as with masked keys — checked
in :mod:`~captum_hetattn.binding.padding`).

**Where each slot comes from** is read from the autograd graph, not from the model's code: the
per-head query and key states that the attention function was handed are probed against the
canonical tokens with forward-mode derivatives (a Jacobian-vector product computed as the
derivative of a vector-Jacobian product, so it runs on the recorded graph): with
``K = ⌈log₂ n⌉`` bit planes of the canonical rows, two products per plane tell for each state row
the one token it is computed from (or none: padding, or several: a slot that is not one token —
channel attention, pooled keys).

Maps caught at the softmax of hand-written modules (banded, blocked, global rows) have no
per-head states; there every *entry* of the softmax input is placed by the projections its score
reads (:mod:`~captum_hetattn.binding.layout_scores`). The canonical hidden states and the probes
live in :mod:`~captum_hetattn.binding.canonical`. Corrections are applied to raw entries before
folding (``rules.corrected``), which keeps them exact where entries overlap.

``canonicalise`` leaves the recorder's records as they are and hands it the laid-out calls
(``recorder.use_layouts(calls, drop)``); every field of a record keeps its name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from captum_hetattn.binding.canonical import (
    _GENERATOR,
    NO_SOURCE,
    SEVERAL_SOURCES,
    TokenLayout,
    _call_of,
    _candidates,
    _Canonical,
    _describe,
    _with_tiles,
    row_sources,
    rows_sources,
    token_rows,
)
from captum_hetattn.binding.dataflow import _dependence
from captum_hetattn.binding.depth import over_depth, per_token_query
from captum_hetattn.binding.layout_cache import LayoutCache, Placement
from captum_hetattn.binding.layout_scores import _lay_out_over, _lay_out_scores
from captum_hetattn.binding.packed import (
    masked_across,
    misowned,
    unequal_examples,
    uneven_examples,
)
from captum_hetattn.binding.padding import (
    attends_to_padding,
    dropped_not_padding,
    learned_rows,
    outputs_read,
    padded_rows,
    unverified_padding,
    zero_slots,
)
from captum_hetattn.binding.probe_budget import (
    LayoutBudgetExceeded,
    backward,
    layout_budget,
    row_support,
    several_reason,
)
from captum_hetattn.binding.tokens import GATHERED, _restore_layout, tokens_view
from captum_hetattn.capture import AttentionRecord, AttentionRecorder

__all__ = [
    "NO_SOURCE", "SEVERAL_SOURCES", "TokenLayout", "canonicalise", "row_sources", "rows_sources",
]


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
    (pullback,) = backward(scores, hidden, probe, create_graph=True, allow_unused=True)
    if pullback is None or not pullback.requires_grad:
        return True
    view = tokens_view(hidden, record.token_dim)
    tangent = torch.zeros_like(view)
    tangent[0, 0] = torch.randn(view.shape[-1], generator=_GENERATOR).to(view)
    (push,) = backward(pullback, probe, _restore_layout(tangent, hidden,
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
    (grad,) = backward(states, hidden, weights, retain_graph=True, allow_unused=True)
    if grad is None:
        return True
    reached = (tokens_view(grad, token_dim)[0] != 0).any(dim=-1)
    return reached.numel() <= 4 or not bool(reached.all())


def canonicalise(
    recorder: AttentionRecorder, batch: int, inputs: Sequence[object] = (),
    cache: LayoutCache | None = None,
) -> list[tuple[AttentionRecord, str]]:
    r"""Give every call of the recording that is not one dense map over its own hidden states a
    :class:`TokenLayout` (the recorder then holds one record per call, see
    :meth:`~captum_hetattn.capture.AttentionRecorder.use_layouts`), inside the recorder's
    context and before the gradient pass.

    ``inputs`` are the model inputs (float ones traced): they confirm which example a call's
    tiles (``k`` sequences per example) belong to. With a ``cache`` (the explainer's), a call
    of a signature laid out before takes its placement from there once a cheap check on this
    forward's tensors confirms it (:mod:`~captum_hetattn.binding.layout_cache`); it is probed
    otherwise.

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
    signature = LayoutCache.signature(batch, inputs) if cache is not None else None
    alike: dict[Any, Placement] = {}  # this forward's laid-out calls, by what they look like
    for ordinal, group in enumerate(groups.values()):
        key = cache.key(signature, ordinal, group) if cache is not None else None
        cached = cache.get(key) if cache is not None else None
        # (a replay reads states or scores, not maps: a flash record's map is rebuilt in the
        # backward, and probing afresh materialises what it reads)
        call = cached.replay(group, batch, inputs) if cached is not None else None
        if cache is not None:
            cache.hits += call is not None
        if call is None:
            looks = alike_key(group) if cache is not None else None
            placement, call = (_like_earlier(group, batch, inputs, alike.get(looks))
                               if looks is not None else (None, None))
            if placement is None:
                placement, call = _place(group, batch, inputs)
            if cache is not None:
                cache.misses += 1
                cache.put(key, placement)
                if placement.kind in ("scores", "states"):
                    alike.setdefault(looks, placement)
        if isinstance(call, str):
            if call != "plain":
                dropped += [(r, call) for r in group]
        else:
            calls.append(call)
    if calls or dropped:
        recorder.use_layouts(calls, drop=[r for r, _ in dropped])
    return dropped


def alike_key(group: list[AttentionRecord]) -> tuple[Any, ...]:
    r"""What a call's layout is read from, but which layer it is: per raw map, its module's
    name with the layer numbers left out (``encoder.layers.#.self_attn``), and the shapes and
    strides of every tensor the layout is read from, the autograd node that computed its
    scores and which keys its mask hides (every encoder layer of LED or LongT5 looks alike;
    Swin's shifted and unshifted blocks differ in their masks and are told apart by the
    check in any case)."""
    def tensor(t: Tensor | None, node: bool = False) -> Any:
        return None if t is None else (tuple(t.shape), t.stride(), t.dtype,
                                       type(t.grad_fn).__name__ if node else None)

    def masked(t: Tensor | None) -> Any:
        return None if t is None else (tuple(t.shape), t.detach().cpu().nonzero().flatten()
                                       .numpy().tobytes())

    return tuple(
        (_LAYER.sub("#", r.name), tuple(r.shape), r.role, r.heads, r.raw, r.token_dim,
         r.key_token_dim, tensor(r.query_input), tensor(r.key_input), tensor(r.scores, True),
         tuple(tensor(t, True) for t in r.linears),
         tuple(tensor(s, True) for s in r.states or ()),
         masked(r.masked_keys),
         tuple((_LAYER.sub("#", c.name), tensor(c.input), tensor(c.output))
               for c in r.contexts))
        for r in group)


#: a layer's number in a module's qualified name
_LAYER = re.compile(r"(?<=\.)\d+(?=\.|$)")


def _like_earlier(group: list[AttentionRecord], batch: int, inputs: Sequence[object],
                  earlier: Placement | None
                  ) -> tuple[Placement | None, AttentionRecord | str | None]:
    r"""The placement of an ``earlier`` call of this forward that looks like this one
    (:func:`alike_key`: another layer of the same stack), used after the check a cached
    placement passes before reuse (the same check, on this call's own tensors: a layout that
    does not hold is probed afresh); ``(None, None)`` where it does not hold."""
    if earlier is None:
        return None, None
    call = earlier.replay(group, batch, inputs)
    if call is None or isinstance(call, str):
        return None, None
    return dataclasses.replace(earlier), call


def _materialise(group: list[AttentionRecord]) -> None:
    """A flash record's map is needed now: laying it out (and folding it) reads it."""
    for record in group:
        if record.attention is None and record.recompute is not None:
            record.attention = record.recompute()


def _place(group: list[AttentionRecord], batch: int, inputs: Sequence[object]
           ) -> tuple[Placement, AttentionRecord | str]:
    """Probe one call's layout: its placement (for the cache) and the laid-out call, or
    ``"plain"``, or the reason it is left out — also when its probes would run past the
    budget of backward passes (:func:`~captum_hetattn.binding.probe_budget.layout_budget`)."""
    try:
        with layout_budget():
            return _probe(group, batch, inputs)
    except LayoutBudgetExceeded as over:
        return Placement("dropped", reason=over.reason()), over.reason()


def _probe(group: list[AttentionRecord], batch: int, inputs: Sequence[object]
           ) -> tuple[Placement, AttentionRecord | str]:
    """:func:`_place` within the budget."""
    depth = per_token_query(group[0], batch)
    if depth is not None:
        return Placement("dropped", reason=depth), depth
    if len(group) == 1 and _is_plain(group[0], batch) and _reads_tokens(group[0]):
        windowed = _padded_window(group, batch, inputs)
        if windowed is None:
            return Placement("plain"), "plain"
        return windowed
    _materialise(group)
    call, sources = _lay_out(group, batch, inputs)
    if isinstance(call, str):
        return Placement("dropped", reason=call), call
    assert call.layout is not None
    why = unverified_padding(group, call.layout, call.output)  # windows padded with zero rows
    if why is not None:
        raise NotImplementedError(dropped_not_padding(_describe(group[0]), why))
    return Placement.of(call, batch, sources), call


def _padded_window(group: list[AttentionRecord], batch: int, inputs: Sequence[object]
                   ) -> tuple[Placement, AttentionRecord] | None:
    r"""A self-attention call that looks like one dense map over its own hidden states but
    whose layer holds fewer tokens than its map has slots, the rest all-zero rows (SAM's ViT
    and MaskFormer's Swin pad a stage smaller than one window into it): laid out over the
    layer's tokens, the padded slots left out (:mod:`~captum_hetattn.binding.padding`);
    ``None`` (plain) when the layer holds as many, or the zero rows' outputs stay in the layer
    (tokens the module adds, such as GroupViT's zero-initialised group tokens)."""
    record = group[0]
    if record.role != "self" or record.n_key != record.n_query:
        return None
    padded = padded_rows(record)  # zero rows per example: cheap, and no probe without them
    if padded is None or not bool((padded > 0).all()):
        return None
    fewer = [c for c in _candidates(record, "query")[1:]
             if tokens_view(c.tensor, c.token_dim).shape[0] == batch
             and bool((padded == record.n_query - c.size).all())]
    if not fewer:
        return None
    layer = fewer[0]
    zero = zero_slots(record)
    assert zero is not None
    if learned_rows(record, zero, layer.node) or outputs_read(record, layer.output, zero):
        return None  # not padding: tokens the module adds (their rows stay in the stream)
    _materialise(group)
    describe = _describe(record)
    try:
        call, sources = _lay_out_on(group, batch, layer)
    except NotImplementedError as error:
        raise NotImplementedError(attends_to_padding(
            record, layer, describe, f"its map cannot be laid out on those tokens ({error})")
        ) from error
    if isinstance(call, str) or call.layout is None:
        return None
    why = unverified_padding(group, call.layout, call.output)
    if why is not None:
        raise NotImplementedError(attends_to_padding(record, layer, describe, why))
    return Placement.of(call, batch, sources), call


def _lay_out_on(group: list[AttentionRecord], batch: int, layer: _Canonical
                ) -> tuple[AttentionRecord | str, tuple[list[Tensor], list[Tensor]] | None]:
    """A self-attention call laid out on the tokens of ``layer`` (not its own padded slots)."""
    if all(r.scores is not None and r.linears for r in group):
        return _lay_out_over(group, batch, layer), None
    if any(r.states is None for r in group):
        return "no states", None
    found = _state_tokens(group[0], "query", [s for r in group for s in r.states], layer)
    if any(bool((s == SEVERAL_SOURCES).any()) for s in found):
        return "several", None
    query, key = (layer, found[0::2]), (layer, found[1::2])
    return _lay_out_states(group, batch, query, key, False), (query[1], key[1])


def _lay_out(
    group: list[AttentionRecord], batch: int, inputs: Sequence[object] = ()
) -> tuple[AttentionRecord | str, tuple[list[Tensor], list[Tensor]] | None]:
    r"""The laid-out call of one group of raw maps (one call), or why its softmax is not
    attention over tokens; with, for a call laid out from its per-head states, each state
    row's canonical token (query side, key side; per map)."""
    first = group[0]
    if all(r.scores is not None and r.linears for r in group):
        return _lay_out_scores(group, batch, inputs), None
    if any(r.states is None for r in group):
        shapes = ", ".join(str(tuple(r.shape)) for r in group)
        raise NotImplementedError(
            f"{_describe(first)} computes maps of shape {shapes} that are not one "
            f"(batch={batch}, heads, n_query, n_key) map over its hidden states, and its query "
            "and key states were not seen (softmax interception), so its token layout is unknown"
        )
    cross = first.role == "cross" and first.key_input is not None
    # self-attention: queries and keys probed together against the same tokens (a window's keys
    # need not be its queries' tokens)
    states = [s for r in group for s in (r.states[:1] if cross else r.states)]
    query = _pick(first, "query", batch, states, inputs)
    if isinstance(query, str):
        return query, None
    if cross:
        key = _pick(first, "key", batch, [r.states[1] for r in group], inputs)
        if isinstance(key, str):
            return key, None
    else:
        canonical, sources = query
        query, key = (canonical, sources[0::2]), (canonical, sources[1::2])
    return _lay_out_states(group, batch, query, key, cross), (query[1], key[1])


def _lay_out_states(
    group: list[AttentionRecord],
    batch: int,
    query: tuple[_Canonical, list[Tensor]],
    key: tuple[_Canonical, list[Tensor]],
    cross: bool,
) -> AttentionRecord:
    r"""The call of raw maps whose query and key state rows' tokens are known (``query`` and
    ``key``: the canonical hidden states and, per map, each state row's token there)."""
    first = group[0]
    heads = first.shape[1]
    n_q, n_k = query[0].size, key[0].size
    dense_shape = (batch, heads, n_q, n_k)
    raw, dense, offset = [], [], 0
    for record, q_src, k_src in zip(group, query[1], key[1], strict=True):
        if record.shape[1] != heads or len(record.shape) != 4:
            raise NotImplementedError(
                f"{_describe(first)}: its maps of one call have different layouts "
                f"({tuple(first.shape)} and {tuple(record.shape)})"
            )
        entries = _dense_entries(record, q_src, k_src, heads, n_q, n_k)
        if entries is None:  # pairs tokens of different examples
            raise NotImplementedError(unequal_examples(group, batch, n_q, _describe(first)))
        positions, flat = entries
        raw.append(positions + offset)
        dense.append(flat)
        offset += math.prod(record.shape)
    where = query[0].where
    packed = len(group) > 1 and all(r.shape[0] == 1 for r in group)  # one map per sequence
    # an equal split, unconfirmed (a gathered one is read off the examples' scores)
    if packed and where.endswith("(tiles)") and batch > 1 and query[0].token_dim < GATHERED:
        uneven = uneven_examples(group, query[1], batch, n_q, _describe(first)) or misowned(
            group, query[1], query[0].tensor, query[0].token_dim, batch, n_q, _describe(first))
        if uneven is not None:
            raise NotImplementedError(uneven)
    kind = ("tiled" if where.endswith("(tiles)") else "packed" if where == f"'{first.name}'"
            else "windowed")
    layout = TokenLayout(kind, dense_shape, torch.cat(raw), torch.cat(dense))
    return _call_of(group, layout, query[0], key[0] if cross else None, first.role)


def _dense_entries(
    record: AttentionRecord, q_src: Tensor, k_src: Tensor, heads: int, n_q: int, n_k: int,
) -> tuple[Tensor, Tensor] | None:
    r"""The entries of one raw map that hold a (query token, key token) pair, and the element
    of the dense ``(B, heads, n_q, n_k)`` map each lands on; ``None`` when the map pairs
    tokens of different examples."""
    parts, h, n_rows, n_cols = record.shape[0], heads, record.shape[2], record.shape[3]
    # every head's row i comes from the same token (key states may have fewer heads: GQA)
    q_src = q_src.view(parts, -1, n_rows)[:, :1].expand(parts, h, n_rows)
    k_src = k_src.view(parts, -1, n_cols)[:, :1].expand(parts, h, n_cols)
    valid = (q_src >= 0)[..., :, None] & (k_src >= 0)[..., None, :]
    b_q, t_q = q_src.div(n_q, rounding_mode="floor"), q_src % n_q
    b_k, t_k = k_src.div(n_k, rounding_mode="floor"), k_src % n_k
    same = b_q[..., :, None] == b_k[..., None, :]
    if bool((valid & ~same).any()):
        if not masked_across(record, valid & ~same):
            return None
        valid = valid & same  # one map over several examples, masked block-diagonal (Pixtral)
    head = torch.arange(h, device=q_src.device).view(1, h, 1, 1)
    flat = ((b_q[..., :, None] * h + head) * n_q + t_q[..., :, None]) * n_k + t_k[..., None, :]
    positions = valid.flatten().nonzero().flatten()
    return positions, flat.flatten()[positions]


def _pick(
    record: AttentionRecord, side: str, batch: int, states: list[Tensor],
    inputs: Sequence[object] = (),
) -> tuple[_Canonical, list[Tensor]] | str:
    """The canonical hidden states of one side of a call and each state row's token there
    (``states``: one tensor per map, or for self-attention a query and a key tensor per map),
    or a reason why the side's slots are not tokens."""
    tried = [c.where for c in _candidates(record, side)
             if tokens_view(c.tensor, c.token_dim).shape[0] != batch]
    reason = None
    unfed: list[_Canonical] = []  # hidden states none of whose tokens the slots are computed from
    mixed: list[str] = []  # hidden states whose tokens the slots mix
    for candidate in _with_tiles(record, side, batch, inputs):
        several = _several_at_once(record, side, states[0], candidate)
        if several is not None:  # ruled out in one pass, where probing every row takes forty
            reason = reason or several
            mixed.append(candidate.where)
            continue
        sources = _state_tokens(record, side, states, candidate)
        if any(bool((s == SEVERAL_SOURCES).any()) for s in sources):
            mixed.append(candidate.where)
            reason = reason or (f"its {side} slots are each computed from several tokens of "
                                f"{candidate.where}: the softmax is not over tokens (e.g. "
                                "channel attention)")
            continue
        if not any(bool((s >= 0).any()) for s in sources):
            tried.append(candidate.where)
            unfed.append(candidate)
            continue
        return candidate, sources
    if reason is not None:
        return _packed_first(record, side, batch, reason, mixed)
    depth = over_depth(record, side, unfed)
    if depth is not None:
        return depth
    raise NotImplementedError(
        f"{_describe(record)}: none of the hidden states around it ({', '.join(tried) or '-'}) "
        f"hold its {side} tokens as (batch={batch}, tokens) rows (several examples packed into "
        "one sequence, or tiles), and no traced float input confirms which rows are whose "
        "(pass the pixel values as an input, not an additional argument), or explain one "
        "example at a time"
    )


def _several_at_once(record: AttentionRecord, side: str, states: Tensor, candidate: _Canonical
                     ) -> str | None:
    r"""Why ``candidate`` cannot hold the ``side`` slots when a row of the first head of the
    first example's ``states`` ``(B, H, n, d)`` (at a half, a quarter, three quarters of its
    rows) reads several of its tokens (one backward pass each), else ``None`` (probe every
    row)."""
    rows = states.shape[-2] if states.dim() >= 2 else 1
    for at in (rows // 2, rows // 4, 3 * rows // 4):
        support = row_support(states, at, candidate.tensor, candidate.token_dim)
        if support is None:
            return None
        reason = several_reason(side, support, candidate, record.name)
        if reason is not None:
            return reason
    return None


def _packed_first(record: AttentionRecord, side: str, batch: int, reason: str,
                  mixed: list[str]) -> str:
    r"""``reason`` (the slots read several tokens of every batched hidden state around the
    call: ``mixed``), or, when the call's own hidden states are not batched, that cause: they
    pack several examples' tokens into fewer sequences (Pixtral's images in one sequence), and
    the batched tensors around them hold other units (pixels)."""
    own = record.query_input if side == "query" else record.key_input
    dim = record.token_dim if side == "query" else record.key_token_dim
    if own is None or tokens_view(own, dim).shape[0] == batch:
        return reason
    rows = tuple(tokens_view(own, dim).shape[:2])
    around = ", ".join("the model input" if w == "''" else w for w in dict.fromkeys(mixed))
    return (f"its own hidden states hold {rows[0]} sequence(s) of {rows[1]} tokens, not "
            f"(batch={batch}, tokens) rows: the examples' tokens are packed together (several "
            f"images or sequences in one), and the batched tensors around it ({around}) hold "
            f"other units (each of its {side} slots reads several of their rows: pixels of a "
            "patch, or its whole example); explain one example at a time, or pass the tokens "
            "batched")


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
    codes = token_rows(rows, 1, canonical.tensor, canonical.token_dim)
    if codes is None:
        (found,) = _dependence(rows, 1, [(canonical.tensor, canonical.token_dim)], 1,
                               exact=False)
        codes = found.codes
    fed = codes.flatten() >= 0 if codes is not None else None
    if fed is None or bool((torch.bincount(codes.flatten()[fed]) > 1).any()):
        # a token feeding several rows (overlapping windows) or a row fed by several tokens
        # (a merge before the windows): not a permutation, probe directly
        return rows_sources(states, canonical.tensor, canonical.token_dim)
    token_of_row = torch.full((rows.shape[1],), NO_SOURCE, dtype=torch.long)
    token_of_row[codes.flatten()[fed]] = fed.nonzero().flatten()
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

