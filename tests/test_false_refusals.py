r"""Refusals that were false or unclear (issue 19: "a refusal that is wrong is a bug"): each
model is built tiny from its config here; each case was refused before its fix.

- Qwen4-Exp's indexed attention folds its key selection into the mask it hands on: a key no
  query selected read as padding ("reads only padding" on a real last token).
- NemotronAsr's streaming encoder turns its mask with ``logical_not()``: under the eager
  (additive) mask the capture used to build, that hid every key ("the mask hides every token").
- inkling2's zero-initialised depth queries (attention over each token's block states) were
  bound as attention over tokens, and a junction between them refused.
- DAB-DETR's decoder self-attention hands its keys as a tensor of their own (content plus
  position projections): recorded as cross, refused against the self node *we* inferred.
- Dia's logits fold the audio channels into the batch: refused by a layout that found no
  ``(batch=6, tokens)`` rows, now by the score's shape.
- TimesFM with a wholly padded patch: the padded patch's feeds made the layout differ between
  examples.
"""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from captum_hetattn import HeterogenousAttentionAttribution  # noqa: E402


def _explain(model, forward, inputs, extra=(), **kwargs):
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = explainer.explain(inputs, target=1, additional_forward_args=extra or None,
                                        **kwargs)
    for relevance in explanation.relevance.values():
        assert bool(torch.isfinite(relevance).all())
    assert model.training is False
    return explanation, [str(w.message) for w in caught]


def test_a_key_no_indexed_query_selects_is_not_padding():
    from transformers import Qwen4ExpForCausalLM, Qwen4ExpTextConfig

    torch.manual_seed(0)
    config = Qwen4ExpTextConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_num_key_heads=2, linear_num_value_heads=2, moe_intermediate_size=64,
        shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
        max_position_embeddings=128, layer_types=["linear_attention", "indexed_attention"],
        hc_lowrank=8, ple_embed_dim=32, indexer_n_heads=2, indexer_kv_heads=1,
        indexer_head_dim=16, indexer_budget=4, indexer_compress_ratio=2, pad_token_id=0)
    model = Qwen4ExpForCausalLM(config).eval()
    ids = torch.randint(5, 90, (2, 8), generator=torch.Generator().manual_seed(1234))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, -3:] = 0

    def forward(i, m):
        return model(input_ids=i, attention_mask=m).logits[torch.arange(2), m.sum(1) - 1]

    # the indexer keeps 2 blocks of 2 keys for each query: some real key is selected by none
    # in this batch (the case that was refused: the last token of example 0)
    explanation, _ = _explain(model, forward, (ids,), (mask,))
    relevance = explanation.relevance["text"]
    assert bool((relevance[1, 5:] == 0).all())  # the real padding is still no token
    assert bool(relevance[0].any()) and bool(relevance[1, :5].any())


def test_a_mask_the_model_inverts_with_logical_not_hides_nothing():
    from transformers import NemotronAsrStreamingEncoder, NemotronAsrStreamingEncoderConfig

    torch.manual_seed(0)
    config = NemotronAsrStreamingEncoderConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        subsampling_conv_channels=32, num_mel_bins=80, max_position_embeddings=128,
        dropout=0.0, layerdrop=0.0, activation_dropout=0.0, attention_dropout=0.0)
    model = NemotronAsrStreamingEncoder(config).eval()
    features = torch.randn(2, 64, 80, generator=torch.Generator().manual_seed(0))

    def forward(x):
        return model(input_features=x).last_hidden_state.mean(1)[:, :4]

    with torch.no_grad():
        expected = forward(features)
    explanation, _ = _explain(model, forward, (features,))
    assert all(bool(r.any()) for r in explanation.relevance.values())
    with torch.no_grad():
        torch.testing.assert_close(forward(features), expected)  # the model as it was


def test_zero_initialised_depth_queries_are_left_out_as_attention_over_depth():
    from transformers.models.inkling2.configuration_inkling2 import Inkling2TextConfig
    from transformers.models.inkling2.modeling_inkling2 import Inkling2ForCausalLM

    torch.manual_seed(0)
    config = Inkling2TextConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, swa_num_attention_heads=2,
        swa_num_key_value_heads=2, swa_head_dim=16, d_rel=16, moe_intermediate_size=64,
        n_routed_experts=4, num_experts_per_tok=2, max_position_embeddings=64, pad_token_id=0,
        layer_types=["hybrid_sliding", "hybrid"])
    model = Inkling2ForCausalLM(config).eval()
    assert not any(bool(p.any()) for n, p in model.named_parameters() if n.endswith(".query"))
    ids = torch.randint(5, 90, (2, 6), generator=torch.Generator().manual_seed(1))
    explanation, messages = _explain(model, lambda i: model(input_ids=i).logits[:, -1], (ids,))
    depth = [m for m in messages if "attention over depth" in m]
    assert any("'model.layers.1.attention_input'" in m for m in depth)
    assert any("'model.final_input'" in m for m in depth)
    assert list(explanation.relevance) == ["text"] and bool(explanation.relevance["text"].any())


