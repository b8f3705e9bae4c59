r"""Sweep data for text model types (see :mod:`model_types.builders`): config values the
generic shrink cannot guess, as each type's own test suite sets them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(4321 + seed))


def _forecast_inputs(config: Any) -> list[dict[str, Tensor]]:
    r"""A batch of 2 series for the encoder-decoder forecasters: the context plus the lags the
    model reads before it, its time features, everything observed, and the future values and
    features the decoder reads (the way their own tests feed them)."""
    past = config.context_length + max(config.lags_sequence)
    future, features = config.prediction_length, config.num_time_features
    return [{"past_values": _randn(2, past),
             "past_time_features": _randn(2, past, features, seed=1),
             "past_observed_mask": torch.ones(2, past),
             "future_values": _randn(2, future, seed=2),
             "future_time_features": _randn(2, future, features, seed=3)}]


def _patch_series(config: Any) -> list[dict[str, Tensor]]:
    r"""Patch-based forecasters: ``(B, context, channels)`` series."""
    return [{"past_values": _randn(2, config.context_length, config.num_input_channels)}]


def _timesfm(config: Any, pad: int = 2) -> list[dict[str, Tensor]]:
    r"""TimesFM: two series of two patches, the second one shorter by ``pad`` steps (1 =
    padding; a wholly padded patch is a query that sees no key: :func:`_timesfm_mask`), with a
    frequency class each."""
    length = 2 * config.patch_length
    padding = torch.zeros(2, length)
    padding[1, :pad] = 1
    found = {"past_values": _randn(2, length), "past_values_padding": padding}
    if hasattr(config, "freq_size"):
        found["freq"] = torch.tensor([[0], [1]])
    return [found]

def _timesfm_mask(config: Any, named: dict[str, Tensor]) -> Tensor:
    r"""The patch tokens' mask (1 = real): a patch whose every step is padding is padding
    (TimesFM; TimesFM 2.5 reads a patch's last step, the same for a wholly padded patch)."""
    padding = named["past_values_padding"]
    patches = padding.view(padding.shape[0], -1, config.patch_length)
    return (patches.amin(dim=-1) < 0.5).long()


_ROPE = {"rope_type": "default", "rope_theta": 10000.0}

# a linear-attention layer and an indexed-attention layer; the token indexer keeps 4 of 8
_QWEN4 = {"num_hidden_layers": 2, "layer_types": ["linear_attention", "indexed_attention"],
          "hc_lowrank": 8, "ple_embed_dim": 32, "indexer_n_heads": 2, "indexer_kv_heads": 1,
          "indexer_head_dim": 16, "indexer_budget": 4, "indexer_compress_ratio": 2}

_FORECAST = {"prediction_length": 4, "context_length": 8, "lags_sequence": [1, 2, 3],
             "num_time_features": 2, "feature_size": 7}  # 3 lags + 2 features + loc and scale

# latent attention whose sliding-window heads are as wide as nope + rope parts
_DOTS3 = {"head_dim": 16, "index_n_heads": 2, "index_topk": 4,
          "shared_experts_intermediate_size": 64, "sliding_window": 4,
          "per_layer_config": {"02": {"num_attention_heads": 2, "num_key_value_heads": 2,
                                      "kv_lora_rank": 16, "qk_nope_head_dim": 8}}}

OVERRIDES: dict[str, dict[str, Any]] = {
    # time series: past values (and the features / masks their tests pass) are the inputs
    "autoformer": {"config": {**_FORECAST, "label_length": 4, "moving_average": 3},
                   "inputs": _forecast_inputs},
    "informer": {"config": _FORECAST, "inputs": _forecast_inputs},
    "time_series_transformer": {"config": _FORECAST, "inputs": _forecast_inputs},
    "patchtst": {"config": {"context_length": 16, "patch_length": 4, "patch_stride": 4,
                            "num_input_channels": 2}, "inputs": _patch_series},
    "patchtsmixer": {"config": {"context_length": 16, "patch_length": 4, "patch_stride": 4,
                                "num_input_channels": 2}, "inputs": _patch_series},
    "timesfm": {"config": {"patch_length": 4, "context_length": 8, "horizon_length": 4},
                "inputs": _timesfm, "mask": _timesfm_mask},
    # a wholly padded first patch (TimesFM alone would have one patch token less: its batch
    # check stays on the 2-step pad)
    "timesfm2_5": {"config": {"patch_length": 4, "context_length": 8, "horizon_length": 4,
                              "output_quantile_len": 8},
                   "inputs": lambda config: _timesfm(config, config.patch_length),
                   "mask": _timesfm_mask},
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
    # image tokens of the VQ tokenizer in the vocabulary (two of them; the prompts are text)
    "emu3": {"config": {"vocabulary_map": {
        "<|extra_200|>": 94, "<image>": 98, "<|visual token 000000|>": 95,
        "<|visual token 000001|>": 96}, "text_config": {"pad_token_id": 0}},
        "head": ("base", "Emu3Model")},
    # latent attention: rotary over half of a 16-wide head, as in the full model's proportions
    "mistral4": {"config": {"head_dim": 16}},
    # one layer per stack, one high-level cycle of one low-level step: 1 * 1 * (1 + 1) layers
    "hrm_text": {"config": {"num_layers_per_stack": 1, "H_cycles": 1, "L_cycles": 1,
                            "L_bp_cycles": [1], "num_hidden_layers": 2}},
    "qwen4_exp_text": {"config": _QWEN4},
    "qwen4_exp": {"config": {"text_config": _QWEN4}},
    "t5gemma2_encoder": {"config": {"text_config": {"dropout_rate": 0.0}}},
    # byte patches: local encoder / decoder as wide as the global model, a small hash table
    "blt": {"config": {"num_hidden_layers": 2, "encoder_hash_byte_group_vocab": 101,
                       "encoder_config": {"hidden_size_global": 32},
                       "decoder_config": {"hidden_size_global": 32}}},
    # a sliding-window layer, then an indexed-attention layer that keeps 4 pooled keys
    "kolibri1_1": {"config": {"num_hidden_layers": 2, "layer_types": [
        "sliding_attention", "indexed_attention"], "index_layers": [1], "kv_source_layers": [0, 1],
        "mlp_only_layers": [0], "mlp_only_intermediate_size": 64, "index_topk": 4,
        "index_pool_size": 16, "index_compression": 2, "index_num_local_tokens": 2,
        "index_num_sink_tokens": 1, "sliding_window": 4}},
    # one input, one recurrent (looped twice) and one output layer
    # (stored as blocks: each attention block is followed by an mlp block, counts doubled)
    "dory": {"config": {"num_hidden_layers": 6, "layer_types": [
        "sliding_attention", "mlp", "sliding_attention", "mlp", "full_attention", "mlp"],
        "n_input_layers": 2, "n_recurrent_layers": 2, "n_output_layers": 2, "sliding_window": 4}},
    "dots3_note_text": {"config": _DOTS3},
    "dots3_note": {"config": {"text_config": _DOTS3,  # adapters as wide as both towers
                              "vision_config": {"adapter_in_dim": 32, "adapter_out_dim": 32},
                              "audio_config": {"adapter_input_size": 32,
                                               "adapter_out_dim": 32}}},
    # Mamba-2 mixers: heads × head size = expand × hidden, one group
    "nemotron_h": {"config": {"mamba_num_heads": 4, "mamba_head_dim": 16, "expand": 2,
                              "n_groups": 1, "ssm_state_size": 8, "chunk_size": 8,
                              "moe_shared_expert_intermediate_size": 64}},
    "zamba2": {"config": {"num_hidden_layers": 2, "layers_block_type": [
        "linear_attention", "hybrid"], "hybrid_layer_ids": [1], "mamba_headdim": 16,
        "n_mamba_heads": 4, "mamba_d_state": 8, "chunk_size": 8, "attention_hidden_size": 64,
        "kv_channels": 16, "num_query_groups": 2, "adapter_rank": 8}},
    # two hybrid layers share one attention block (the second ties to the first)
    "zamba": {"config": {"num_hidden_layers": 4, "attn_layer_period": 2, "attn_layer_offset": 1,
                         "layers_block_type": ["linear_attention", "hybrid"] * 2,
                         "attention_hidden_size": 64, "mamba_dt_rank": 2, "mamba_d_state": 8}},
    # a sliding-window and a global layer, no shared key/value layers, small per-layer inputs
    "gemma3n_text": {"config": {"num_hidden_layers": 2, "layer_types": [
        "sliding_attention", "full_attention"], "intermediate_size": [64, 64],
        "activation_sparsity_pattern": [0.95, 0.0], "num_kv_shared_layers": 0,
        "vocab_size_per_layer_input": 99, "hidden_size_per_layer_input": 8, "laurel_rank": 8,
        "sliding_window": 4}},
    # routed experts beside the dense MLP; the global layer's heads as wide as the others
    "diffusion_gemma": {"config": {"text_config": {
        "num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 64, "sliding_window": 4,
        "per_layer_config": {"05": {"head_dim": 16}}}}},
    # layout: box embeddings as wide as a head (Bros), six box parts per hidden (LiLT)
    "bros": {"config": {"dim_bbox_projection": 16, "dim_bbox_sinusoid_emb_2d": 32,
                        "dim_bbox_sinusoid_emb_1d": 4}},
    "lilt": {"config": {"hidden_size": 24, "intermediate_size": 48}},
    # the drafter reads the target's hidden states of its 2 chosen layers, in blocks of 4
    "muse_glimmer_assistant": {"config": {"target_layer_ids": [0, 1], "block_size": 4,
                                          "sliding_window": 4}},
    # recurrent models without attention over tokens (they are refused by name)
    "rwkv": {"config": {"attention_hidden_size": 32}},
    "xlstm": {"config": {"chunk_size": 4}, "kwargs": {"use_cache": False}},
    # language adapters: the one language the tiny model has
    "xmod": {"config": {"default_language": "en_XX"}},
    # the speech tokenizer has no projection around its quantizer
    # (image then audio codes at the top of the tiny vocabulary: 16 each from id 60)
    "apertus1p5": {"config": {"audio_config": {"codebook_dim": 32, "codebook_size": 16},
                              "vision_config": {"codebook_size": 16},
                              "image_token_offset": 60, "audio_token_offset": 76}},
}
def _diffusion_gemma() -> Any:
    r"""DiffusionGemma denoising a fixed canvas of 4 tokens (without one it draws a random canvas
    in every forward) after a prompt (example 1 padded); the canvas reads the prompt's real
    tokens only (``decoder_attention_mask``, the prompt mask then the canvas), scored on the
    canvas' mean hidden state."""
    import transformers

    from model_types.build import Case, _ids_and_mask, _score, tiny_config

    config = tiny_config("diffusion_gemma")
    torch.manual_seed(0)
    model = transformers.DiffusionGemmaModel(config).eval()
    ids, mask = _ids_and_mask(config.text_config)
    canvas = torch.randint(5, 60, (2, 4), generator=torch.Generator().manual_seed(7))

    def forward(prompt: Tensor, noisy: Tensor, prompt_mask: Tensor) -> Tensor:
        seen = torch.cat([prompt_mask, torch.ones_like(noisy)], dim=1)
        output = model(input_ids=prompt, decoder_input_ids=noisy, attention_mask=prompt_mask,
                       decoder_attention_mask=seen)
        return _score(output, "base", None)

    return Case("diffusion_gemma", "base", "DiffusionGemmaModel", model, forward, (ids, canvas),
                (mask,), 1, mask, ["inputs: input_ids, decoder_input_ids (a fixed canvas)"])


def _boxes(scale: float, integer: bool) -> Tensor:
    r"""``(2, LENGTH, 4)`` ordered boxes (``x0 <= x1``, ``y0 <= y1``) within ``0..scale``."""
    from model_types.build import LENGTH

    corners = torch.rand(2, LENGTH, 2, 2, generator=torch.Generator().manual_seed(11))
    low, high = corners.min(dim=2).values, corners.max(dim=2).values
    boxes = torch.cat([low, high], dim=-1) * scale  # x0, y0, x1, y1
    return boxes.round().long() if integer else boxes


def _layout(model_type: str, class_name: str, head: str, scale: float, integer: bool) -> Any:
    r"""A layout model: ids (example 1 padded) with a box per token; the boxes go beside the
    mask (each example keeps its own), the ids are attributed."""
    import transformers

    from model_types.build import Case, _ids_and_mask, _score, tiny_config

    config = tiny_config(model_type)
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(config).eval()
    ids, mask = _ids_and_mask(config)
    extra = {}
    if head == "seq2seq":
        extra["decoder_input_ids"] = torch.full((1, 2), config.pad_token_id)

    def forward(input_ids: Tensor, attention_mask: Tensor, bbox: Tensor) -> Tensor:
        decoder = {k: v.expand(input_ids.shape[0], -1) for k, v in extra.items()}
        output = model(input_ids=input_ids, attention_mask=attention_mask, bbox=bbox, **decoder)
        return _score(output, head, attention_mask)

    target = 7 if head == "seq2seq" else 1
    return Case(model_type, head, class_name, model, forward, (ids,),
                (mask, _boxes(scale, integer)), target, mask, ["inputs: input_ids, bbox"])


def _decision_transformer() -> Any:
    r"""Decision Transformer on a trajectory of 8 steps (returns-to-go, state, action per step,
    interleaved into 24 tokens by the model); states are attributed, the rest goes beside them.
    Scored on the mean last hidden state (the action prediction reads it)."""
    import transformers

    from model_types.build import LENGTH, Case, _score, tiny_config

    config = tiny_config("decision_transformer")
    torch.manual_seed(0)
    model = transformers.DecisionTransformerModel(config).eval()
    states = _randn(2, LENGTH, config.state_dim)
    actions, returns = _randn(2, LENGTH, config.act_dim, seed=1), _randn(2, LENGTH, 1, seed=2)
    rewards, steps = _randn(2, LENGTH, 1, seed=3), torch.arange(LENGTH).repeat(2, 1)

    def forward(state: Tensor, action: Tensor, to_go: Tensor, reward: Tensor,
                timesteps: Tensor) -> Tensor:
        output = model(states=state, actions=action, returns_to_go=to_go, rewards=reward,
                       timesteps=timesteps, attention_mask=torch.ones_like(timesteps))
        return _score(output, "base", None)

    return Case("decision_transformer", "base", "DecisionTransformerModel", model, forward,
                (states,), (actions, returns, rewards, steps), 1, None,
                ["inputs: states (actions, returns-to-go, rewards, timesteps beside them)"])


def _pi0(model_type: str, class_name: str) -> Any:
    r"""PI0 / PI0.5: one 32-px camera image and a prompt (example 1 padded) as the prefix, a chunk
    of noisy action embeddings denoised by the action expert, scored on its mean hidden state;
    prompt, image and actions attributed."""
    import transformers

    from model_types.build import Case, _ids_and_mask, _score, tiny_config

    config = tiny_config(model_type)
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():  # PI0.5's adaptive norms start at zero gates (a trained one's are not)
        for name, weight in model.named_parameters():
            if "dit." in name and ".dense." in name:
                weight.normal_(0.0, 0.2)
    text, text_mask = _ids_and_mask(config.vlm_config.text_config)
    pixels = _randn(2, 1, 3, 32, 32, seed=9)
    actions = _randn(2, config.chunk_size, config.dit_config.hidden_size, seed=10)
    with torch.no_grad():
        image_tokens = model.vlm.get_image_features(pixels.flatten(0, 1)).pooler_output.shape[1]
    # the prompt starts with one placeholder per image token, as the processor writes it
    ids = torch.cat([torch.full((2, image_tokens), config.vlm_config.image_token_id), text], 1)
    mask = torch.cat([torch.ones(2, image_tokens, dtype=text_mask.dtype), text_mask], 1)

    # PI0.5 modulates its expert's norms by the denoising step's embedding
    step = (_randn(2, config.dit_config.hidden_size, seed=12),) if model_type == "pi05" else ()

    def forward(input_ids: Tensor, pixel_values: Tensor, action_embeds: Tensor,
                attention_mask: Tensor, *timestep: Tensor) -> Tensor:
        extra = {"timestep_embeds": timestep[0]} if timestep else {}
        output = model(action_embeds=action_embeds, input_ids=input_ids,
                       pixel_values=pixel_values, attention_mask=attention_mask,
                       pixel_attention_mask=attention_mask.new_ones(attention_mask.shape[0], 1),
                       **extra)
        return _score(output, "base", None)

    return Case(model_type, "base", class_name, model, forward, (ids, pixels, actions),
                (mask, *step),
                1, mask, ["inputs: input_ids, pixel_values, action_embeds"])


def _drafter() -> Any:
    r"""The speculative drafter: a block of noisy embeddings after 6 accepted tokens' target
    hidden states (the mask covers both, as its docs ask), both attributed."""
    import transformers

    from model_types.build import Case, _score, tiny_config

    config = tiny_config("muse_glimmer_assistant")
    torch.manual_seed(0)
    model = transformers.MuseGlimmerAssistantModel(config).eval()
    width = config.hidden_size * len(config.target_layer_ids)
    noise = _randn(2, config.block_size, config.hidden_size)
    context = _randn(2, 6, width, seed=1)
    mask = torch.ones(2, 6 + config.block_size, dtype=torch.long)

    def forward(noise_embeds: Tensor, context_hidden_states: Tensor,
                attention_mask: Tensor) -> Tensor:
        output = model(noise_embeds=noise_embeds, context_hidden_states=context_hidden_states,
                       attention_mask=attention_mask)
        return _score(output, "base", None)

    return Case("muse_glimmer_assistant", "base", "MuseGlimmerAssistantModel", model, forward,
                (noise, context), (mask,), 1, None,
                ["inputs: noise_embeds, context_hidden_states"])


BUILDERS: dict[str, Any] = {
    "muse_glimmer_assistant": _drafter,
    "pi0": lambda: _pi0("pi0", "PI0Model"),
    "pi05": lambda: _pi0("pi05", "PI05Model"),
    "decision_transformer": _decision_transformer,
    "diffusion_gemma": _diffusion_gemma,
    "bros": lambda: _layout("bros", "BrosModel", "base", 1.0, False),
    "lilt": lambda: _layout("lilt", "LiltForSequenceClassification", "classifier", 1000, True),
    "udop": lambda: _layout("udop", "UdopForConditionalGeneration", "seq2seq", 1.0, False),
}
SKIP: dict[str, str] = {
    "layoutlmv2": "its visual backbone needs detectron2, which is not installable here",
}
