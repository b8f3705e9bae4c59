r"""Calls whose slots are their layer's tokens padded with zero rows that the model attends to
(MaskFormer's Swin backbone pads each stage into one window and masks nothing): padding holds no
token and is never a source, so such a call is refused by name rather than explained with the
padded slots as tokens of their own.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captum_hetattn.binding.canonical import TokenLayout, _Canonical
from captum_hetattn.binding.tokens import tokens_view
from captum_hetattn.capture import AttentionRecord


def padded_rows(record: AttentionRecord) -> Tensor | None:
    """The number of all-zero rows of each example's slots (``None`` without a grid of them)."""
    if record.query_input is None or record.query_input.dim() < 3:
        return None
    slots = tokens_view(record.query_input, record.token_dim)
    return (slots == 0).all(dim=-1).sum(dim=1)


def kept_mass(group: list[AttentionRecord], layout: TokenLayout) -> float:
    r"""The share of each laid-out query row's attention that the layout keeps (on key
    tokens): 1 when the padded slots take none, as an independent check of a padded window's
    layout (every query token's row of the model's softmax sums to one over all slots)."""
    raw = torch.cat([r.attention.reshape(-1) for r in group]).double()
    kept = raw[layout.raw_index]
    if layout.weight is not None:
        kept = kept * layout.weight.to(kept)
    batch, heads, queries, _ = layout.dense_shape
    return float(kept.sum()) / (batch * heads * queries)


def attends_to_padding(record: AttentionRecord, layer: _Canonical, describe: str,
                       why: str) -> str | None:
    r"""The refusal of a call whose slots are its layer's tokens padded with zero rows (a Swin
    stage padded into one window: MaskFormer's backbone) when its map cannot be laid out on
    those tokens — the model attends to the padded slots (no mask hides them), so mass lies on
    slots that hold no token. ``None`` when the extra slots are not zero padding (tokens the
    module adds, such as registers: the call stays one dense map over its own states).

    Args:
        record: the call's map, ``(batch, heads, slots, slots)``.
        layer: the enclosing layer's hidden states (fewer tokens than slots).
        describe: the call, as error messages name it.
        why: what the layout found.
    """
    padded = padded_rows(record)
    if padded is None or bool((padded != record.n_query - layer.size).any()):
        return None
    return (f"{describe} runs over {record.n_query} slots per example: the {layer.size} "
            f"tokens of {layer.where} padded with zero rows (one window larger than the "
            f"stage), and no mask hides the padded slots, so the model attends to padding "
            f"({why.split(': ', 1)[-1]}); padding holds no token and is never a source, so "
            "this call cannot be explained exactly; use an input whose token grid fills its "
            "windows (a size that is a multiple of the window size) or explain another model")
