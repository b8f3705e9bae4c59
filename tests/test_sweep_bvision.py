r"""Vision types of the sweep that exposed engine bugs: a token that feeds a row by a negligible
trace (1e-13 of the largest gradient) must not count as feeding it, else the junction's equal
shares (and the relevance) change from one call to the next with the random probe weights."""

from __future__ import annotations

import torch
from model_types.build import build
from model_types.run import _explain

from captum_hetattn.binding.probes import NEGLIGIBLE, _token_support


def test_a_negligible_gradient_does_not_feed():
    grad = torch.zeros(2, 4, 3)
    grad[0, 0] = 1.0
    grad[0, 1] = 1e-3  # small but real
    grad[1, 2] = NEGLIGIBLE / 10  # a rounding trace
    support = _token_support(grad, grad, 1, 2)
    assert support.tolist() == [[True, True, False, False], [False, False, False, False]]
    assert not _token_support(torch.zeros(2, 4, 3), grad, 1, 2).any()


def _same(first, second) -> bool:
    return sorted(first.relevance) == sorted(second.relevance) and all(
        torch.equal(first.relevance[name], second.relevance[name]) for name in first.relevance)


def test_grounding_dino_relevance_is_the_same_call_to_call(one_thread):
    case = build("grounding-dino")
    _, first = _explain(case)
    _, second = _explain(case)
    _, with_maps = _explain(case, return_maps=True)
    assert "text" in first.relevance and first.relevance["text"].abs().sum() > 0
    assert _same(first, second) and _same(first, with_maps)


def test_omdet_turbo_reads_its_task_prompt_on_every_call(one_thread):
    # its text caches would hand a second call the first call's tensors: no 'text' source
    case = build("omdet-turbo")
    _, first = _explain(case)
    _, with_maps = _explain(case, return_maps=True)
    assert "text" in first.relevance and _same(first, with_maps)
