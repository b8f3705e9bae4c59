r"""An example explained alone gets what it gets in a batch when a batch norm sits between two
attention calls (OmDet-Turbo's channel projections: conv → batch norm → ``flatten(2)
.transpose(1, 2)``).

torch's CPU batch-norm backward misreads the channels-last gradient that the transpose hands back
for a batch of one (its batch stride is not ``C·H·W``), so the gradient of every map before the
norm was wrong for a single example — and only for it. The recorder hands the norm a contiguous
gradient; the reference is the same model with the norm written out by hand."""

import pytest
import torch
from torch import nn

from captum_hetattn import HeterogenousAttentionAttribution

CHANNELS, SIDE = 8, 4


class _HandNorm(nn.Module):
    r"""An eval-mode batch norm as plain tensor arithmetic (its backward is autograd's own)."""

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm
        scale = n.weight / torch.sqrt(n.running_var + n.eps)
        return (x - n.running_mean[:, None, None]) * scale[:, None, None] + n.bias[:, None, None]


class _ConvNormAttention(nn.Module):
    r"""Patch tokens → attention → back to a feature map → batch norm → tokens → attention."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patches = nn.Conv2d(3, CHANNELS, 4, stride=4)
        self.first = nn.MultiheadAttention(CHANNELS, 2, batch_first=True)
        self.norm: nn.Module = nn.BatchNorm2d(CHANNELS)
        self.second = nn.MultiheadAttention(CHANNELS, 2, batch_first=True)
        self.head = nn.Linear(CHANNELS, 3)
        with torch.no_grad():
            self.norm.running_mean.normal_()
            self.norm.running_var.uniform_(0.3, 3.0)
            self.norm.weight.uniform_(0.5, 2.0)
            self.norm.bias.normal_()
        self.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(pixels).flatten(2).transpose(1, 2)
        tokens = tokens + self.first(tokens, tokens, tokens)[0]
        batch = tokens.shape[0]
        grid = tokens.transpose(1, 2).reshape(batch, CHANNELS, SIDE, SIDE).contiguous()
        tokens = self.norm(grid).flatten(2).transpose(1, 2)
        tokens = tokens + self.second(tokens, tokens, tokens)[0]
        return self.head(tokens.mean(dim=1))


def _relevance(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    explainer = HeterogenousAttentionAttribution(model, model=model)
    return explainer.attribute(pixels, target=1)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 4 * SIDE, 4 * SIDE, generator=torch.Generator().manual_seed(3))


def test_an_example_alone_gets_its_batch_relevance_through_a_batch_norm(pixels):
    model = _ConvNormAttention()
    batch = _relevance(model, pixels)
    assert batch.abs().sum() > 0
    for b in range(len(pixels)):
        alone = _relevance(model, pixels[b:b + 1])
        torch.testing.assert_close(alone[0], batch[b], rtol=1e-4, atol=1e-6)


def test_an_example_alone_equals_the_norm_written_by_hand(pixels):
    model = _ConvNormAttention()
    alone = _relevance(model, pixels[:1])
    model.norm = _HandNorm(model.norm)
    torch.testing.assert_close(alone, _relevance(model, pixels[:1]), rtol=1e-4, atol=1e-6)


def test_the_recording_leaves_no_hook_on_the_norm(pixels):
    model = _ConvNormAttention()
    _relevance(model, pixels[:1])
    assert not model.norm._forward_hooks
