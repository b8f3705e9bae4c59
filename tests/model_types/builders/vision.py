r"""Sweep data for vision model types (see :mod:`model_types.builders`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def _resnet(**extra: Any) -> Any:
    r"""A tiny transformers ResNet backbone (no timm, nothing pretrained), as DETR-family tests
    use: four stages of one block, widths 8–16."""
    from transformers import ResNetConfig

    values = {"embedding_size": 8, "hidden_sizes": [8, 8, 16, 16], "depths": [1, 1, 1, 1],
              "out_features": ["stage2", "stage3", "stage4"], **extra}
    return ResNetConfig(**values)


def _swin(**extra: Any) -> Any:
    r"""A tiny Swin backbone on 64-pixel images (its stages 2–4 out), as the
    Grounding-DINO / Mask2Former tests use, with windows of 2 that tile every stage."""
    from transformers import SwinConfig

    values = {"window_size": 2, "embed_dim": 8, "depths": [1, 1, 1, 1],
              "num_heads": [1, 1, 1, 1], "image_size": 64, "out_indices": [2, 3, 4], **extra}
    return SwinConfig(**values)


def _pixels(*shape: int, name: str = "pixel_values",
            also: tuple[str, ...] = ()) -> Callable[[Any], list[dict[str, Any]]]:
    r"""Inputs of one ``name`` batch of ``shape`` (the batch of 2 first), and of the inputs named
    in ``also`` (same shape, other values)."""

    def inputs(config: Any) -> list[dict[str, Any]]:
        generator = torch.Generator().manual_seed(1235)
        return [{key: torch.randn(*shape, generator=generator) for key in (name, *also)}]

    return inputs


def _task_inputs(config: Any) -> list[dict[str, Any]]:
    r"""OneFormer: 64-pixel images and each example's task prompt as ids (``task_seq_len``)."""
    generator = torch.Generator().manual_seed(1236)
    pixels = torch.randn(2, 3, 64, 64, generator=generator)
    task = torch.randint(5, 40, (2, config.task_seq_len), generator=generator)
    return [{"pixel_values": pixels, "task_inputs": task}]


