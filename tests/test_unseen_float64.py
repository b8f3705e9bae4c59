r"""A float64 model whose mask hides a query row wholly (left padding under a causal mask, BLT's
patches no byte feeds): the eager functions take the softmax in float32, where float64's lowest
mask value is ``-inf``, so the row was NaN in the engine's recomputation (refused as "a NaN
arose inside the model") though the model's own forward is finite (found by
``tests/model_types/variants.py``: ``llama@double+pad-left``)."""

from __future__ import annotations

import pytest
import torch
from model_types import variants
from model_types.run import run_type


@pytest.mark.parametrize("name", ["llama@double+pad-left", "blt@double"])
def test_float64_with_wholly_masked_rows_is_explained_and_checked(name: str) -> None:
    result = run_type(name, make=lambda n: variants.make(n, seed=9))
    assert result["outcome"] == "explained", result.get("reason")
    for check in ("eager", "batch") + (("rule", "padding") if "llama" in name else ()):
        assert result["checks"][check][0] == "ok", (check, result["checks"][check])


def test_float64_left_padded_relevance_is_finite_and_pads_zero() -> None:
    from captum_hetattn import HeterogenousAttentionAttribution

    case = variants.make("llama@double+pad-left", seed=9)
    explainer = HeterogenousAttentionAttribution(case.forward_func, model=case.model)
    explanation = explainer.explain(case.inputs, target=case.target,
                                    additional_forward_args=case.additional_forward_args)
    (relevance,) = explanation.relevance.values()
    assert relevance.dtype == torch.float64 or relevance.dtype == torch.float32
    assert bool(torch.isfinite(relevance).all())
    assert bool((relevance[case.mask == 0] == 0).all())
    assert bool((relevance[case.mask == 1] != 0).any())
