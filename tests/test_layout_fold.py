r"""What a laid-out call's raw maps say without their dense map: the key mass and causality a
reduce reads (``TokenLayout.where_attention_goes``) against those of the folded map."""

from __future__ import annotations

import math

import pytest
import torch

from captum_hetattn.binding.canonical import TokenLayout
from captum_hetattn.graph.inference import is_causal


def _layout(dense_shape, raw_shape, causal: bool, weighted: bool, seed: int = 0):
    r"""Raw maps of ``raw_shape`` whose entries land on distinct random dense entries (on or
    below the diagonal with ``causal``), some raw entries left out (padding slots)."""
    generator = torch.Generator().manual_seed(seed)
    batch, heads, n_q, n_k = dense_shape
    dense = torch.arange(math.prod(dense_shape))
    if causal:
        query, key = dense.div(n_k, rounding_mode="floor") % n_q, dense % n_k
        dense = dense[key <= query]
    raw_total = math.prod(raw_shape)
    count = min(raw_total - 3, dense.numel())
    raw = torch.randperm(raw_total, generator=generator)[:count]
    dense = dense[torch.randperm(dense.numel(), generator=generator)[:count]]
    weight = torch.rand(count, generator=generator) + 0.5 if weighted else None
    layout = TokenLayout("windowed", dense_shape, raw, dense, weight)
    parts = [torch.rand(raw_shape, generator=generator)]
    return layout, parts


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_where_attention_goes_equals_what_the_folded_map_says(causal, weighted):
    layout, parts = _layout((2, 3, 40, 40), (16, 3, 10, 10), causal, weighted)
    folded = layout.fold(parts, sum_heads=True)
    mass, found = layout.where_attention_goes(parts)
    torch.testing.assert_close(mass, folded.sum(dim=(1, 2)))
    assert found == is_causal(folded) == causal
    assert layout.where_attention_goes(parts, mass=False) == (None, causal)


def test_a_late_entry_above_the_diagonal_makes_it_not_causal():
    # the first chunk of entries read is all zero above the diagonal: the rest are read too
    layout, parts = _layout((1, 2, 200, 200), (1, 2, 200, 200), False, False, seed=1)
    dense = layout.dense_index
    above = (dense % 200 > dense.div(200, rounding_mode="floor") % 200).nonzero().flatten()
    assert above.numel() > 4 and int(above[-1]) >= 1 << 16
    flat = parts[0].reshape(-1)
    flat[layout.raw_index[above]] = 0.0
    assert layout.where_attention_goes(parts)[1] and is_causal(layout.fold(parts, True))
    flat[layout.raw_index[above[-1]]] = 0.25
    assert not layout.where_attention_goes(parts)[1]
    assert not is_causal(layout.fold(parts, sum_heads=True))
    torch.testing.assert_close(layout.where_attention_goes(parts)[0],
                               layout.fold(parts, sum_heads=True).sum(dim=(1, 2)))


def test_a_square_map_of_one_token_is_not_causal():
    layout, parts = _layout((1, 1, 1, 1), (1, 1, 2, 2), True, False)
    assert layout.where_attention_goes(parts)[1] is False