def _backbone(model_type: str, **values: Any) -> Any:
    r"""A backbone config of ``model_type`` with ``values`` (the default a type's config names,
    which the shrunk default dict loses)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **values)


def _intraclass() -> dict[str, list]:
    r"""PP-OCR server-style intra-class blocks: [kernel, stride, padding] of each convolution
    (long, mid and short vertical / horizontal / square kernels of 7, 5, 3, same-size outputs)."""
    found: dict[str, list] = {"reduce_channel": [1, 1, 0], "return_channel": [1, 1, 0]}
    for size, ratio in ((7, "long"), (5, "mid"), (3, "short")):
        pad = size // 2
        found[f"vertical_long_to_small_conv_{ratio}ratio"] = [[size, 1], [1, 1], [pad, 0]]
        found[f"horizontal_small_to_long_conv_{ratio}ratio"] = [[1, size], [1, 1], [0, pad]]
        found[f"symmetric_conv_long_{ratio}ratio"] = [[size, size], [1, 1], [pad, pad]]
    return found


#: RT-DETR-like detectors (D-FINE, DEIMv2, PP-DocLayout) on a tiny HGNetV2: stage widths 16–32,
#: one block of one layer per stage; the hybrid encoder reads stages 2–4 at widths 16, 32, 32
_HGNET = {"stem_channels": [3, 8, 8], "stage_in_channels": [8, 16, 16, 32],
          "stage_mid_channels": [8, 8, 16, 16], "stage_out_channels": [16, 16, 32, 32],
          "stage_num_blocks": [1, 1, 1, 1], "stage_numb_of_layers": [1, 1, 1, 1],
          "hidden_sizes": [16, 16, 32, 32]}
_RT_DETR = {"backbone_config": _HGNET, "encoder_in_channels": [16, 32, 32],
            "encoder_hidden_dim": 32, "decoder_in_channels": [32, 32, 32], "num_queries": 5,
            "image_size": 64}

#: DETR-family detectors: a transformers ResNet instead of the default timm one
_NO_TIMM = {"use_timm_backbone": False, "use_pretrained_backbone": False, "num_queries": 5}

_GROUNDING = {**_NO_TIMM, "backbone_config": _swin(), "max_text_len": 8, "num_feature_levels": 3,
              "image_size": 64}

OVERRIDES: dict[str, dict[str, Any]] = {
    "conditional_detr": {"config": {**_NO_TIMM, "backbone_config": _resnet(
        out_features=["stage4"])}},
    "dab-detr": {"config": {**_NO_TIMM, "backbone_config": _resnet(out_features=["stage4"])}},
    "table-transformer": {"config": {**_NO_TIMM, "backbone_config": _resnet(
        out_features=["stage4"])}},
    # multi-scale deformable attention over three feature levels
    "deformable_detr": {"config": {**_NO_TIMM, "num_feature_levels": 3,
                                   "backbone_config": _resnet()}},
    # deformable attention over a Swin's levels (three: a fourth would be 1×1, which a group norm
    # of one example cannot take), text through a BERT (ids of 8 = max_text_len)
    "grounding-dino": {"config": _GROUNDING},
    "mm-grounding-dino": {"config": _GROUNDING},
    # scored on the class logits of its queries (the base model's first output is the backbone's)
    "mask2former": {"config": {"backbone_config": _swin(), "image_size": 64, "num_queries": 5},
                    "head": ("base", "Mask2FormerForUniversalSegmentation")},
    "d_fine": {"config": _RT_DETR},
    "deimv2": {"config": _RT_DETR},
    # its mask branch also reads stage 1 (width 16)
    "pp_doclayout_v3": {"config": {**_RT_DETR, "x4_feat_dim": 16,
                                   "mask_feature_channels": [16, 16], "num_prototypes": 8}},
    "pp_doclayout_v4": {"config": _RT_DETR},
    # a windowed ViT backbone (blocks 0 and 2 in 4 windows, 1 and 3 global) as its tests build it,
    # 64-pixel images; two projector scales, 5 queries in 2 groups
    "lw_detr": {"config": {
        "backbone_config": _backbone("lw_detr_vit", hidden_size=16, num_hidden_layers=4,
                                     num_attention_heads=2, window_block_indices=[0, 2],
                                     out_indices=[1, 3], num_windows=4, image_size=64,
                                     patch_size=8),
        "projector_scale_factors": [0.5, 2.0], "d_model": 32, "decoder_ffn_dim": 32,
        "decoder_layers": 2, "decoder_self_attention_heads": 2,
        "decoder_cross_attention_heads": 4, "num_queries": 5, "group_detr": 2,
        # derived in its __post_init__ from the two above; the default dict holds stale ones
        "projector_in_channels": [32, 32], "projector_out_channels": 32, "num_feature_levels": 2},
        "inputs": _pixels(2, 3, 64, 64)},
    # matchers take an image pair per example: (batch, 2, channels, height, width)
    # its tests' three stages (strides 2, 1, 2), 1×1 aggregation, 24 × 32 image pairs
    "efficientloftr": {"config": {
        "stage_num_blocks": [1, 1, 1], "out_features": [32, 32, 128], "stage_stride": [2, 1, 2],
        "q_aggregation_kernel_size": 1, "kv_aggregation_kernel_size": 1,
        "q_aggregation_stride": 1, "kv_aggregation_stride": 1, "num_attention_layers": 2,
        "num_attention_heads": 8, "hidden_size": 128, "coarse_matching_threshold": 0.0,
        "fine_kernel_size": 2, "coarse_matching_border_removal": 0,
        # derived in its __post_init__ from the above; the default dict holds stale ones
        "stage_in_channels": [1, 32, 32], "stage_block_stride": [[2], [1], [2]],
        "stage_block_out_channels": [[32], [32], [128]],
        "stage_block_in_channels": [[1], [32], [32]], "num_key_value_heads": 8,
        "fine_fusion_dims": [128, 32], "intermediate_size": 256},
        "inputs": _pixels(2, 2, 3, 24, 32)},
    "lightglue": {"inputs": _pixels(2, 2, 3, 64, 64)},
    # its default initializer range (0.02) through the unscaled conv stack underflows: every
    # logit is exactly 0 at the last stage, so nothing depends on the attention
    "mobilevit": {"config": {"initializer_range": 0.2}},
    # convnets (no attention: to be refused by name)
    "bit": {"config": {"num_groups": 2, "embedding_size": 16}},
    "efficientnet": {"config": {"width_coefficient": 1.0, "depth_coefficient": 1.0,
                                "hidden_dim": 1280, "image_size": 32}},
    "mobilevitv2": {"config": {"image_size": 64}},
    "textnet": {"config": {"stem_out_channels": 16, "image_size": 32}},
    # video JEPA: 4 frames of 32 px in tubelets of 2; a 2-layer predictor whose mask tokens are
    # not zero (zero rows read as padding)
    "vjepa2": {"config": {"crop_size": 32, "frames_per_clip": 4, "pred_hidden_size": 32,
                          "pred_num_hidden_layers": 2, "num_pooler_layers": 1,
                          "pred_zero_init_mask_tokens": False},
               "inputs": _pixels(2, 4, 3, 32, 32, name="pixel_values_videos")},
    # grouped-query heads per layer: two layers of 1 key/value head
    "sapiens2": {"config": {"num_hidden_layers": 2, "num_key_value_heads_per_layer": [1, 1],
                            "num_first_full_attention_layers": 2,
                            "num_last_full_attention_layers": 2, "num_register_tokens": 2}},
    # in-context segmentation: the image, a prompt image and its mask, 32 px each, stacked in
    # height; its two halves (image / prompt-mask streams) merge after layer 0
    "seggpt": {"config": {"image_size": [64, 32], "pretrain_image_size": 32, "merge_index": 0,
                          "intermediate_hidden_state_indices": [1]},
               "inputs": _pixels(2, 3, 32, 32, also=("prompt_pixel_values", "prompt_masks"))},
    # universal segmentation: a Swin backbone, a task prompt of 8 ids, 5 queries
    "oneformer": {"config": {"backbone_config": _swin(), "task_seq_len": 8,
                             "text_encoder_context_length": 8, "num_queries": 5,
                             "max_seq_len": 8},
                  "inputs": _task_inputs},
    # text-line recognizers (a convnet, then attention over the line's columns in the recognition
    # head) pool the height away: 48 × 128 lines, as their processors make; 40 characters
    "pp_ocrv5_mobile_rec": {"inputs": _pixels(2, 3, 96, 128), "config": {"head_out_channels": 40},
                           "head": ("base", "PPOCRV5MobileRecForTextRecognition")},
    "pp_ocrv5_server_rec": {"inputs": _pixels(2, 3, 48, 128), "config": {"head_out_channels": 40},
                           "head": ("base", "PPOCRV5ServerRecForTextRecognition")},
    "pp_ocrv6_small_rec": {"inputs": _pixels(2, 3, 48, 128), "config": {"head_out_channels": 40},
                          "head": ("base", "PPOCRV6SmallRecForTextRecognition")},
    "pp_ocrv6_tiny_rec": {"inputs": _pixels(2, 3, 48, 128), "config": {"head_out_channels": 40},
                         "head": ("base", "PPOCRV6TinyRecForTextRecognition")},
    # text detectors (convnets): the backbone their config defaults to, four stages into the neck
    "pp_ocrv6_small_det": {"config": {"backbone_config": _backbone(
        "pp_lcnet_v3", scale=0.75, divisor=16, out_indices=[2, 3, 4, 5],
        out_features=["stage2", "stage3", "stage4", "stage5"]),
        "layer_list_out_channels": [48, 96, 192, 384]}},
    "pp_ocrv6_medium_det": {"config": {
        "backbone_config": _backbone("hgnet_v2", **_HGNET, out_indices=[1, 2, 3, 4],
                                     out_features=["stage1", "stage2", "stage3", "stage4"]),
        "intraclass_block_config": _intraclass(), "scale_factor_list": [1, 2, 4, 8],
        "kernel_list": [3, 2, 2], "neck_out_channels": 32}},
    # document unwarping convnet: its default backbone, every bridge stage out (they are stacked)
    "uvdoc": {"config": {"backbone_config": _backbone("uvdoc_backbone", out_features=[
        f"stage{i}" for i in range(1, 7)])},
              "inputs": _pixels(2, 3, 64, 64)},
    # depth: a DINOv2 over the whole image, a ViT over patches at two scales, 32-pixel inputs
    # (its tests use 64: four times the patches, 40 s of checks here)
    "depth_pro": {"config": {
        "patch_size": 8, "fusion_hidden_size": 16, "intermediate_hook_ids": [1, 0],
        "intermediate_feature_dims": [10, 8], "scaled_images_ratios": [0.5, 1.0],
        "scaled_images_overlap_ratios": [0.0, 0.2], "scaled_images_feature_dims": [12, 12],
        "use_fov_model": False,
        "image_model_config": _backbone("dinov2", num_hidden_layers=2, hidden_size=16,
                                        num_attention_heads=1, patch_size=4, image_size=8),
        "patch_model_config": _backbone("vit", num_hidden_layers=2, hidden_size=24,
                                        num_attention_heads=2, patch_size=6, image_size=8),
        "fov_model_config": _backbone("vit", num_hidden_layers=2, hidden_size=32,
                                      num_attention_heads=4, patch_size=8, image_size=8)},
        "inputs": _pixels(2, 3, 32, 32)},
}


def _omdet_turbo() -> Any:
    r"""OmDet-Turbo as its tests build it (a Swin of width 8, a CLIP text tower of 16) on
    64-pixel images: each example reads its own task prompt (8 ids, the last 3 of example 1
    padding) and the same 3 class names (its processor flattens classes over the batch, so they
    are rebuilt per call: an example alone gets its own copy), its text caches emptied before
    each call; score = class logits of query 0."""
    from transformers import OmDetTurboConfig, OmDetTurboForObjectDetection

    from ..build import Case

    text = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 8, "vocab_size": 99,
            "model_type": "clip_text_model"}
    config = OmDetTurboConfig(
        text_config=text, backbone_config=_swin(), use_timm_backbone=False, image_size=64,
        apply_layernorm_after_vision_backbone=False,
        decoder_num_layers=2, encoder_in_channels=[16, 32, 64], num_queries=5,
        encoder_layers=2, encoder_projection_indices=[2], encoder_attention_heads=2,
        decoder_num_heads=2, decoder_num_points=4, num_feature_levels=3,
        encoder_dim_feedforward=32, task_encoder_hidden_dim=32, decoder_dim_feedforward=32,
        class_embed_dim=16, text_projection_in_dim=16, text_projection_out_dim=16,
        encoder_hidden_dim=8, decoder_hidden_dim=8, vision_features_channels=[8, 8, 8])
    torch.manual_seed(0)
    model = OmDetTurboForObjectDetection(config).eval()
    generator = torch.Generator().manual_seed(1237)
    classes = torch.randint(5, 90, (3, 8), generator=generator)

    def forward(tasks: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # its LRU caches keep the text towers' outputs (and their graphs) of earlier calls, keyed
        # by the ids: a later call would read stale tensors that no input of it computes
        for cache in (model.language_cache_class, model.language_cache_prompt):
            cache.cache.clear()
            cache.current_load = 0
        count = pixels.shape[0]
        output = model(pixel_values=pixels, tasks_input_ids=tasks, tasks_attention_mask=mask,
                       classes_input_ids=classes.repeat(count, 1),
                       classes_attention_mask=torch.ones(3 * count, 8, dtype=torch.long),
                       classes_structure=torch.full((count,), 3, dtype=torch.long))
        return output.decoder_class_logits[:, 0]

    pixels = torch.randn(2, 3, 64, 64, generator=generator)
    tasks = torch.randint(5, 90, (2, 8), generator=generator)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, -3:] = 0
    tasks[1, -3:] = 0
    return Case("omdet-turbo", "detector", type(model).__name__, model, forward,
                (tasks, pixels), (mask,), 1, mask, ["inputs: tasks_input_ids, pixel_values"])


BUILDERS: dict[str, Any] = {"omdet-turbo": _omdet_turbo}
_TIMM = ("needs timm (optional, not a dependency): timm imports torchvision, and the only "
         "torchvision 0.28 wheel reachable here is a CUDA build whose ops do not load against "
         "torch 2.13.0+cpu ('operator torchvision::nms does not exist')")
SKIP: dict[str, str] = {
    "timm_backbone": _TIMM,
    "timm_wrapper": _TIMM,
    "dinat": "needs natten (optional, not a dependency; no wheel for this torch here)",
}
