r"""Vision types of the sweep with a trap for the explainer: OmDet-Turbo keeps its text towers'
outputs in LRU caches keyed by the ids, so a second call reads tensors (and graphs) of the first
and its task prompt is no source; the sweep's builder empties them before each call."""

from __future__ import annotations

import torch
from model_types.build import build
from model_types.run import _explain


def _same(first, second) -> bool:
    return sorted(first.relevance) == sorted(second.relevance) and all(
        torch.equal(first.relevance[name], second.relevance[name]) for name in first.relevance)


def test_omdet_turbo_reads_its_task_prompt_on_every_call(one_thread):
    case = build("omdet-turbo")
    _, first = _explain(case)
    _, with_maps = _explain(case, return_maps=True)
    assert "text" in first.relevance and first.relevance["text"].abs().sum() > 0
    assert _same(first, with_maps)