def test_decoder_self_attention_with_keys_of_their_own_binds_as_self():
    from transformers import DabDetrConfig, DabDetrModel, ResNetConfig

    torch.manual_seed(0)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1],
                            layer_type="bottleneck", out_features=["stage4"])
    config = DabDetrConfig(
        backbone_config=backbone, num_queries=5, encoder_layers=2, decoder_layers=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
        decoder_attention_heads=2, hidden_size=32, dropout=0.0)
    model = DabDetrModel(config).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    explanation, _ = _explain(model, lambda x: model(pixel_values=x).last_hidden_state.mean(1),
                              (pixels,))
    assert any(bool(r.any()) for r in explanation.relevance.values())
    # layer 0's queries are zero content plus positions: its keys are the positions' stream;
    # layer 1's keys are its queries' tokens again, each with a position term of its own
    second = [c for c in explanation.calls if c.name == "decoder.layers.1.self_attn.self_attn"]
    assert len(second) == 1
    assert second[0].query == second[0].key == "target" and not second[0].node.is_cross


def test_scores_with_rows_per_channel_are_refused_by_their_shape():
    from transformers import DiaConfig, DiaForConditionalGeneration

    torch.manual_seed(0)
    config = DiaConfig(
        encoder_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
                        "vocab_size": 99},
        decoder_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                        "cross_num_attention_heads": 2, "cross_head_dim": 16,
                        "cross_num_key_value_heads": 2, "cross_hidden_size": 32,
                        "vocab_size": 40, "num_channels": 3},
        delay_pattern=[0, 1, 2])
    model = DiaForConditionalGeneration(config).eval()
    ids = torch.randint(5, 90, (2, 8), generator=torch.Generator().manual_seed(9))
    codes = torch.randint(5, 40, (2, 4, 3), generator=torch.Generator().manual_seed(10))

    def forward(i, c):  # (2·3, vocab): one row per example and audio channel
        return model(input_ids=i, decoder_input_ids=c).logits[:, -1]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with pytest.raises(ValueError, match=r"forward_func returns scores of shape \(6,\): 3 rows "
                                         r"for each of the 2 examples.*return \(2, \.\.\.\)"):
        explainer.explain((ids,), target=1, additional_forward_args=(codes,))


@pytest.mark.parametrize("version", ["timesfm", "timesfm2_5"])
def test_a_wholly_padded_patch_is_padding(version):
    if version == "timesfm":
        from transformers import TimesFmConfig as Config
        from transformers import TimesFmModel as Model
        extra, freq = {"freq_size": 3}, (torch.tensor([[0], [1]]),)
    else:
        from transformers import TimesFm2_5Config as Config
        from transformers import TimesFm2_5Model as Model
        extra, freq = {"output_quantile_len": 8, "num_key_value_heads": 2}, ()
    torch.manual_seed(0)
    config = Config(patch_length=4, context_length=8, horizon_length=4, hidden_size=32,
                    intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    head_dim=16, **extra)
    model = Model(config).eval()
    values = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    padding = torch.zeros(2, 8)
    padding[1, :4] = 1  # example 1: its first patch is padding

    seen = []

    def forward(x, pad, *f):
        extra = dict(zip(["freq"], f, strict=False))
        hidden = model(past_values=x, past_values_padding=pad, **extra).last_hidden_state
        seen.append(hidden.detach())
        real = (pad.view(2, -1, 4).amin(-1) < 0.5).to(hidden.dtype)[..., None]
        return (hidden * real).sum(1)[:, :4] / real.sum(1)

    with torch.no_grad():
        forward(values, padding, *freq)
    explanation, _ = _explain(model, forward, (values, padding), freq)
    # the model explained is the model as it runs: sdpa gives the padded patch's row zero,
    # where an additive mask would give it a uniform row
    torch.testing.assert_close(seen[1], seen[0])
    patches = [r for r in explanation.relevance.values() if r.shape == (2, 2)]
    for relevance in patches:
        assert float(relevance[1, 0]) == 0.0  # the padded patch is no token
    assert any(bool(r.any()) for r in explanation.relevance.values())
