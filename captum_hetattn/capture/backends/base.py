r"""What every capture backend is: made for one recording (its recorder and session), with an
``install(stack)`` that changes the model (or the process) until the recording's stack closes;
and what every backend records alike (a query row that ``-inf`` hides from every key, or a
padding query's row, records zero)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from captum_hetattn.capture.session import Session

if TYPE_CHECKING:
    from captum_hetattn.capture.recorder import AttentionRecorder


def empty_rows(mask: Tensor | None) -> Tensor | None:
    r"""The query rows of an additive mask that record zero, shaped like the mask without its
    key dimension; ``None`` when there is none.

    A row that ``-inf`` (or a boolean mask) hides from every key has no keys: sdpa returns zeros
    for it (an eager softmax NaN), so its map is zero. A row that a large *finite* value (at most
    half the dtype's lowest, as transformers' eager masks) hides from every key is the model's
    own softmax of those scores (uniform for a constant mask): it is kept as computed, unless its
    query is padding — a square map whose query's own token is a key no query sees — whose row
    reaches nothing real, so masked keys get no relevance (``tests/test_silent_inputs.py``).
    """
    if mask is None or not isinstance(mask, Tensor) or not mask.is_floating_point():
        return None
    if mask.dim() < 2 or mask.shape[-1] == 0:
        return None
    low = mask <= torch.finfo(mask.dtype).min / 2
    empty = low.all(-1)
    if not bool(empty.any()):
        return None
    cleared = torch.isneginf(mask).all(-1)
    if mask.shape[-1] == mask.shape[-2]:  # a padding query: its own token no query sees
        cleared = cleared | (empty & low.all(-2))
    return cleared if bool(cleared.any()) else None


def huge_rows(mask: Tensor | None) -> bool:
    r"""Whether a row of ``mask`` hides every key by large finite values (not all ``-inf``):
    its softmax is a real row (uniform for a constant mask) that a map rebuilt from the
    kernel's log-sum-exp loses to rounding (the shift is as large as the mask)."""
    if mask is None or not isinstance(mask, Tensor) or not mask.is_floating_point():
        return False
    if mask.dim() < 1 or mask.shape[-1] == 0:
        return False
    empty = (mask <= torch.finfo(mask.dtype).min / 2).all(-1)
    return bool((empty & ~torch.isneginf(mask).all(-1)).any())


def clear_empty_rows(attention: Tensor, mask: Tensor | None) -> Tensor:
    r"""``attention`` with the rows :func:`empty_rows` finds in ``mask`` set to zero."""
    empty = empty_rows(mask)
    if empty is None:
        return attention
    try:
        torch.broadcast_shapes(empty.unsqueeze(-1).shape, attention.shape)
    except RuntimeError:  # a mask not laid out like the map: nothing to say about its rows
        return attention
    return attention.masked_fill(empty.unsqueeze(-1), 0.0)


def masked_keys(mask: Tensor | None, batch: int) -> Tensor | None:
    r"""``(batch, n_k)``: the keys an additive mask (or masked scores) hides from every query
    and head; ``None`` when it hides none or is not laid out
    ``(batch | 1, heads | 1, n_q, n_k)``."""
    if mask is None or not isinstance(mask, Tensor) or not mask.is_floating_point():
        return None
    if mask.dim() != 4 or mask.shape[0] not in (1, batch) or 0 in mask.shape:
        return None
    hidden = (mask <= torch.finfo(mask.dtype).min / 2).all(-2).all(1)
    return hidden.expand(batch, -1) if bool(hidden.any()) else None


class Backend:
    r"""One way of capturing attention maps, for the modules the plan gives it.

    Args:
        recorder: the recorder the maps go to (``_add_map``, ``_keep``, ``_set_gradient``).
        session: the running recording (its plan, frames and flags).
    """

    def __init__(self, recorder: AttentionRecorder, session: Session) -> None:
        self.recorder = recorder
        self.session = session

    def install(self, stack: ExitStack) -> None:
        r"""Change what this backend needs changed, registering the undo on ``stack``."""
        raise NotImplementedError
