r"""What a laid-out call's raw maps say without their dense map — the key mass and causality a
reduce reads (``TokenLayout.where_attention_goes``), and the map itself as its entries for the
streaming adjoint (``FoldedMap``) — against the folded dense map."""

from __future__ import annotations

import math

import pytest
import torch

from captum_hetattn.binding.canonical import TokenLayout
from captum_hetattn.graph.inference import is_causal
from captum_hetattn.rules import AttentionFlow, RowAdjoint, row_increment
from captum_hetattn.rules.folded import FoldedMap


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


# ---------------------------------------------------------------------------- FoldedMap
def _folded(layout: TokenLayout, parts) -> FoldedMap:
    batch, heads, n_q, n_k = layout.dense_shape
    return FoldedMap((batch, n_q, n_k), layout.raw_values(parts) / heads, *layout.tokens())


@pytest.mark.parametrize("weighted", [False, True])
def test_a_folded_map_is_the_head_mean_of_the_folded_parts(weighted):
    layout, parts = _layout((2, 3, 40, 40), (16, 3, 10, 10), False, weighted)
    dense = layout.fold(parts, sum_heads=True)[:, 0] / 3
    folded = _folded(layout, parts)
    torch.testing.assert_close(folded.dense(), dense)
    row = torch.randn(2, 40, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(row_increment(row, folded), row_increment(row, dense))
    torch.testing.assert_close(folded.diagonal(), dense.diagonal(dim1=-2, dim2=-1))
    assert folded.to(torch.float64).row_times(row.double()).dtype == torch.float64


def test_the_row_adjoint_on_folded_maps_equals_it_on_dense_maps():
    layouts = [_layout((2, 2, 30, 30), (9, 2, 10, 10), False, False, seed=s) for s in (4, 5)]
    readout = {"image": torch.rand(2, 30, generator=torch.Generator().manual_seed(6))}
    rows = []
    for folded in (False, True):
        adjoint = RowAdjoint({"image": 30}, readout)
        for layout, parts in reversed(layouts):
            heads = layout.dense_shape[1]
            attention = (_folded(layout, parts) if folded
                         else layout.fold(parts, sum_heads=True)[:, 0] / heads)
            adjoint.step(AttentionFlow("image", "image", attention))
        reference = torch.zeros(0)
        rows.append((adjoint.result(reference), adjoint.own(reference)))
    torch.testing.assert_close(rows[0][0]["image"], rows[1][0]["image"])
    torch.testing.assert_close(rows[0][1]["image"], rows[1][1]["image"])


def test_swin_streams_folded_maps_with_the_relevance_of_dense_ones(monkeypatch):
    from transformers import SwinConfig, SwinForImageClassification

    from captum_hetattn import HeterogenousAttentionAttribution
    from captum_hetattn.engine.streaming import Streaming

    torch.manual_seed(0)
    config = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                        num_heads=[2, 2], window_size=2, num_labels=3)
    model = SwinForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    offered: list[object] = []
    original = Streaming.offer
    monkeypatch.setattr(Streaming, "offer", lambda self, key, reduced: (
        offered.append(reduced), original(self, key, reduced))[1])
    explainer = HeterogenousAttentionAttribution(lambda x: model(pixel_values=x).logits,
                                                 model=model)
    ours = explainer.explain(pixels, target=1)
    assert sum(isinstance(m, FoldedMap) for m in offered) == 4  # every windowed call
    monkeypatch.setattr(Streaming, "takes", lambda self, key: False)  # dense maps only
    offered.clear()
    dense = explainer.explain(pixels, target=1)
    assert offered and not any(isinstance(m, FoldedMap) for m in offered)
    assert ours.relevance["image"].abs().sum() > 0
    torch.testing.assert_close(ours.relevance["image"], dense.relevance["image"],
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.own["image"], dense.own["image"], atol=1e-6, rtol=1e-5)
