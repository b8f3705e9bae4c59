r"""Which ``nn.Embedding`` lookups stand for an integer model input.

Integer ids carry no autograd graph, so the data flow finds where an input's tokens enter the
model by the embedding lookups the recorder saw. A lookup stands for input ``p`` when its ids
are that input (or equal to it), laid out sequence-first (XLNet transposes its ids to
``(n, B)``), or an element-wise one-to-one recoding of it (CANINE hashes each code point into
buckets for several embedding tables, whose shards are concatenated into one token). A recoding
is only accepted for an input no lookup takes as it is, and never for ids that are positions.
A lookup of an input the model right-padded itself (Longformer pads its ids to its window) is
found last, by :func:`padded_lookups`, with the input's own length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from captum_hetattn.binding.sources import padded_input

#: ``token_dim`` of an embedding's output: batch-first ``(B, n, d)``, sequence-first ``(n, B, d)``
BATCH_FIRST, SEQUENCE_FIRST = 1, 0


def id_inputs(
    embeddings: Sequence[tuple[str, Tensor, Tensor, Any]], inputs: Sequence[Any]
) -> list[tuple[int, Tensor, int, Any]]:
    r"""The lookups that stand for integer inputs, as ``(position, output, token_dim, node)``.

    Args:
        embeddings: the recorder's lookups ``(name, ids, output, output's autograd node)``.
        inputs: the model inputs by position.
    """
    candidates = [
        (p, t) for p, t in enumerate(inputs)
        if isinstance(t, Tensor) and not t.is_floating_point() and t.dim() >= 2
    ]
    found: list[tuple[int, Tensor, int, Any]] = []
    recoded: list[tuple[int, Tensor, int, Any]] = []
    for _, ids, output, node in embeddings:
        if not isinstance(ids, Tensor) or tuple(output.shape[: ids.dim()]) != tuple(ids.shape):
            # not a lookup of these ids (an nn.Embedding subclass handed the attention mask
            # first that embeds positions of its own, BioGPT): it does not stand for the input
            continue
        match = _same_ids(ids, candidates)
        if match is not None:
            found.append((match[0], output, match[1], node))
            continue
        match = _recoded_ids(ids, candidates)
        if match is not None:
            recoded.append((match[0], output, match[1], node))
    matched = {position for position, *_ in found}
    return found + [each for each in recoded if each[0] not in matched]


def padded_lookups(
    embeddings: Sequence[tuple[str, Tensor, Tensor, Any]], inputs: Sequence[Any],
    taken: set[int],
) -> list[tuple[int, Tensor, Any, int]]:
    r"""The lookups of integer inputs the model right-padded itself, for inputs no lookup in
    :func:`id_inputs` stands for (``taken``), as ``(position, output, node, input length)``."""
    found = []
    for _, ids, output, node in embeddings:
        if not isinstance(ids, Tensor) or tuple(output.shape[: ids.dim()]) != tuple(ids.shape):
            continue
        for position, tensor in enumerate(inputs):
            if (position not in taken and isinstance(tensor, Tensor) and tensor.dim() >= 2
                    and not tensor.is_floating_point() and padded_input(ids, tensor)):
                found.append((position, output, node, tensor.shape[-1]))
                break
    return found


def _layouts(ids: Tensor, tensor: Tensor) -> list[tuple[Tensor, int]]:
    """``tensor`` laid out as ``ids`` may hold it: as it is, or sequence-first."""
    views = []
    if ids.shape == tensor.shape:
        views.append((tensor, BATCH_FIRST))
    if tensor.dim() == 2 and ids.shape == tensor.T.shape and tensor.shape[0] != tensor.shape[1]:
        views.append((tensor.T, SEQUENCE_FIRST))
    return views


def _same_ids(ids: Tensor, candidates: Sequence[tuple[int, Tensor]]) -> tuple[int, int] | None:
    """The input these ids are (identity, else mostly equal values) and its layout."""
    for position, tensor in candidates:
        if ids is tensor:
            return position, BATCH_FIRST
    for position, tensor in candidates:
        for view, layout in _layouts(ids, tensor):
            if bool((ids == view).float().mean() > 0.5):
                return position, layout
    return None


def _recoded_ids(ids: Tensor, candidates: Sequence[tuple[int, Tensor]]
                 ) -> tuple[int, int] | None:
    """The input these ids recode one to one, element by element (hashed code points)."""
    if ids.dim() < 2 or _positions(ids):
        return None
    for position, tensor in candidates:
        for view, layout in _layouts(ids, tensor):
            if _one_to_one(ids, view):
                return position, layout
    return None


def _one_to_one(ids: Tensor, view: Tensor) -> bool:
    """Equal inputs give equal ids and different inputs different ids, over at least three
    distinct values (so that masks and token types are not taken for tokens)."""
    pairs = torch.stack([view.flatten(), ids.flatten()], dim=1).unique(dim=0)
    distinct = view.unique().numel()
    return distinct >= 3 and pairs.shape[0] == distinct == ids.unique().numel()


def _positions(ids: Tensor) -> bool:
    """Whether the ids count positions along some dimension (``arange`` per sequence)."""
    for dim in range(ids.dim()):
        n = ids.shape[dim]
        if n < 2:
            continue
        steps = ids.diff(dim=dim)
        if bool((steps == 1).all()):
            return True
    return False
