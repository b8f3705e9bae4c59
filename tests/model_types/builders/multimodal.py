r"""Sweep data for multimodal model types (see :mod:`model_types.builders`): config values the
generic shrink cannot guess, as each type's own test suite sets them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _video_and_text(frames: int, size: int = 32) -> Any:
    r"""Ids (example 1 padded) beside a clip of ``frames`` frames ``(B, T, C, H, W)``."""

    def inputs(config: Any) -> list[dict[str, Tensor]]:
        from model_types.build import _ids_and_mask

        text = getattr(config, "text_config", None) or config
        clip = torch.randn(2, frames, 3, size, size, generator=torch.Generator().manual_seed(5))
        return [{"input_ids": _ids_and_mask(text)[0], "pixel_values": clip}]

    return inputs


def _qformer(config: Any) -> list[dict[str, Tensor]]:
    r"""The Q-Former alone: 8 learned queries reading 6 image features (the vision tower's output
    in BLIP-2), both attributed."""
    draw = torch.Generator().manual_seed(6)
    return [{"query_embeds": torch.randn(2, 8, config.hidden_size, generator=draw),
             "encoder_hidden_states": torch.randn(2, 6, config.encoder_hidden_size,
                                                  generator=draw)}]


def _idefics() -> Any:
    r"""IDEFICS: a prompt (example 1 padded) whose every token may read one 32-px image through
    the gated cross-attention layers (gates opened: zero-initialised gates hide the image);
    ids and pixels attributed, the masks beside them."""
    import transformers

    from model_types.build import LENGTH, Case, _ids_and_mask, _score, tiny_config

    config = tiny_config("idefics")
    torch.manual_seed(0)
    model = transformers.IdeficsModel(config).eval()
    ids, mask = _ids_and_mask(config)
    pixels = torch.randn(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    image_mask = torch.ones(2, LENGTH, 1, dtype=torch.long)

    def forward(input_ids: Tensor, pixel_values: Tensor, attention_mask: Tensor,
                image_attention_mask: Tensor) -> Tensor:
        output = model(input_ids=input_ids, pixel_values=pixel_values,
                       attention_mask=attention_mask, image_attention_mask=image_attention_mask)
        return _score(output, "base", attention_mask)

    return Case("idefics", "base", "IdeficsModel", model, forward, (ids, pixels),
                (mask, image_mask), 1, mask, ["inputs: input_ids, pixel_values"])


def _video_prompt(config: Any) -> list[dict[str, Tensor]]:
    r"""InstructBLIP-Video: a 2-frame clip, the Q-Former's instruction, and the language
    model's prompt led by one video placeholder per query token and frame."""
    from model_types.build import _ids_and_mask

    frames = 2
    clip = torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    text = _ids_and_mask(config.text_config)[0]
    slots = torch.full((2, config.num_query_tokens * frames), config.video_token_index)
    return [{"pixel_values": clip, "qformer_input_ids": text,
             "input_ids": torch.cat([slots, text], dim=1)}]


def _align() -> Any:
    r"""ALIGN as the generic build makes it, its EfficientNet's convolutions re-drawn with
    He-normal weights: at the config's init (normal, std 0.02) every block shrinks the features
    ~20×, they reach 1e-25 and the L2-normalised image embeddings are infinite (a trained
    tower's are not)."""
    from model_types.build import _try_class, tiny_config

    case = _try_class("align", tiny_config("align"), "base", "AlignModel")
    draw = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in case.model.vision_model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, generator=draw)
    case.notes.append("image tower: He-normal convolutions")
    return case


def _prompt(image_tokens: int, token: int, lead: int = 2, text: int = 6) -> tuple[Tensor, Tensor]:
    r"""Ids ``lead`` text tokens, ``image_tokens`` placeholders ``token``, ``text`` text tokens
    (example 1's last 3 are padding, id 0) and their mask."""
    draw = torch.Generator().manual_seed(11)
    ids = torch.cat([torch.randint(5, 60, (2, lead), generator=draw),
                     torch.full((2, image_tokens), token),
                     torch.randint(5, 60, (2, text), generator=draw)], dim=1)
    mask = torch.ones_like(ids)
    ids[1, -3:], mask[1, -3:] = 0, 0
    return ids, mask


