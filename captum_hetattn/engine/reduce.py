r"""Head reduction: the recorder's ``reduce`` callbacks, which turn each bound call's per-head
map and gradient into its aggregated map ``Ā`` as soon as the gradient arrives — a whole map at
once (:meth:`Capture.reduce`) or flash capture's chunks of heads (:meth:`Capture.reduce_heads`),
both ending in the same bookkeeping (:meth:`Capture._note`) and the same hand-off to the
streaming adjoint (:meth:`Capture._streamed`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from captum_hetattn.binding import BoundRecording
from captum_hetattn.capture import AttentionRecord
from captum_hetattn.engine.values import ValueTerms
from captum_hetattn.graph.inference import is_causal
from captum_hetattn.rules.folded import FoldedMap
from captum_hetattn.rules.ops import (
    aggregate_heads,
    corrected,
    relevance_dtype,
    residual_shares,
    resolve_correction,
    value_weighted,
)

if TYPE_CHECKING:
    from captum_hetattn.engine.streaming import Streaming

Key = tuple[str, int]


class Capture:
    r"""Per-recording state of the ``reduce`` callback: corrections of the bound calls, which
    keys anyone attends to (padding), which self-attention maps are causal.

    Args:
        correction: the call's correction (one, or one per node type).
        keep_heads: keep every call's per-head maps (``return_maps=True``).
    """

    def __init__(self, correction: str | Mapping[str, str], keep_heads: bool = False) -> None:
        self.correction = correction
        self.keep_heads = keep_heads
        #: per call, ``(A, G, f(G) ⊙ A, q, k)`` per head, with ``keep_heads``
        self.heads: dict[Key, tuple[Tensor, ...]] = {}
        self.corrections: dict[Key, str] = {}
        self.key_mass: dict[Key, Tensor] = {}
        #: the calls whose key mass chunked reduction keeps (the first self call per stream)
        self.mass_of: set[Key] = set()
        self.causal: set[Key] = set()
        self.no_gradient: set[Key] = set()
        #: with ``weighting="value"``: per call, what the map cannot see, and the weights of
        #: the query tokens' own relevance that follow from it
        self.values: dict[Key, ValueTerms] = {}
        self.residuals: dict[Key, Tensor] = {}
        self._partial: dict[Key, tuple[Tensor, Tensor, bool, bool]] = {}
        #: with a streaming adjoint: reduced maps go to it (records keep an empty tensor)
        self.stream: Streaming | None = None
        #: a reduced map the streaming adjoint used and dropped (:meth:`_total`)
        self._spare: Tensor | None = None

    def rearm(self) -> None:
        """Before another gradient pass: what depends on the gradient is computed again."""
        self.no_gradient = set()
        self.heads = {}
        self._partial = {}
        self.stream = None
        self._spare = None

    def expect(self, recording: BoundRecording) -> None:
        """The bound calls and their corrections (calls not bound are not reduced)."""
        seen: set[str] = set()
        for call in recording.calls:
            key = (call.record.name, call.record.call_index)
            self.corrections[key] = resolve_correction(self.correction, call.node.type)
            if not call.node.is_cross and call.node.query not in seen:
                seen.add(call.node.query)  # padding_of reads this call's key mass only
                self.mass_of.add(key)

    def reduce(self, record: AttentionRecord) -> Tensor | None:
        """The recorder's callback for a whole map: ``Ā``, or ``None`` for an unbound call."""
        return self._streamed(record, self._reduce(record))

    def takes_narrow_blocks(self, record: AttentionRecord) -> bool:
        """Whether :meth:`reduce_heads` takes this record's row blocks with only the leading
        keys their rows see (every bound call it reduces by chunks: nothing here reads the
        gradient where the map is zero)."""
        key = (record.name, record.call_index)
        return (key in self.corrections and not self.keep_heads and key not in self.values
                and record.layout is None)

    def takes_dead_blocks(self, record: AttentionRecord, causal: bool) -> bool:
        """Whether :meth:`reduce_heads` takes a block of rows that no output gradient reaches
        unbuilt, as a block of zero keys (the flash backward's): its part of ``f(G) ⊙ A`` is
        zero for a correction that weighs by ``G``, nobody reads its key mass, and whether
        the call is causal is settled without it — by the mask (``causal``: it hides every
        later key from every row, this block's too) or by an earlier block that was not."""
        key = (record.name, record.call_index)
        if (not self.takes_narrow_blocks(record) or key in self.mass_of
                or self.corrections[key] not in ("pos", "abs", "full")):
            return False
        earlier = self._partial.get(key)
        return causal or (earlier is not None and not earlier[2])

    def reduce_heads(self, record: AttentionRecord, attention: Tensor, gradient: Tensor,
                     first: int, heads: int, row: int = 0) -> Tensor | None:
        """:meth:`reduce` chunk by chunk of heads (flash capture's backward), each chunk whole
        or in blocks of query rows from ``row`` (a block may hold only the leading keys its
        rows see, :meth:`takes_narrow_blocks`: zero after them): the sum of ``f(G) ⊙ A``
        over heads (per row, in the same order either way) and the key mass accumulate; the
        last block gives ``Ā``."""
        key = (record.name, record.call_index)
        if key not in self.corrections:
            return None
        if self.keep_heads or key in self.values or record.layout is not None:
            return NotImplemented
        n_query, n_key = record.shape[-2], record.shape[-1]
        width = attention.shape[-1]
        blocks = row > 0 or attention.shape[-2] != n_query
        earlier = self._partial.pop(key) if first > 0 or row > 0 else None
        # whether it got a gradient: read until one block says so (before the gradient's
        # memory is reused below)
        touched = (earlier is not None and earlier[3]) or _nonzero(gradient)
        # the key mass only where padding is read from it (the first self call of a stream);
        # only whether it is zero is read: block sums in any order say the same
        mass = None
        if key in self.mass_of:
            mass = torch.nn.functional.pad(attention.detach().sum(dim=(1, 2)), (0, n_key - width))
        if earlier is None:
            causal = _causal_rows(attention, row, n_query, n_key) if blocks else is_causal(
                attention)
        else:
            causal = earlier[2] and _causal_rows(attention, row, n_query, n_key)
        total = None if earlier is None else earlier[0]
        if blocks and total is None:
            total = self._total(attention, (attention.shape[0], n_query, n_key))
        # the last chunk of heads divides each block by the head count while it is in cache
        divide = heads if blocks and first + attention.shape[1] >= heads else None
        fixed = self._add_block(attention, gradient, self.corrections[key], total, first,
                                slice(row, row + attention.shape[-2]), blocks, divide)
        if earlier is not None and mass is not None:
            mass = earlier[1] + mass
        if first + attention.shape[1] < heads or row + attention.shape[-2] < n_query:
            self._partial[key] = (fixed, mass, causal, touched)
            return None
        self._note(key, mass, causal, touched)
        if not blocks:
            fixed = fixed.div_(heads)
        streamed = self._streamed(record, fixed)  # (a sum of this call's own)
        if blocks and streamed is not fixed and key not in self.stream.maps:
            self._spare = fixed  # used by the adjoint and dropped: the next call's memory
        return streamed

    def _total(self, like: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """Memory for a call's sum over heads: the last call's, where the streaming adjoint
        used it and let it go and it fits (a new CPU tensor of this size is mapped afresh, a
        page fault on every page as it is first written), else new."""
        spare, self._spare = self._spare, None
        dtype = relevance_dtype(like.dtype)
        if (spare is not None and tuple(spare.shape) == shape and spare.dtype == dtype
                and spare.device == like.device):
            return spare
        return like.new_empty(shape, dtype=dtype)

    @staticmethod
    def _add_block(attention: Tensor, gradient: Tensor, correction: str, total: Tensor | None,
                   first: int, rows: slice, blocks: bool, divide: int | None = None
                   ) -> Tensor:
        """The sum over heads of ``f(G) ⊙ A`` with the block's, in ``total``'s rows ``rows``
        and leading keys (the first chunk of heads writes them, zero after the block's keys;
        the later ones add); ``divide``: the head count the last chunk divides the block by
        (the same values as dividing the whole sum at the end, one pass less over memory)."""
        if not blocks:
            return _corrected_sum(attention, gradient, correction, total)
        assert total is not None
        block = total[:, rows]
        width = attention.shape[-1]
        if first == 0:
            _corrected_sum(attention, gradient, correction, out=block[..., :width])
            block[..., width:] = 0
        else:
            _corrected_sum(attention, gradient, correction, block[..., :width])
        if divide is not None:
            block[..., :width].div_(divide)
        return total

    #: the flash backward may write its next chunk into this one's memory: nothing here keeps
    #: a chunk (the gradient's memory is even reused for ``f(G) ⊙ A``)
    reduce_heads.keeps_no_chunk = True  # type: ignore[attr-defined]
    #: and may hand each chunk over in blocks of query rows (with the first row's index)
    reduce_heads.rows = True  # type: ignore[attr-defined]

    #: a call with a layout is reduced from its raw parts alone: the recorder need not fold
    #: its map first
    reduce.reads_parts = True  # type: ignore[attr-defined]

    def _note(self, key: Key, mass: Tensor | None, causal: bool, touched: bool) -> None:
        """What a reduced call tells besides ``Ā``: which keys anyone attends to (zero columns
        are attention-masked padding), whether it is causal, whether it got a gradient."""
        if mass is not None:
            self.key_mass[key] = mass
        if causal:
            self.causal.add(key)
        if self.corrections[key] != "none" and not touched:
            self.no_gradient.add(key)

    def _streamed(self, record: AttentionRecord, reduced: Any) -> Any:
        """Hand a reduced map to the streaming adjoint (the record keeps an empty tensor)."""
        key = (record.name, record.call_index)
        if (self.stream is None or not isinstance(reduced, (Tensor, FoldedMap))
                or key not in self.stream.keys):
            return reduced
        self.stream.offer(key, reduced)
        return (reduced.values if isinstance(reduced, FoldedMap) else reduced).new_empty(0)

    def _reduce(self, record: AttentionRecord) -> Tensor | None:
        key = (record.name, record.call_index)
        if key not in self.corrections:
            return None
        correction = self.corrections[key]
        # (whether it got a gradient matters only under a correction: no sync otherwise)
        touched = correction == "none" or _has_gradient(record)
        if record.layout is not None:  # correct each raw entry, then fold (exact with overlaps)
            # where attention goes, read from the raw maps (no dense map of A: see reads_parts)
            self._note(key, *record.layout.where_attention_goes(
                [p.attention for p in record.parts], mass=key in self.mass_of), touched)
            parts = [corrected(p.attention, p.gradient, correction) for p in record.parts]
            if self.stream is not None and self.stream.takes(key) and not self.keep_heads:
                # used at once by the streaming adjoint, then dropped: no dense map at all
                batch, heads, n_q, n_k = record.shape
                return FoldedMap((batch, n_q, n_k), *record.layout.mean_over_heads(parts))
            if not self.keep_heads:  # the sum over heads folded at once: no per-head map
                return record.layout.fold(parts, sum_heads=True)[:, 0].div_(record.shape[1])
            folded = record.layout.fold(parts)
            self._keep(key, record, record.layout.fold([p.attention for p in record.parts]),
                       record.layout.fold([p.gradient for p in record.parts]), folded)
            return folded.mean(dim=1)
        assert record.attention is not None
        # the key mass only where padding is read from it (as for chunks: one pass fewer)
        mass = record.attention.detach().sum(dim=(1, 2)) if key in self.mass_of else None
        self._note(key, mass, is_causal(record.attention), touched)
        if self.keep_heads:
            self._keep(key, record, record.attention, record.gradient,
                       corrected(record.attention, record.gradient, correction))
        terms = self.values.get(key)
        if terms is not None:
            keep, mix = residual_shares(terms.output_norm, terms.input_norm)
            self.residuals[key] = keep
            weighted = value_weighted(record.attention, record.gradient, correction, terms.norms)
            return mix[:, :, None].to(weighted.dtype) * weighted
        return aggregate_heads(record.attention, record.gradient, correction)

    def _keep(self, key: Key, record: AttentionRecord, attention: Tensor,
              gradient: Tensor | None, fixed: Tensor) -> None:
        """Keep one call's per-head maps (and q/k where they match the dense map's heads)."""
        def plain(t: Tensor) -> Tensor:
            return t.detach().float().cpu()

        states: tuple[Tensor | None, Tensor | None] = (None, None)
        if record.states is not None:
            query, key_states = record.states
            batch, heads, n_query, n_key = attention.shape
            if (tuple(query.shape[:3]) == (batch, heads, n_query)
                    and tuple(key_states.shape[:3]) == (batch, heads, n_key)):
                states = (plain(query), plain(key_states))
        gradient = torch.zeros_like(attention) if gradient is None else gradient
        self.heads[key] = (plain(attention), plain(gradient), plain(fixed), *states)


def _corrected_sum(attention: Tensor, gradient: Tensor, correction: str,
                   total: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    r"""``corrected(attention, gradient, correction).sum(dim=1)``, plus ``total`` (the sum of
    the chunks before, added to in place), the same values, computed in ``gradient``'s memory
    (flash capture hands over a gradient chunk nobody reads afterwards: two passes over the
    chunk instead of two new tensors of its size; a chunk of one head is added without a sum).
    ``out``: where the sum is written when there is no ``total`` (else a new tensor)."""
    dtype = relevance_dtype(attention.dtype)
    if (correction not in ("pos", "abs", "full") or attention.dtype != dtype
            or gradient.dtype != dtype or gradient.shape != attention.shape):
        chunk = corrected(attention, gradient, correction).sum(dim=1)
        if total is not None:
            return total.add_(chunk)
        return chunk if out is None else out.copy_(chunk)
    if correction == "pos":
        gradient = gradient.clamp_(min=0)
    elif correction == "abs":
        gradient = gradient.abs_()
    weighted = gradient.mul_(attention)
    if total is None:  # a tensor of its own (the chunk's memory is reused)
        if out is not None and weighted.shape[1] == 1:  # one head: a copy, not a reduction
            return out.copy_(weighted[:, 0])  # (a sum into ``out`` zero-fills it first)
        return weighted.sum(dim=1) if out is None else torch.sum(weighted, dim=1, out=out)
    return total.add_(weighted[:, 0] if weighted.shape[1] == 1 else weighted.sum(dim=1))


def _causal_rows(attention: Tensor, row: int, n_query: int, n_key: int) -> bool:
    r""":func:`is_causal` for the block of a square ``n_query × n_query`` map's query rows
    from ``row``, given over its leading keys (zero after them): no query of the block sees a
    later key — none past the block's last row, and the block's own triangle above its
    diagonal is zero."""
    if n_key != n_query or n_query < 2:
        return False
    if row == 0 and bool(attention[..., 0, 1:].any()):  # the first query sees a later key
        return False
    count, width = attention.shape[-2], attention.shape[-1]
    end = min(row + count, width)
    if end < width and _nonzero(attention[..., end:]):  # keys after every row of the block
        return False
    corner = attention[..., row:end]  # (rows, keys row .. end): the triangle above the diagonal
    # (zeroing the rest is a vectorised pass; a boolean index of it was a nonzero + gather,
    # 40% of the reduction's time on GPT-2)
    return not _nonzero(corner.triu(1))


def _nonzero(tensor: Tensor) -> bool:
    """``bool(tensor.any())`` for a float tensor (NaN counts), from its largest and smallest
    entries: vectorised reductions, a few times faster than ``any`` on a CPU."""
    if not tensor.numel():
        return False
    return bool(tensor.amax() != 0) or bool(tensor.amin() != 0)


def _has_gradient(record: AttentionRecord) -> bool:
    """Whether any entry of the call's maps (of each part, for a folded call) got a gradient."""
    grads = [p.gradient for p in record.parts] if record.layout is not None else [record.gradient]
    return any(g is not None and _nonzero(g) for g in grads)
