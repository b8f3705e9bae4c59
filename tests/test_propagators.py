"""The propagators' one interface (rules/propagators.py): rows by the adjoint where linear equal
rows read from the full propagation, Gae's own-entry removal, Raw's last-call read."""

import pytest
import torch

from captum_hetattn.rules import (
    AttentionFlow,
    Gae,
    Ours,
    Propagator,
    Raw,
    Rollout,
    TokenMap,
    propagate,
    propagate_row,
    read_rows,
)


def steps(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[dict[str, int], list]:
    gen = torch.Generator().manual_seed(seed)

    def attention(n_q: int, n_k: int) -> torch.Tensor:
        return torch.rand(2, n_q, n_k, generator=gen, dtype=dtype).softmax(-1)

    sizes = {"text": 3, "image": 4}
    return sizes, [
        [AttentionFlow("image", "image", attention(4, 4))],
        [AttentionFlow("text", "text", attention(3, 3)),
         AttentionFlow("text", "image", attention(3, 4))],
        [AttentionFlow("text", "text", attention(3, 3))],
    ]


def readout(dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    return {"text": torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5]], dtype=dtype)}


@pytest.mark.parametrize("method", [Ours(), Ours(noise_link=True), Gae(), Gae(normalize=False),
                                    Rollout(), Raw()])
def test_one_interface(method):
    assert isinstance(method, Propagator)
    sizes, flows = steps(dtype=torch.float32)  # the engine's dtype (Raw reads in float32)
    rows = method.rows(sizes, flows, readout(torch.float32))
    assert set(rows) == set(sizes)
    assert all(rows[s].shape == (2, n) for s, n in sizes.items())
    assert method.has_flow == (not isinstance(method, Raw))


@pytest.mark.parametrize("method", [Ours(), Rollout()])
def test_linear_rows_by_the_adjoint_equal_the_full_propagation(method):
    assert method.linear
    sizes, flows = steps(1)
    full = read_rows(propagate(sizes, flows, method), sizes, readout())
    for stream, row in method.rows(sizes, flows, readout()).items():
        torch.testing.assert_close(row, full[stream], atol=1e-12, rtol=0)


def test_nonlinear_propagators_refuse_the_adjoint():
    assert not Ours(noise_link=True).linear and not Gae().linear and not Raw().linear
    sizes, flows = steps()
    with pytest.raises(ValueError, match="not linear"):
        propagate_row(sizes, flows, readout(), method=Gae())


def test_gae_removes_the_readout_tokens_own_entry():
    sizes, flows = steps(2)
    blocks = propagate(sizes, flows, Gae())
    plain = read_rows(blocks, sizes, readout())
    rows = Gae().rows(sizes, flows, readout())
    own = readout()["text"] * blocks[("text", "text")].diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(rows["text"], plain["text"] - own)
    torch.testing.assert_close(rows["image"], plain["image"])


def test_raw_reads_the_last_call_into_each_stream_and_carries_junctions_back():
    sizes, flows = steps(3, torch.float32)
    rows = Raw().rows(sizes, flows, readout(torch.float32))
    last_text, cross = flows[2][0].attention, flows[1][1].attention
    weights = readout(torch.float32)["text"]
    torch.testing.assert_close(rows["text"], (weights[:, None] @ last_text.float())[:, 0])
    torch.testing.assert_close(rows["image"], (weights[:, None] @ cross.float())[:, 0])
    # a junction moves what the spliced rows received back to their origin
    junction = TokenMap("text", "image", torch.ones(2, 3, 4) / 4,
                        torch.tensor([[True, False, False]] * 2))
    moved = Raw().rows(sizes, [*flows, junction], readout(torch.float32))
    assert moved["image"].abs().sum() > rows["image"].abs().sum()


def test_rollout_is_its_own_step_normalisation():
    sizes, flows = steps(4)
    assert Rollout().step_scales(flows[1]) == {"text": 3}
    assert Ours().step_scales(flows[1]) == {}
