r"""Sweep types of the round-7 builders whose build exposed an engine gap: each is built tiny the
way the sweep builds it and must be explained with every independent check passing, or refused
with a message naming the modules at fault."""

from __future__ import annotations

import pytest
from model_types.run import run_type


def test_attention_only_under_no_grad_is_refused_by_name(one_thread):
    r"""XCodec's only attention is its HuBERT semantic model, run under ``torch.no_grad()`` (the
    audio comes back through discrete codes): the refusal names those attention modules and
    says why their tokens cannot be traced."""
    result = run_type("xcodec")
    assert result["outcome"] == "refused", result
    assert "semantic_model.encoder.layers.0.attention" in result["reason"], result
    assert "no_grad" in result["reason"] and result["names_module"], result


@pytest.mark.parametrize("model_type", ["neucodec", "nemotron3_5_transcribe_word_timestamp"])
def test_new_audio_builds_are_explained(model_type, one_thread):
    r"""A codec whose semantic encoder runs under ``no_grad`` beside a decoder transformer, and an
    upsampling encoder with a frame mask: explained, maps equal to the eager model's, the batch
    equal to its examples alone."""
    result = run_type(model_type)
    assert result["outcome"] == "explained", result
    for name in ("eager", "batch", "restored", "finite"):
        assert result["checks"][name][0] == "ok", (name, result["checks"][name])
