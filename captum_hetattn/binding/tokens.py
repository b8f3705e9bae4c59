r"""How hidden states hold tokens: the ``(B, n, rest)`` view of a tensor given its ``token_dim``
(sequence-first, per-head, packed rows, channels-first or channels-last grids, tiles), and back.

Every room that reads tokens off a hidden state (the data flow, the token layouts, the value
weighting, the engine's readout) goes through :func:`tokens_view`.
"""

from __future__ import annotations

from torch import Tensor

#: ``token_dim`` of a channels-first feature map ``(B, C, h, w)`` (a layer's input in ViTDet)
CHANNELS_FIRST = 3
#: ``token_dim`` ``TILES + k``: ``(B·k, n, d)`` hidden states holding ``k`` consecutive
#: sequences per example (image crops, video frames), read as ``(B, k·n, d)``; packed rows
#: ``(B·k, d)`` (every example's image in one sequence) as ``(B, k, d)``
TILES = 100
#: ``token_dim`` ``PACKED + r``: one packed sequence ``(1, B·r, d)`` (HunYuan-VL's vision tower
#: keeps a batch dimension of one) holding ``r`` consecutive rows per example, read as ``(B, r, d)``
PACKED = 1_000_000
#: ``token_dim`` ``GATHERED + k``: packed rows ``(B·r, d)`` or ``(1, B·r, d)`` whose examples hold
#: different numbers of rows, read as ``(B, n, d)`` through the ``(B, n)`` row index registered
#: as ``k`` by :func:`gathered` (``-1``: a slot of an example with fewer rows, a zero row)
GATHERED = 2_000_000
_GATHERS: dict[int, Tensor] = {}
_GATHER_KEYS: dict[tuple, int] = {}


def gathered(index: Tensor) -> int:
    """The ``token_dim`` that reads packed rows through ``index`` ``(B, n)`` (one per index)."""
    key = (tuple(index.shape), tuple(index.flatten().tolist()))
    if key not in _GATHER_KEYS:
        _GATHER_KEYS[key] = len(_GATHERS)
        _GATHERS[len(_GATHERS)] = index.cpu()
    return GATHERED + _GATHER_KEYS[key]


def _gather(tensor: Tensor, token_dim: int) -> Tensor:
    index = _GATHERS[token_dim - GATHERED].to(tensor.device)
    rows = tensor.reshape(-1, tensor.shape[-1])[index.clamp(min=0)]
    return rows * (index >= 0)[..., None].to(rows)


def _scatter(weights: Tensor, like: Tensor, token_dim: int) -> Tensor:
    index = _GATHERS[token_dim - GATHERED].to(weights.device)
    valid = index >= 0
    out = weights.new_zeros(like.reshape(-1, like.shape[-1]).shape[0], weights.shape[-1])
    out = out.index_add(0, index[valid], weights[valid])
    return out.reshape(like.shape)


def tokens_view(tensor: Tensor, token_dim: int) -> Tensor:
    """``(B, n, rest)`` view of hidden states (sequence-first, packed 2-D and channels-last grids
    ``(B, h, w, C)`` included)."""
    if token_dim >= GATHERED:  # packed rows → (B, n, d), each example's rows in order
        return _gather(tensor, token_dim)
    if token_dim > PACKED:  # (1, B·r, d) → (B, r, d)
        return tensor.reshape(-1, token_dim - PACKED, tensor.shape[-1])
    if token_dim > TILES:  # (B·k, n, d) → (B, k·n, d); packed rows (B·k, d) → (B, k, d)
        per_example = token_dim - TILES
        return tensor.reshape(tensor.shape[0] // per_example, -1, tensor.shape[-1])
    if tensor.dim() == 2:
        return tensor.reshape(1, tensor.shape[0], -1) if token_dim == 0 else tensor.unsqueeze(-1)
    if token_dim == 0:
        tensor = tensor.transpose(0, 1)
    elif token_dim == 2:  # per-head (B, H, n, d)
        tensor = tensor.transpose(1, 2)
    elif token_dim == CHANNELS_FIRST:  # a feature map (B, C, h, w): one token per position
        return tensor.flatten(2).transpose(1, 2)
    elif tensor.dim() >= 4:  # channels-last token grids (B, h, w, C)
        return tensor.reshape(tensor.shape[0], -1, tensor.shape[-1])
    return tensor.reshape(tensor.shape[0], tensor.shape[1], -1)


def _token_count(tensor: Tensor, token_dim: int) -> int:
    return tokens_view(tensor, token_dim).shape[1]



def _restore_layout(weights: Tensor, like: Tensor, token_dim: int) -> Tensor:
    """Undo :func:`tokens_view` for a ``(B, n, rest)`` tensor of gradients."""
    if token_dim >= GATHERED:
        return _scatter(weights, like, token_dim)
    if like.dim() == 2:
        return weights.reshape(like.shape)
    if token_dim == 0:
        shape = (like.shape[1], like.shape[0], *like.shape[2:])
        return weights.reshape(shape).transpose(0, 1)
    if token_dim == 2:
        shape = (like.shape[0], like.shape[2], like.shape[1], *like.shape[3:])
        return weights.reshape(shape).transpose(1, 2)
    if token_dim == CHANNELS_FIRST:
        return weights.transpose(1, 2).reshape(like.shape)
    return weights.reshape(like.shape)

