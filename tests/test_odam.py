"""ODAM (gradient-weighted object detector activation maps) against hand-computed gradient ×
activation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_hetattn.evaluation import ODAM

torch.set_num_threads(1)


class TinyDetector(nn.Module):
    """conv feature map (B, 4, 6, 6) → per-query class logits (B, 3 queries, 5 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, kernel_size=3, padding=1, stride=2)
        self.head = nn.Linear(4 * 6 * 6, 3 * 5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = torch.tanh(self.features(pixels))
        return self.head(feats.flatten(1)).reshape(-1, 3, 5)


def _by_hand(model, layer: nn.Module, pixels: torch.Tensor,
             targets: list[tuple[int, int]]) -> torch.Tensor:
    """ReLU(Σ_c ∂y/∂F_c ⊙ F_c) with a forward hook and autograd, one example at a time."""
    maps = []
    for b, (query, label) in enumerate(targets):
        saved = {}
        handle = layer.register_forward_hook(lambda m, i, o, s=saved: s.setdefault("F", o))
        try:
            score = model(pixels[b : b + 1])[0, query, label]
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(score, saved["F"])
        maps.append((grad * saved["F"]).sum(dim=1).clamp(min=0)[0])
    return torch.stack(maps).detach()


def test_matches_hand_computed_gradient_times_activation():
    torch.manual_seed(0)
    model = TinyDetector().eval()
    pixels = torch.randn(3, 3, 12, 12)
    targets = [(0, 1), (2, 4), (1, 0)]
    heat = ODAM(model, model.features).attribute(pixels, target=targets)
    assert heat.shape == (3, 6, 6)
    expected = _by_hand(model, model.features, pixels, targets)
    torch.testing.assert_close(heat, expected, rtol=1e-5, atol=1e-6)
    assert (heat == 0).any() and (heat > 0).any()  # the ReLU cut something, kept something
    # one target for the whole batch is Captum's tuple target
    same = ODAM(model, model.features).attribute(pixels, target=(2, 4))
    torch.testing.assert_close(same[1], expected[1], rtol=1e-5, atol=1e-6)


def test_signed_sum_and_token_layout():
    torch.manual_seed(1)
    model = TinyDetector().eval()
    pixels = torch.randn(2, 3, 12, 12)
    signed = ODAM(model, model.features).attribute(pixels, target=(1, 2), relu=False)
    assert (signed < 0).any()
    relu = ODAM(model, model.features).attribute(pixels, target=(1, 2))
    torch.testing.assert_close(relu, signed.clamp(min=0))

    # a (B, tokens, channels) layer sums over its last dimension
    encoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
    head = nn.Linear(8, 5)

    def tokens_model(x: torch.Tensor) -> torch.Tensor:
        return head(encoder(x))  # (B, 4 tokens, 5): "queries" are the tokens here

    x = torch.randn(2, 4, 6)
    heat = ODAM(tokens_model, encoder).attribute(x, target=(3, 0))
    assert heat.shape == (2, 4)
    feats = encoder(x)
    grad = torch.autograd.grad(head(feats)[:, 3, 0].sum(), feats)[0]
    torch.testing.assert_close(heat, (grad * feats).sum(-1).clamp(min=0).detach())
    assert (heat[:, :3] == 0).all()  # token 3's score reads only token 3's features


def test_conditional_detr_backbone_map_per_query():
    from captum_hetattn.zoo.shapes_detr import GRID, _new_model

    model = _new_model(seed=3).eval()
    layer = model.model.backbone.model.encoder.stages[-1]
    pixels = torch.randn(2, 3, 64, 64)

    def logits(p: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=p).logits

    targets = [(4, 1), (7, 3)]
    heat = ODAM(logits, layer).attribute(pixels, target=targets)
    assert heat.shape == (2, GRID, GRID)
    expected = _by_hand(lambda p: model(pixel_values=p).logits, layer, pixels, targets)
    torch.testing.assert_close(heat, expected, rtol=1e-4, atol=1e-6)
    assert (heat > 0).any()


def test_layer_with_several_outputs_is_refused():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    pair = Pair()

    def forward(x):
        a, b = pair(x)
        return (a + b).reshape(x.shape[0], 2, 3)

    with pytest.raises(TypeError, match="single feature-map output"):
        ODAM(forward, pair).attribute(torch.randn(2, 6), target=(0, 1))