def _deepseek_ocr2() -> Any:
    r"""Its test's SAM (16 px in patches of 2, windows of 4, one global layer, two stride-2
    convolutions) and query encoder: 144 learned queries + a separator = 145 image tokens per
    image in a prompt whose example 1 ends in padding."""
    from .audio import _case

    ids, mask = _prompt(145, 98)
    sam = {"hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2,
           "num_attention_heads": 2, "image_size": 16, "patch_size": 2, "window_size": 4,
           "global_attn_indexes": [1], "downsample_channels": [32, 64]}
    encoder = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "num_key_value_heads": 2}
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(12))
    return _case("deepseek_ocr2", "DeepseekOcr2ForConditionalGeneration",
                 {"image_token_id": 98, "vision_config": {"sam_config": sam,
                                                          "encoder_config": encoder},
                  "text_config": {"mlp_layer_types": ["dense", "sparse"], "pad_token_id": 0}},
                 {"input_ids": ids, "pixel_values": pixels}, {"attention_mask": mask},
                 head="lm", mask=mask)


def _granite4_vision() -> Any:
    r"""Its test's sizes: a CLIP tower 64 wide (the window Q-Former has one head per 64
    channels) over 2 views of 8 px in patches of 2, downsampled by 1/2 into 10 image tokens per
    image (2×2 base + 2×2 view + 2 newlines), injected into the first LLM layer."""
    from .audio import _case

    ids, mask = _prompt(10, 98)
    pixels = torch.randn(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(13))
    return _case("granite4_vision", "Granite4VisionForConditionalGeneration",
                 {"image_token_index": 98, "image_grid_pinpoints": [[8, 8]],
                  "downsample_rate": "1/2", "deepstack_layer_map": [[1, 0]],
                  "projector_dropout": 0.0, "qformer_config": {"intermediate_size": 64},
                  "vision_config": {"hidden_size": 64, "intermediate_size": 64,
                                    "num_attention_heads": 2, "image_size": 8,
                                    "patch_size": 2, "projection_dim": 64},
                  "text_config": {"pad_token_id": 0}},
                 {"input_ids": ids, "pixel_values": pixels},
                 {"attention_mask": mask, "image_sizes": torch.tensor([[8, 8], [8, 8]])},
                 head="lm", mask=mask)


def _glm_image_vqmodel() -> Any:
    r"""GLM-Image's frozen VQ tokenizer has no ``forward``: GLM-Image calls its ``encode`` on
    vision-tower features ``(B, latent_channels, H, W)``; scored on its quantized latents (1×1
    convolutions and a codebook lookup)."""
    import transformers

    from model_types.build import Case

    from .audio import _config

    config = _config("glm_image_vqmodel", {"embed_dim": 16, "num_embeddings": 32,
                                           "latent_channels": 32})
    torch.manual_seed(0)
    model = transformers.GlmImageVQVAE(config).eval()

    def forward(hidden_states: Tensor) -> Tensor:
        return model.encode(hidden_states).quantized_last_hidden_state.flatten(2).mean(-1)[:, :4]

    features = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(14))
    return Case("glm_image_vqmodel", "base", "GlmImageVQVAE", model, forward, (features,), (), 1,
                None, ["inputs: hidden_states (through encode)"])


def _tvp() -> Any:
    r"""TVP runs only a batch of 1 (its column position embeddings are viewed as
    ``(batch_size, 1, width, hidden)``), as its own test builds it: 4 text ids (the last one
    padding) beside 2 frames of 64 px framed by an 8-px learned prompt, a 2-stage ResNet of
    stride 32 (2×2 grid tokens). Its text source is 10 learned prompt tokens then the ids: the
    padding check reads that 14-token mask."""
    from .audio import _case

    ids = torch.tensor([[5, 6, 7, 0]])
    mask = (ids != 0).long()
    pixels = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(15))
    resnet = {"model_type": "resnet", "num_channels": 3, "embeddings_size": 16,
              "hidden_sizes": [16, 32], "depths": [1, 1], "hidden_act": "relu",
              "out_features": ["stage2"], "out_indices": [2]}
    case = _case("tvp", "TvpModel",
                 {"backbone_config": resnet, "num_frames": 2, "max_img_size": 64,
                  "visual_prompt_size": 8, "max_grid_col_position_embeddings": 30,
                  "max_grid_row_position_embeddings": 30, "hidden_dropout_prob": 0.0,
                  "attention_probs_dropout_prob": 0.0, "pad_token_id": 0},
                 {"input_ids": ids, "pixel_values": pixels}, {"attention_mask": mask},
                 mask=torch.cat([torch.ones(1, 10, dtype=torch.long), mask], dim=1))
    # its frame-pad prompter multiplies the pixels in place: the model gets a copy (what the
    # engine's refusal of the in-place write asks for)
    inner = case.forward_func
    case.forward_func = lambda ids, pixels, *rest: inner(ids, pixels.clone(), *rest)
    case.notes.append("pixels passed as a copy (the model writes them in place)")
    return case


