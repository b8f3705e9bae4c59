r"""Packed calls (Qwen2-VL's vision tower: one ``(rows, D)`` sequence holding every image of the
batch, one attention map per image; Pixtral: one map masked block-diagonal): which rows are whose.

The packed rows say nothing of the example they belong to; the examples' scores do. While a
recording is bound (:func:`objective`), each row's example is read off the scores — the rows
example ``b``'s score reads (:func:`owned_token_dim`, a few vector-Jacobian products) — and the
call is laid out over ``(batch, rows)``: the equal split when the rows fall so, else a gathered
index (an example with fewer rows gets slots that hold no token, zero relevance). Without
scores (graph inference) the equal split is kept only when a traced float input confirms it
(:func:`witnessed`) and every example holds the same sequences; otherwise, and wherever a row
feeds several examples' scores, the call is refused with what differs — the rows each example
holds (:func:`unequal_examples`, :func:`uneven_examples`, :func:`misowned`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch
from torch import Tensor

from captum_hetattn.binding.tokens import (
    PACKED,
    TILES,
    _restore_layout,
    gathered,
    tokens_view,
)
from captum_hetattn.capture import AttentionRecord

# the owners' checks draw from their own stream: the layouts' probes keep their draws
_OWNERS = torch.Generator().manual_seed(20261207)


def unequal_examples(group: Sequence[AttentionRecord], batch: int, per_example: int,
                     describe: str) -> str:
    r"""The refusal of a packed call whose maps (one per sequence, in the packed order) do not
    fall into ``batch`` equal blocks of ``per_example`` rows.

    Args:
        group: the call's raw maps, each ``(1, heads, rows, rows)`` over one sequence.
        batch: the batch size.
        per_example: the rows each example would hold under the equal split.
        describe: the call, as error messages name it.

    Returns:
        The message: the rows of each example when there is one sequence per example, else the
        sequence that crosses an example boundary.
    """
    sizes = [int(r.shape[2]) for r in group]
    total = batch * per_example
    if len(sizes) == batch and sum(sizes) == total:
        held = ", ".join(f"example {b} has {n}" for b, n in enumerate(sizes))
        return (f"{describe} packs the batch's sequences into one of {total} rows, one map per "
                f"sequence, and the examples hold different numbers of them ({held} rows, "
                "e.g. images of different sizes): a packed call is laid out only when every "
                "example holds the same number of rows; explain the examples one at a time")
    start = 0
    for index, size in enumerate(sizes):
        first, last = start // per_example, (start + size - 1) // per_example
        if first != last:
            return (f"{describe} packs the batch's sequences into one of {total} rows (sizes "
                    f"{sizes}), and sequence {index} (rows {start}-{start + size - 1}) runs "
                    f"across examples {first} and {last} of an equal split into {batch} "
                    f"examples of {per_example} rows: the examples hold different numbers of "
                    "rows (images of different sizes or counts); explain them one at a time")
        start += size
    return (f"{describe}: a map pairs tokens of different examples (several examples packed "
            "into one sequence); explain one example at a time")


def uneven_examples(group: Sequence[AttentionRecord], query_sources: Sequence[Tensor],
                    batch: int, per_example: int, describe: str) -> str | None:
    r"""Why a packed call whose maps do fall into the equal split still cannot be trusted to:
    the examples hold different sequences (example 0 one image of 8 rows and example 1 images
    of 8 and 16 rows split 16/16 without a map crossing the boundary, but the second block of
    8 rows is example 1's). The packed rows say nothing of whose they are, so the split is kept
    only when every example holds sequences of the same sizes in the same order.

    Args:
        group: the call's raw maps, one per sequence.
        query_sources: per map, each state row's packed row (``b · per_example + t``).
        batch: the batch size.
        per_example: the rows each example holds under the equal split.
        describe: the call, as error messages name it.

    Returns:
        The refusal, or ``None`` when every example holds the same sequences.
    """
    held: list[list[tuple[int, int]]] = [[] for _ in range(batch)]
    for record, sources in zip(group, query_sources, strict=True):
        rows = sources[sources >= 0]
        if rows.numel():
            start = int(rows.min())
            held[start // per_example].append((start % per_example, int(record.shape[2])))
    patterns = [[size for _, size in sorted(sequences)] for sequences in held]
    odd = next((b for b in range(1, batch) if patterns[b] != patterns[0]), None)
    if odd is None:
        return None
    return (f"{describe} packs the batch's sequences into one of {batch * per_example} rows, "
            f"and split into {batch} equal examples, example 0 would hold sequences of "
            f"{patterns[0]} rows and example {odd} of {patterns[odd]}: the examples hold "
            "different sequences (images of different sizes or counts), so which rows are "
            "whose is not known; explain the examples one at a time")



# ------------------------------------------------------------------------------ packed rows
def packed_token_dim(tensor: Tensor | None, token_dim: int, batch: int) -> int | None:
    r"""The ``token_dim`` that reads a call's own hidden states as ``batch`` equal blocks of
    consecutive rows, one per example (:data:`~captum_hetattn.binding.tokens.TILES` ``+ k``:
    ``(B·k, n, d)`` tiles or ``(B·k, d)`` packed rows; :data:`PACKED` ``+ r``: one packed
    sequence ``(1, B·r, d)``), or ``None`` when they cannot be split so."""
    if tensor is None or not tensor.requires_grad:
        return None
    if token_dim == 1 and tensor.dim() == 3 and tensor.shape[0] == 1:  # (1, B·r, d)
        rows = tensor.shape[1]
        return PACKED + rows // batch if rows > batch and rows % batch == 0 else None
    tiled_3d = token_dim == 1 and tensor.dim() >= 3
    packed_2d = token_dim == 0 and tensor.dim() == 2  # Qwen2-VL's vision rows
    sequences = tensor.shape[0]
    if not (tiled_3d or packed_2d) or sequences <= batch or sequences % batch:
        return None
    return TILES + sequences // batch


def witnessed(tensor: Tensor, token_dim: int, batch: int, inputs: Sequence[object],
              generator: torch.Generator) -> bool:
    r"""Whether a traced float model input confirms that example ``b``'s block of ``tensor``
    (read with ``token_dim``) is computed from the ``b``-th of ``batch`` equal chunks of that
    input along one of its axes: batch-first pixels for tiles, packed patch rows ``(B·r, D)``,
    or MiniCPM-V's strip of patches ``(1, C, P, B·r·P)`` along its width. An input whose first
    axis splits into the examples but whose chunks are read across examples refutes it."""
    witnesses = [x for x in inputs if isinstance(x, Tensor) and x.is_floating_point()
                 and x.requires_grad and x.dim() >= 2]
    if not witnesses:
        return False
    view = tokens_view(tensor, token_dim)
    reach: list[list[Tensor | None]] = []  # per example, per witness: elements its block reads
    for b in range(batch):
        weights = torch.zeros(view.shape, dtype=tensor.dtype, device=tensor.device)
        weights[b] = torch.randn(weights[b].shape, generator=generator).to(weights)  # not flat
        grads = torch.autograd.grad(tensor, witnesses,
                                    _restore_layout(weights, tensor, token_dim),
                                    retain_graph=True, allow_unused=True)
        reach.append([None if g is None else g.ne(0) for g in grads])
    confirmed = False
    for w, witness in enumerate(witnesses):
        reached = [r[w] for r in reach]
        if any(r is None for r in reached):
            continue
        for axis in range(witness.dim()):
            clean, fed = _split_along(reached, axis, batch)
            if axis == 0 and witness.shape[0] % batch == 0 and not clean:
                return False  # units of one example read another's input: not its blocks
            confirmed = confirmed or (clean and fed)
    return confirmed


def _split_along(reached: Sequence[Tensor], axis: int, batch: int) -> tuple[bool, bool]:
    """Whether each example's reach lies in its own chunk along ``axis`` (``clean``), and
    whether some example reaches its chunk at all (``fed``)."""
    size = reached[0].shape[axis]
    if size % batch or size < batch:
        return False, False
    fed = False
    for b, mask in enumerate(reached):
        chunks = mask.movedim(axis, 0).reshape(batch, -1).any(dim=1)
        if bool(chunks[torch.arange(batch) != b].any()):
            return False, False
        fed = fed or bool(chunks[b])
    return True, fed


# ------------------------------------------------------------------------------ whose rows
#: the forward's per-example scores while a recording is bound (see :func:`objective`), and the
#: owners of the packed rows found from them, per packed tensor shape
_OBJECTIVE: ContextVar[tuple[Tensor, dict] | None] = ContextVar("packed_objective",
                                                                default=None)


@contextlib.contextmanager
def objective(scores: Tensor | None) -> Iterator[None]:
    r"""Within, a packed call split into equal blocks is checked against whose rows the
    examples' scores ``(B, ...)`` read (:func:`misowned`): the packed rows themselves say
    nothing of which example holds them, the scores do."""
    token = _OBJECTIVE.set((scores, {}) if isinstance(scores, Tensor) else None)
    try:
        yield
    finally:
        _OBJECTIVE.reset(token)


def misowned(group: Sequence[AttentionRecord], query_sources: Sequence[Tensor],
             tensor: Tensor, token_dim: int, batch: int, per_example: int,
             describe: str) -> str | None:
    r"""The refusal of a packed call whose equal split into ``batch`` blocks of
    ``per_example`` rows gives some example a sequence another example's score reads (example
    0 one image of 8 rows and example 1 three: the split 16 / 16 crosses no map and every
    example holds two sequences of 8, but rows 8-15 are example 1's), or that some example's
    score reads rows of several examples; ``None`` when every sequence a score reads is that
    example's, or without scores to tell (:func:`objective`).

    Args:
        group: the call's raw maps, one per sequence.
        query_sources: per map, each state row's packed row (``b · per_example + t``).
        tensor, token_dim: the packed hidden states and how they are read.
        batch, per_example: the equal split.
        describe: the call, as error messages name it.
    """
    readers = _scores_readers(tensor, token_dim, batch)
    if readers is None:
        return None
    reads: list[list[int]] = [[] for _ in range(batch)]
    for index, sources in enumerate(query_sources):
        rows = sources[sources >= 0]
        if not rows.numel():
            continue
        block = int(rows.min()) // per_example
        who = readers[rows.cpu()].any(dim=0).nonzero().flatten().tolist()
        for b in who:
            reads[b].append(index)
        if who and who != [block]:
            held = "; ".join(f"example {b}'s score reads sequence(s) {r}"
                             for b, r in enumerate(reads) if r)
            return (f"{describe} packs the batch's sequences into one of "
                    f"{batch * per_example} rows, and split into {batch} equal examples, "
                    f"sequence {index} (rows {int(rows.min())}-{int(rows.max())}) falls to "
                    f"example {block} while the score of example(s) {who} reads it ({held}): "
                    "the examples hold different numbers of rows (images of different sizes "
                    "or counts), which a packed call cannot be laid out over yet; explain the "
                    "examples one at a time")
    return None


def _scores_readers(tensor: Tensor, token_dim: int, batch: int) -> Tensor | None:
    """Which examples' scores read each row of ``tensor`` (:func:`_readers`), from the scores
    the pipeline set (:func:`objective`), once per shape within one forward; ``None`` without
    scores of ``batch`` examples (at least 2) that carry a graph."""
    state = _OBJECTIVE.get()
    if state is None or batch < 2:
        return None
    scores, found = state
    if scores.shape[0] != batch or not scores.requires_grad:
        return None
    key = (tuple(tensor.shape), token_dim)
    if key not in found:
        found[key] = _readers(scores, tensor, token_dim)
    return found[key]


def _readers(scores: Tensor, tensor: Tensor, token_dim: int) -> Tensor | None:
    r"""``(rows, B)`` bool: which examples' scores each packed row feeds, from two
    vector-Jacobian products per bit of the example's number (the scores of the examples whose
    bit is set, then of the others, each with random weights over the score's entries)."""
    batch = scores.shape[0]
    view = tokens_view(tensor, token_dim)
    rows = view.shape[0] * view.shape[1]
    number = torch.arange(batch)
    weights = torch.randn(scores.shape, generator=_OWNERS).to(scores)
    on = torch.zeros(rows, max(1, math.ceil(math.log2(batch))), 2, dtype=torch.bool)
    for plane in range(on.shape[1]):
        bit = ((number >> plane) & 1).bool()
        for side, chosen in enumerate((bit, ~bit)):
            picked = weights * chosen.view(-1, *[1] * (scores.dim() - 1)).to(weights)
            (grad,) = torch.autograd.grad(scores, tensor, picked, retain_graph=True,
                                          allow_unused=True)
            if grad is None:
                return None
            on[:, plane, side] = tokens_view(grad, token_dim).reshape(rows, -1).ne(0).any(-1).cpu()
    readers = torch.ones(rows, batch, dtype=torch.bool)
    for plane in range(on.shape[1]):
        bit = ((number >> plane) & 1).bool()
        readers &= torch.where(bit[None, :], on[:, plane, :1], on[:, plane, 1:])
    return readers


def owned_token_dim(tensor: Tensor | None, token_dim: int, batch: int) -> int | None:
    r"""The ``token_dim`` that reads one packed sequence of rows (``(B·r, d)`` or
    ``(1, B·r, d)``, examples of any sizes) as each example's rows in packed order, when the
    examples' scores (:func:`objective`) say whose every row is: each row feeds exactly one
    example's score. The equal split (:func:`packed_token_dim`) when the rows fall so, else a
    gathered index (examples with fewer rows padded with slots that hold no token); ``None``
    without scores, or where a row feeds several examples' scores or none."""
    if tensor is None or not tensor.requires_grad:
        return None
    if token_dim not in (0, 1) or tokens_view(tensor, token_dim).shape[0] != 1:
        return None
    readers = _scores_readers(tensor, token_dim, batch)
    if readers is None or not bool((readers.sum(dim=1) == 1).all()):
        return None
    owner = readers.long().argmax(dim=1)
    if bool((owner.diff() < 0).any()):
        return None  # examples interleaved: not packed in example order
    counts = torch.bincount(owner, minlength=batch)
    if not bool((counts > 0).all()):
        return None  # an example reads no row of this sequence
    if bool((counts == counts[0]).all()):
        return packed_token_dim(tensor, token_dim, batch)
    index = torch.full((batch, int(counts.max())), -1, dtype=torch.long)
    for b in range(batch):
        rows = (owner == b).nonzero().flatten()
        index[b, :rows.numel()] = rows
    return gathered(index)


def unmapped_inputs(record: AttentionRecord, positions: Sequence[int]) -> str:
    r"""The refusal to map input elements onto a packed stream whose examples hold different
    numbers of rows (an input's elements are laid out per example as ``(B, m)``, equal sizes)."""
    return (f"attention module '{record.name}' [call {record.call_index}]: its tokens are the "
            "packed rows of examples that hold different numbers of them (images of different "
            f"sizes or counts), and input(s) {list(positions)} feed them element by element, "
            "which cannot be laid out as (batch, elements) rows: explain() gives each "
            "example's relevance over its own rows; attribute the inputs one example at a time")


def masked_across(record: AttentionRecord, across: Tensor) -> bool:
    r"""Whether every entry of a raw map that pairs tokens of different examples (``across``,
    ``(parts, heads, rows, cols)`` with the map's key heads) holds exactly zero attention: one
    map over several packed examples masked block-diagonal (Pixtral's images), whose entries
    across examples are masked keys, never a path between examples."""
    attention = record.attention
    if attention is None or tuple(attention.shape[-2:]) != tuple(across.shape[-2:]):
        return False
    if attention.shape[1] != across.shape[1]:
        across = across[:, :1].expand(attention.shape[0], attention.shape[1], *across.shape[2:])
    return bool((attention[across.to(attention.device)] == 0).all())
