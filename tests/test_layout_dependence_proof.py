"""A cached data-flow dependence (which rows each origin token feeds: the input rows) is reused
on an equal graph fingerprint without the two check passes; a changed graph between the same
tensors (tokens reordered) fails the fingerprint, is checked by the passes, fails them and is
probed afresh: always what a fresh explainer finds."""

import pytest
import torch
from tiny_models import SelfAttention
from torch import nn

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.binding import layout_cache


class _Model(nn.Module):
    """Features through a per-token linear map (a lifted input), tokens reversed or not."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(4, 16), nn.Linear(16, 3)
        self.first, self.second = SelfAttention(), SelfAttention()
        self.reverse = False

    def forward(self, x):
        hidden = self.embed(x) * 2.0
        if self.reverse:
            hidden = hidden.flip(1)
        hidden = hidden + self.first(hidden)
        hidden = hidden + self.second(hidden)
        return self.head(hidden[:, 0])


@pytest.fixture
def passes(monkeypatch):
    ran: list[bool] = []
    check = layout_cache._dependences_hold

    def counted(*args):
        ran.append(check(*args))
        return ran[-1]

    monkeypatch.setattr(layout_cache, "_dependences_hold", counted)
    return ran


def _setup():
    torch.manual_seed(0)
    model = _Model().eval()
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1))
    return model, x


def test_a_warm_dependence_is_reused_by_fingerprint_without_passes(passes):
    model, x = _setup()
    explainer = HeterogenousAttentionAttribution(model)
    first = explainer.attribute(x, target=1)
    del passes[:]
    misses = explainer.layouts.misses
    for _ in range(2):
        assert torch.equal(explainer.attribute(x, target=1), first)
    assert not passes and explainer.layouts.misses == misses
    assert torch.equal(HeterogenousAttentionAttribution(model).attribute(x, target=1), first)


def test_reordered_tokens_fail_the_fingerprint_and_are_probed_afresh(passes):
    model, x = _setup()
    explainer = HeterogenousAttentionAttribution(model)
    before = explainer.attribute(x, target=1)
    del passes[:]
    model.reverse = True
    misses = explainer.layouts.misses
    ours = explainer.attribute(x, target=1)
    assert passes and not all(passes)  # checked by the passes, which find the move
    assert explainer.layouts.misses > misses
    fresh = HeterogenousAttentionAttribution(model).attribute(x, target=1)
    assert torch.equal(ours, fresh) and not torch.equal(ours, before)
