r"""Sweep types of the round-7 builders whose build exposed an engine gap: each is built tiny the
way the sweep builds it and must be explained with every independent check passing, or refused
with a message naming the modules at fault."""

from __future__ import annotations

import pytest
import torch
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


class _ScalesInPlace(torch.nn.Module):
    r"""Multiplies its input in place before a self-attention layer (TVP's frame-pad prompter
    does this to its pixels)."""

    def __init__(self) -> None:
        super().__init__()
        self.prompter = _Prompter()
        self.attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prompter(x)
        return self.attention(x, x, x)[0].mean(1)


class _Prompter(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x *= torch.ones(x.shape[-1])
        return x


def test_input_modified_in_place_is_refused_by_name():
    r"""A model that writes its float input in place cannot run on the leaf tensors the inputs
    are traced as: refused naming the module that wrote it and the way out (a copy), which then
    explains."""
    from captum_hetattn import HeterogenousAttentionAttribution

    torch.manual_seed(0)
    model = _ScalesInPlace().eval()
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"in place \(in 'prompter', _Prompter\).*clone"):
        HeterogenousAttentionAttribution(model, model=model).explain((x,), target=1)
    copied = HeterogenousAttentionAttribution(lambda t: model(t.clone()), model=model)
    explanation = copied.explain((x,), target=1)
    assert explanation.relevance and all(bool(torch.isfinite(r).all())
                                         for r in explanation.relevance.values())


def test_tvp_batch_of_one_is_explained(one_thread):
    r"""TVP (only a batch of 1 runs), its pixels passed as a copy: explained, every check ok."""
    result = run_type("tvp")
    assert result["outcome"] == "explained", result
    for name in ("eager", "restored", "finite", "maps-call"):
        assert result["checks"][name][0] == "ok", (name, result["checks"][name])
