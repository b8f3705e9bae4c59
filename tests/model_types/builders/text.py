r"""Sweep data for text model types (see :mod:`model_types.builders`): config values the
generic shrink cannot guess, as each type's own test suite sets them."""

from __future__ import annotations

from typing import Any

_ROPE = {"rope_type": "default", "rope_theta": 10000.0}

# a linear-attention layer and an indexed-attention layer; the token indexer keeps 4 of 8
_QWEN4 = {"num_hidden_layers": 2, "layer_types": ["linear_attention", "indexed_attention"],
          "hc_lowrank": 8, "ple_embed_dim": 32, "indexer_n_heads": 2, "indexer_kv_heads": 1,
          "indexer_head_dim": 16, "indexer_budget": 4, "indexer_compress_ratio": 2}

OVERRIDES: dict[str, dict[str, Any]] = {
    # grouped-query attention needs its key/value head count
    "nemotron": {"config": {"num_key_value_heads": 2}},
    # the attention sub-config reads its own rotary base
    "dbrx": {"config": {"attn_config": {"rope_theta": 10000.0, "clip_qkv": 8.0}}},
    # rotary parameters per layer type
    "cohere_compass_text": {"config": {"rope_parameters": {"full_attention": _ROPE}}},
    "cohere_compass": {"config": {"text_config": {"rope_parameters": {"full_attention": _ROPE}}}},
    # routed experts must be counted
    "dots1": {"config": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1}},
    # one short-convolution layer, one attention layer; the second one routed
    "lfm2_moe": {"config": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1}},
    "emu3": {"config": {"pad_token_id": 0, "text_config": {"pad_token_id": 0}}},
    # latent attention: rotary over half of a 16-wide head, as in the full model's proportions
    "mistral4": {"config": {"head_dim": 16}},
    # one layer per stack, one high-level cycle of one low-level step: 1 * 1 * (1 + 1) layers
    "hrm_text": {"config": {"num_layers_per_stack": 1, "H_cycles": 1, "L_cycles": 1,
                            "L_bp_cycles": [1], "num_hidden_layers": 2}},
    "qwen4_exp_text": {"config": _QWEN4},
    "qwen4_exp": {"config": {"text_config": _QWEN4}},
    "t5gemma2_encoder": {"config": {"text_config": {"dropout_rate": 0.0}}},
    "blt": {"config": {"num_hidden_layers": 2}},
}
BUILDERS: dict[str, Any] = {}
SKIP: dict[str, str] = {}
