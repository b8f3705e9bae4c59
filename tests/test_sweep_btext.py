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
