r"""The variation harness (``tests/model_types/variants.py``) on a few configurations the sweep
never built: other padding sides, mask holes, ``inputs_embeds``, a third example, per-example and
tuple targets, other head counts, perturbed weights. Each is explained and checked exactly as the
sweep checks (eager maps, the paper's rule, batch == singles, padding zero, restored)."""

from __future__ import annotations

import pytest
import torch
from model_types import variants
from model_types.run import run_type

# TYPE@VARIANT -> the checks that must hold (not merely "n/a")
CASES: dict[str, tuple[str, ...]] = {
    "gpt2@pad-left": ("eager", "rule", "batch", "padding"),
    "gpt2@holes": ("eager", "rule", "batch", "padding"),
    "bert@embeds": ("eager", "rule", "batch", "padding"),
    "llama@batch3": ("eager", "rule", "batch", "padding"),
    "bert@target-list": ("eager", "rule", "batch", "padding"),
    "gpt2@target-tuple": ("eager", "rule", "batch", "padding"),
    "qwen2@heads1": ("eager", "rule", "batch", "padding"),
    "vit@layers3": ("eager", "rule", "batch"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_variant_explained_and_checked(name: str) -> None:
    torch.manual_seed(0)
    result = run_type(name, make=lambda n: variants.make(n, seed=3))
    assert result["outcome"] == "explained", result.get("reason")
    checks = result["checks"]
    for check in CASES[name]:
        assert checks[check][0] == "ok", (check, checks[check])


def test_left_padding_under_a_first_token_readout_is_refused() -> None:
    r"""A [CLS] classifier fed left padding reads a pad for the padded example: refused by
    name, never the pad's own row."""
    result = run_type("bert@pad-left", make=lambda n: variants.make(n, seed=3))
    assert result["outcome"] == "refused"
    assert "reads only padding" in result["reason"]


def test_variants_change_what_is_built() -> None:
    r"""The variants really build another configuration (not the sweep's case again)."""
    base, more = variants.make("gpt2@weights", seed=1), variants.make("gpt2@layers3", seed=1)
    assert more.model.config.n_layer == base.model.config.n_layer + 1
    left = variants.make("gpt2@pad-left", seed=1)
    assert left.mask.shape[0] == 3 and int(left.mask[1, 0]) == 0 and int(left.mask[1, -1]) == 1
    again = variants.make("gpt2@weights", seed=2)
    assert not torch.equal(base.model.transformer.h[0].attn.c_attn.weight,
                           again.model.transformer.h[0].attn.c_attn.weight)


def test_unpadded_check_compares_and_catches_a_wrong_row() -> None:
    r"""``checks.unpadded_equals`` compares the padded examples with their unpadded runs (left
    padding too, where the scores agree) and fails on an explanation whose row differs."""
    from dataclasses import replace

    from model_types import checks
    from model_types.run import _explain

    case = variants.make("llama@pad-left", seed=3)
    _, explanation = _explain(case)
    explain = lambda one: _explain(one)[1]  # noqa: E731
    verdict = checks.unpadded_equals(explanation, case, explain)
    assert verdict == ("ok", "2 compared"), verdict
    (name, relevance), = explanation.relevance.items()
    wrong = relevance.clone()
    wrong[1, -1] += 0.5 * float(relevance.abs().max()) + 1e-3
    tampered = replace(explanation, relevance={name: wrong})
    assert checks.unpadded_equals(tampered, case, explain)[0] == "fail"
