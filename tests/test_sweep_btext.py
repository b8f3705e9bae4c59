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


def test_gathered_query_rows_are_told_apart():
    r"""A softmax over ``Q[top_u] K^T`` (Informer's ProbSparse queries) has rows that are not the
    tokens in order; plain ``Q K^T`` (scaled, masked, reshaped) does."""
    import torch

    from captum_hetattn.capture.backends.softmax import _gathered_queries

    query = torch.randn(4, 6, 8, requires_grad=True)
    key = torch.randn(4, 6, 8, requires_grad=True)
    mask = torch.zeros(4, 6, 6)
    plain = torch.bmm(query.view(4, 6, 8), key.transpose(1, 2)) * 0.3 + mask
    picked = query[torch.arange(4)[:, None], torch.tensor([[5, 0, 3, 1, 2, 4]] * 4)]
    gathered = torch.bmm(picked, key.transpose(1, 2)) * 0.3 + mask
    assert not _gathered_queries(plain)
    assert _gathered_queries(gathered)


def test_prob_sparse_attention_is_left_out_not_misread(one_thread):
    r"""Informer (ProbSparse self-attention by default): explained from its full attention, the
    same relevance with and without maps (its random query order no longer leaks in)."""
    result = run_type("informer")
    assert result["outcome"] == "explained", result
    for name in ("maps-call", "eager", "batch", "restored"):
        assert result["checks"][name][0] == "ok", (name, result["checks"][name])
