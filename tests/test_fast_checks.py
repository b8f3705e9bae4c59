r"""The one-pass finiteness check against the element-wise one it stands in for, the
rebuilt flash map against the softmax, and feeds() against its indexed form."""

from __future__ import annotations

import pytest
import torch

from captum_hetattn.capture.backends.flash import attention_map, lse_map
from captum_hetattn.engine.checks import all_finite, check_finite, check_finite_calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("case", ["finite", "nan", "inf", "-inf", "both", "overflow", "empty"])
def test_all_finite_equals_the_elementwise_check(case: str, dtype: torch.dtype) -> None:
    values = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    if case == "empty":
        values = values[:, :0]
    elif case == "overflow":  # finite values whose sum overflows: the fallback answers
        values.fill_(torch.finfo(dtype).max)
    elif case != "finite":
        spots = {"nan": [float("nan")], "inf": [float("inf")], "-inf": [float("-inf")],
                 "both": [float("inf"), float("-inf")]}[case]
        for index, spot in enumerate(spots):
            values[1, index, 2] = spot
    assert all_finite(values) == bool(torch.isfinite(values).all())


def test_check_finite_still_names_the_element() -> None:
    values = torch.zeros(2, 3)
    values[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        check_finite(values, "pixels")
    check_finite(torch.full((2, 3), torch.finfo(torch.float32).max), "pixels")  # overflow only


def test_check_finite_calls_refuses_a_nan_output() -> None:
    class Record:
        name, call_index, states, attention = "layer", 0, None, None

    record = Record()
    record.output = torch.zeros(2, 4, 8)
    check_finite_calls([record], torch.nn.Linear(2, 2))
    record.output[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"example\(s\) \[1\]"):
        check_finite_calls([record], torch.nn.Linear(2, 2))


@pytest.mark.parametrize("masked", ["none", "additive", "hidden row"])
def test_lse_map_equals_the_softmax(masked: str) -> None:
    g = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(2, 3, 9, 16, generator=g) for _ in range(3))
    mask = None
    if masked != "none":
        mask = torch.randn(2, 1, 9, 9, generator=g)
        if masked == "hidden row":
            mask[0, 0, 4] = float("-inf")
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, False, attn_mask=mask, scale=0.25)
    got = lse_map(query, key, mask, 0.25, lse)
    expected = attention_map(query, key, mask, 0.25)
    if masked == "hidden row":
        assert torch.equal(got[0, :, 4], torch.zeros_like(got[0, :, 4]))
        expected[0, :, 4] = 0
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5)
    into = torch.empty(2, 3, 9, 9)
    assert lse_map(query, key, mask, 0.25, lse, out=into).data_ptr() == into.data_ptr()


@pytest.mark.parametrize("batch", [1, 3])
def test_feeds_equals_the_indexed_construction(batch: int) -> None:
    from captum_hetattn.binding.probes import _Dependence

    g = torch.Generator().manual_seed(2)
    codes = torch.randint(-1, 11, (batch, 500), generator=g)
    codes[:, :40] = -1
    expected = torch.zeros(batch, 12, dtype=torch.bool)
    b, j = (codes >= 0).nonzero(as_tuple=True)
    expected[b, codes[b, j]] = True
    got = _Dependence(12, codes).feeds()
    assert torch.equal(got, expected) and got.is_contiguous()
    assert not bool(got[:, 11].any())  # no element feeds row 11: its -1 slot is not it
    assert torch.equal(_Dependence(12, torch.full((batch, 5), -1)).feeds(),
                       torch.zeros(batch, 12, dtype=torch.bool))
