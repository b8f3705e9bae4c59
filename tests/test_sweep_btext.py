r"""Sweep types of the btext round whose build exposed an engine bug: each is built tiny the way
the sweep builds it and must be explained with every independent check passing."""

from __future__ import annotations

import pytest
from model_types.run import run_type


@pytest.mark.parametrize("model_type", ["dots3_note_text"])
def test_sparse_indexer_keys_are_the_models(model_type, one_thread):
    r"""Indexer (sparse) attention hands its selected keys to non-eager kernels as ``indices``:
    the recorded maps must hide every key the indexer did not select (the eager model's
    softmax), and a key no query selected must not be taken for padding."""
    result = run_type(model_type)
    assert result["outcome"] == "explained", result
    for name in ("eager", "rule", "batch", "padding", "restored"):
        assert result["checks"][name][0] == "ok", (name, result["checks"][name])


def test_recurrent_model_with_in_place_state_is_refused_by_name(one_thread):
    r"""RWKV updates its recurrent state in place, so its mixer's own graph cannot be walked
    backwards: the mixer is reported (not a crash) and the model refused, naming it."""
    result = run_type("rwkv")
    assert result["outcome"] == "refused", result
    assert "rwkv.blocks.0.attention" in result["reason"] and result["names_module"], result
