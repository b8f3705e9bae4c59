r"""What every capture backend is: made for one recording (its recorder and session), with an
``install(stack)`` that changes the model (or the process) until the recording's stack closes;
and what every backend records alike (a query row that sees no key records zero)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from captum_hetattn.capture.session import Session

if TYPE_CHECKING:
    from captum_hetattn.capture.recorder import AttentionRecorder


def empty_rows(mask: Tensor | None) -> Tensor | None:
    r"""The query rows of an additive mask that hide every key (``-inf`` or at most half the
    dtype's lowest value), shaped like the mask without its key dimension; ``None`` when no
    row is empty.

    Such a row has no keys: sdpa returns zeros for it, an eager softmax a uniform row over keys
    that are all masked. Its recorded map is zero in both captures, so masked keys get no
    relevance (``tests/test_silent_inputs.py``).
    """
    if mask is None or not isinstance(mask, Tensor) or not mask.is_floating_point():
        return None
    if mask.shape[-1] == 0:
        return None
    empty = (mask <= torch.finfo(mask.dtype).min / 2).all(-1)
    return empty if bool(empty.any()) else None


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
