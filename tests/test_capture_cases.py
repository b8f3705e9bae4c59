"""Capture-side cases of issue 19, each on a model built in the test: a cost guard on the data
flow's probes (OneFormer's minutes-long explain), and what it leaves exact."""

import warnings

import torch
from torch import nn

import captum_hetattn.capture as capture
from captum_hetattn import HeterogenousAttentionAttribution


class SelfAttention(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, hidden):
        q, k, v = self.qkv(hidden).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).flatten(2))


class ConvBetween(nn.Module):
    """Two attention layers with a convolution over the tokens between them (each token feeds
    three rows of the second layer's input: a pixel decoder's shape, in one dimension)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.first, self.second = SelfAttention(), SelfAttention()
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        hidden = self.embed(x)
        hidden = hidden + self.first(hidden)
        hidden = self.conv(hidden.transpose(1, 2)).transpose(1, 2)
        hidden = hidden + self.second(hidden)
        return self.head(hidden.mean(1))


def _counting_passes(monkeypatch) -> list[int]:
    calls = [0]
    grad = torch.autograd.grad

    def counted(*args, **kwargs):
        calls[0] += 1
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    return calls


def test_cost_guard_traces_a_mixing_junction_in_blocks_past_the_budget(monkeypatch):
    """OneFormer's explain ran for minutes (a forward of 0.1 s): the keys of its decoder are a
    pixel decoder's output, where every token feeds several rows, so the exact token map took
    one backward pass per row per backbone stage (thousands). Past PROBE_PASSES the rows are
    traced in blocks, with a warning naming the module; within it the map stays exact."""
    torch.manual_seed(0)
    model = ConvBetween().eval()
    x = torch.randn(2, 40, 4, generator=torch.Generator().manual_seed(1))
    runs = {}
    for limit in (None, 8):
        monkeypatch.setattr(capture, "PROBE_PASSES", limit)
        passes = _counting_passes(monkeypatch)
        explainer = HeterogenousAttentionAttribution(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs[limit] = explainer.attribute(x, target=1)
        monkeypatch.undo()
        texts = [str(w.message) for w in caught if "PROBE_PASSES" in str(w.message)]
        runs[limit, "passes"], runs[limit, "warned"] = passes[0], texts
    assert runs[None, "warned"] == []
    (text,) = runs[8, "warned"]
    assert "attention module 'second'" in text and "40 rows" in text
    assert "blocks of 5 consecutive rows" in text and "takes 40 backward passes" in text
    assert runs[8, "passes"] <= runs[None, "passes"] - 40 + 8
    exact, blocked = runs[None], runs[8]
    assert bool(torch.isfinite(blocked).all()) and bool((blocked != 0).any())
    assert not torch.allclose(exact, blocked)  # spread over blocks: another (warned) answer
    monkeypatch.setattr(capture, "PROBE_PASSES", 256)  # the default: 40 passes are within it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(HeterogenousAttentionAttribution(model).attribute(
            x, target=1), exact)
