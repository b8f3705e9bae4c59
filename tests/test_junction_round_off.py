r"""A token that feeds a fused row only by a trace at the level of round-off (Grounding-DINO's
text tokens, ~1e-13 of the largest gradient) may vanish in another batch: its junction share
must then be as small as the trace, so batch and single examples agree."""

import torch

from captum_hetattn.binding.fusion import junction_weights
from captum_hetattn.binding.probes import _dependence


def _shares(mixing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    origin = torch.randn(1, mixing.shape[1], 4, generator=torch.Generator().manual_seed(0),
                         requires_grad=True)
    into = torch.einsum("ij,bjd->bid", mixing, origin)
    (found,) = _dependence(into, 1, [(origin, 1)], 1)
    return found.matrix(), junction_weights([found.shares()])[0]


def test_a_round_off_feeder_takes_a_share_as_small_as_it():
    traced = torch.tensor([[1.0, 0.7, 1e-13], [0.0, 0.5, 0.0]])  # token 1 feeds both rows
    matrix, weights = _shares(traced)
    assert matrix[0, 0].tolist() == [True, True, True]  # the trace is a feeder ...
    assert 0 < weights[0, 0, 2] < 1e-6  # ... with a share at the level of its trace
    torch.testing.assert_close(weights[0, 0, :2], torch.tensor([0.5, 0.5]), rtol=1e-6, atol=0)
    _, without = _shares(traced.where(traced > 1e-12, 0.0))  # the trace vanished
    torch.testing.assert_close(without, weights, rtol=1e-6, atol=1e-6)
    assert without[0, 0, 2] == 0


def test_real_feeders_keep_equal_shares():
    _, weights = _shares(torch.tensor([[1.0, 1e-4, 0.0], [0.0, 0.0, 3.0]]))  # one row each
    torch.testing.assert_close(weights[0], torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