# rotary over half of a 16-wide head: (time, height, width) sections of 8 / 2 = 4 channels
_GLM_ROPE = {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                 "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]}}

OVERRIDES: dict[str, dict[str, Any]] = {
    "glm4v_moe_text": {"config": _GLM_ROPE},
    "glm4v_moe": {"config": {"text_config": _GLM_ROPE}},
    "blip_2_qformer": {"inputs": _qformer},
    "instructblipvideo": {"config": {"video_token_index": 98}, "inputs": _video_prompt,
                          "head": ("lm", "InstructBlipVideoForConditionalGeneration")},
    "idefics": {"config": {"alpha_initializer": "ones"}},
    # image tokens of the VQ tokenizer in the vocabulary (two of them; the prompts are text)
    "chameleon": {"config": {"vocabulary_map": {"<image>": 98, "IMGIMGAZ": 96,
                                                "IMGIMGBZ": 97}}},
    # the thinkers' multimodal rotary index reads the vision-start token
    "qwen2_5_omni_thinker": {"config": {"vision_start_token_id": 93}},
    "qwen3_omni_moe_thinker": {"config": {"vision_start_token_id": 93}},
    # special tokens inside the tiny vocabulary (their defaults index a 100k+ one)
    "granite_docling": {"config": {"pad_token_id": 0, "image_token_id": 98}},
    "step3p7": {"config": {"image_token_id": 98, "text_config": {"sliding_window": 4}}},
    "ernie4_5_vl_moe": {"config": {
        "image_start_token_id": 92, "image_end_token_id": 93, "image_token_id": 94,
        "video_start_token_id": 95, "video_end_token_id": 96, "video_token_id": 97,
        # (height, width, time) sections of half a 16-wide head, height and width alike
        "text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                            "mrope_section": [3, 3, 2]}}}},
    # the adapter reads the last two of the two vision layers
    "molmo2": {"config": {
        "adapter_config": {"vision_feature_layer": [1, 0]},
        "text_config": {"rope_scaling_layers": [0, 1]},
        "image_start_token_id": 90, "low_res_image_start_token_id": 91,
        "image_end_token_id": 92, "image_patch_id": 93, "frame_start_token_id": 94,
        "frame_end_token_id": 95}},
    # dual encoders: the image tower's pooled width is what the projection reads
    # (ALIGN's EfficientNet: one block a stage, unscaled, so its pooled features neither vanish
    # nor overflow; they are as wide as its last stage: 320)
    "align": {"config": {"projection_dim": 320, "vision_config": {
        "depth_coefficient": 1.0, "width_coefficient": 1.0, "num_block_repeats": [1] * 7}}},
    "vision-text-dual-encoder": {"config": {"vision_config": {"pooler_output_size": 32}}},
    # video-text: two frames, a tiny multi-frame integration transformer
    "xclip": {"config": {"vision_config": {"mit_hidden_size": 32, "mit_intermediate_size": 64,
                                           "num_frames": 2}},
              "inputs": _video_and_text(2)},
}
BUILDERS: dict[str, Any] = {"idefics": _idefics, "align": _align,
                            "deepseek_ocr2": _deepseek_ocr2,
                            "granite4_vision": _granite4_vision,
                            "glm_image_vqmodel": _glm_image_vqmodel, "tvp": _tvp}
SKIP: dict[str, str] = {
    "gemma3n": "its vision tower is a TimmWrapperModel and timm is not installed here "
               "(gemma3n_text, its language model, is swept)",
}
