r"""Sweep data for SAM-style models and stand-alone vision towers
(see :mod:`model_types.builders`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def _generator(offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(4321 + offset)


def _tiny(model_type: str, **values: Any) -> Any:
    r"""The sweep's shrunk config of ``model_type`` with ``values`` merged in."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from ..build import _merge, shrink

    config_class = CONFIG_MAPPING[model_type]
    data = shrink(config_class().to_dict())
    _merge(data, values)
    for key in ("transformers_version", "architectures", "id2label", "label2id"):
        data.pop(key, None)
    data["num_labels"] = 3
    return config_class.from_dict(data)


def _case(model_type: str, model: Any, forward: Callable[..., Tensor], inputs: tuple,
          extra: tuple, mask: Tensor | None, notes: list[str], head: str = "classifier") -> Any:
    from ..build import Case

    return Case(model_type, head, type(model).__name__, model, forward, inputs, extra, 1, mask,
                notes)


# ------------------------------------------------------------------------------ SigLIP2 (NaFlex)
_SIGLIP2_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "patch_size": 4, "num_patches": 16}


def _naflex_batch(channels: int = 3, patch: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    r"""Two images as NaFlex patch rows: a 4×4 grid, and a 3×4 grid padded to 16 rows."""
    pixels = torch.randn(2, 16, channels * patch * patch, generator=_generator(0))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    pixels[1, 12:] = 0.0
    return pixels, mask, torch.tensor([[4, 4], [3, 4]])


def _siglip2_case(model_type: str, class_name: str, config: Any, head: str) -> Any:
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, class_name)(config).eval()
    pixels, mask, shapes = _naflex_batch()

    def forward(pixel_values: Tensor, pixel_attention_mask: Tensor,
                spatial_shapes: Tensor) -> Tensor:
        output = model(pixel_values=pixel_values, pixel_attention_mask=pixel_attention_mask,
                       spatial_shapes=spatial_shapes)
        if head == "classifier":
            return output.logits
        return output.pooler_output[:, :4]  # the attention-pooling head's probe

    notes = ["inputs: pixel_values (NaFlex patch rows), pixel_attention_mask, spatial_shapes"]
    return _case(model_type, model, forward, (pixels,), (mask, shapes), mask, notes, head)


def _siglip2() -> Any:
    r"""The classifier mean-pools the patch tokens (not the pooling head)."""
    config = _tiny("siglip2", vision_config=_SIGLIP2_VISION)
    return _siglip2_case("siglip2", "Siglip2ForImageClassification", config, "classifier")


def _siglip2_vision() -> Any:
    r"""The vision tower scored on its attention-pooling head's output."""
    config = _tiny("siglip2_vision_model", **_SIGLIP2_VISION)
    return _siglip2_case("siglip2_vision_model", "Siglip2VisionModel", config, "base")


# ------------------------------------------------------------------------------ SAM
# the values SAM's own tests use (24-pixel images in patches of 2: a 12×12 grid, the second layer
# global), but windows of 6 that tile the grid: with their windows of 14 (as SAM's checkpoints,
# 64-token grids in windows of 14) the padded window slots are attended unmasked, which the
# engine refuses by name (tests/test_sweep_btowers.py)
_SAM_VISION = {"hidden_size": 36, "intermediate_size": 72, "projection_dim": 62,
               "output_channels": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 24, "patch_size": 2, "window_size": 6, "global_attn_indexes": [1],
               "num_pos_feats": 16, "mlp_dim": 72}
_SAM_PROMPT = {"hidden_size": 32, "image_size": 24, "patch_size": 2, "mask_input_channels": 4,
               "num_point_embeddings": 4, "image_embedding_size": 12}
_SAM_DECODER = {"hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "attention_downsample_rate": 2, "iou_head_depth": 3,
                "iou_head_hidden_dim": 32, "vit_dim": 36}


def _prompted_case(model_type: str, class_name: str, config: Any, size: int) -> Any:
    r"""A SAM-like model given an image and one point prompt per example, scored on its three
    masks' predicted IoU."""
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, class_name)(config).eval()
    pixels = torch.randn(2, 3, size, size, generator=_generator(1))
    points = torch.rand(2, 1, 1, 2, generator=_generator(2)) * size

    def forward(pixel_values: Tensor, input_points: Tensor) -> Tensor:
        return model(pixel_values=pixel_values, input_points=input_points).iou_scores[:, 0]

    notes = ["inputs: pixel_values; one point prompt per example (input_points)"]
    return _case(model_type, model, forward, (pixels,), (points,), None, notes, "base")


def _sam(model_type: str, class_name: str) -> Callable[[], Any]:
    def build() -> Any:
        config = _tiny(model_type, vision_config=_SAM_VISION,
                       prompt_encoder_config=_SAM_PROMPT, mask_decoder_config=_SAM_DECODER)
        return _prompted_case(model_type, class_name, config, 24)

    return build


# ------------------------------------------------------------------------------ SAM2 (Hiera)
# SAM2's own tests' widths (12 → 96 over four stages), on 64-pixel images (grids 16, 8, 4, 2)
# with one block per stage but a global second block in the third, windows that tile each grid
_HIERA = {"hidden_size": 12, "image_size": 64, "patch_stride": 4, "patch_kernel_size": 7,
          "patch_padding": 3, "blocks_per_stage": [1, 1, 2, 1],
          "embed_dim_per_stage": [12, 24, 48, 96], "num_attention_heads_per_stage": [1, 2, 2, 2],
          "window_size_per_stage": [8, 4, 4, 2], "global_attention_blocks": [3],
          "window_positional_embedding_background_size": [4, 4]}


def _sam2_vision_config() -> Any:
    import transformers

    backbone = transformers.Sam2HieraDetConfig(**_HIERA)
    return transformers.Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=32)


def _sam2() -> Any:
    import transformers

    config = transformers.Sam2Config(
        vision_config=_sam2_vision_config(),
        prompt_encoder_config=transformers.Sam2PromptEncoderConfig(
            image_size=64, patch_size=16, mask_input_channels=8, hidden_size=32),
        mask_decoder_config=transformers.Sam2MaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4,
            iou_head_hidden_dim=32),
        memory_encoder_hidden_size=32)
    return _prompted_case("sam2", "Sam2Model", config, 64)


def _pixels_case(model_type: str, model: Any, size: int) -> Any:
    r"""A vision backbone scored on the first channels of its last feature map's mean."""
    pixels = torch.randn(2, 3, size, size, generator=_generator(3))

    def forward(pixel_values: Tensor) -> Tensor:
        state = model(pixel_values=pixel_values).last_hidden_state  # (B, H, W, C)
        return state.flatten(1, -2).mean(1)[:, :4]

    return _case(model_type, model, forward, (pixels,), (), None, ["inputs: pixel_values"],
                 "base")


def _sam2_vision() -> Any:
    import transformers

    torch.manual_seed(0)
    model = transformers.Sam2VisionModel(_sam2_vision_config()).eval()
    return _pixels_case("sam2_vision_model", model, 64)


def _sam2_hiera() -> Any:
    import transformers

    torch.manual_seed(0)
    model = transformers.Sam2HieraDetModel(transformers.Sam2HieraDetConfig(**_HIERA)).eval()
    return _pixels_case("sam2_hiera_det_model", model, 64)


# ------------------------------------------------------------------------------ packed towers
def _packed(model_type: str, row: tuple[int, ...], grid: str = "grid_thw", count: int = 32,
            thw: tuple[int, int, int] = (1, 4, 4), **extra: Tensor) -> Callable[[], Any]:
    r"""A Qwen-VL-style vision tower given two images of 4×4 patches packed into one sequence of
    ``row``-shaped patches, with their grid under ``grid``; scored per image on the mean of its
    share of the output rows (merged or not, batched in one row or not)."""

    def build() -> Any:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        from ..build import tiny_config

        torch.manual_seed(0)
        model = getattr(transformers, MODEL_MAPPING_NAMES[model_type])(
            tiny_config(model_type)).eval()
        rows = torch.randn(count, *row, generator=_generator(4))
        kwargs = {grid: torch.tensor([thw, thw]), **extra}

        def forward(pixel_values: Tensor) -> Tensor:
            state = model(pixel_values=pixel_values, **kwargs).last_hidden_state
            state = state.reshape(2, -1, state.shape[-1])  # the images' rows, in order
            return state.mean(1)[:, :4]

        notes = [f"inputs: pixel_values (packed rows {tuple(row)}), {', '.join(kwargs)}",
                 "packed images"]
        return _case(model_type, model, forward, (rows,), (), None, notes, "base")

    return build


# ------------------------------------------------------------------------------ Gemma 4 vision
def _gemma4_vision() -> Any:
    r"""Patchified images with their patch positions: a 4×4 grid, and a 4×2 grid padded to 16
    patches (positions -1); the tower pools 2×2 patches and returns every image's valid rows
    stacked, scored per image on the mean of its rows."""
    import transformers

    from ..build import tiny_config

    config = tiny_config("gemma4_vision")
    config.patch_size, config.pooling_kernel_size = 4, 2
    torch.manual_seed(0)
    model = transformers.Gemma4VisionModel(config).eval()
    grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="xy"), -1)
    positions = grid.reshape(1, 16, 2).repeat(2, 1, 1)
    positions[1, 8:] = -1
    pixels = torch.randn(2, 16, 3 * 16, generator=_generator(5))
    pixels[1, 8:] = 0.0

    def forward(pixel_values: Tensor, pixel_position_ids: Tensor) -> Tensor:
        state = model(pixel_values=pixel_values, pixel_position_ids=pixel_position_ids)
        valid = (pixel_position_ids >= 0).all(-1)
        # each image keeps one row per pooling window holding a valid patch
        counts = [len({tuple(p) for p in (pixel_position_ids[i][valid[i]] // 2).tolist()})
                  for i in range(pixel_position_ids.shape[0])]
        rows = state.last_hidden_state.split(counts)
        return torch.stack([r.mean(0) for r in rows])[:, :4]

    notes = ["inputs: pixel_values (patch rows), pixel_position_ids (-1 on padding)"]
    mask = (positions >= 0).all(-1).long()
    return _case("gemma4_vision", model, forward, (pixels,), (positions,), mask, notes, "base")


# ------------------------------------------------------------------------------ Pixtral
def _pixtral() -> Any:
    r"""Two images padded to 32×32 with their real sizes (32×32 and 32×16): the tower cuts each
    to its size and packs their patches into one sequence; scored per image on its rows' mean."""
    import transformers

    from ..build import tiny_config

    torch.manual_seed(0)
    model = transformers.PixtralVisionModel(tiny_config("pixtral")).eval()
    patch = model.config.patch_size
    sizes = torch.tensor([[32, 32], [32, 16]])
    pixels = torch.randn(2, 3, 32, 32, generator=_generator(6))
    pixels[1, :, :, 16:] = 0.0

    def forward(pixel_values: Tensor, image_sizes: Tensor) -> Tensor:
        state = model(pixel_values=pixel_values, image_sizes=image_sizes).last_hidden_state[0]
        counts = (image_sizes // patch).prod(-1).tolist()
        return torch.stack([r.mean(0) for r in state.split(counts)])[:, :4]

    notes = ["inputs: pixel_values, image_sizes (example 1 half padding)", "packed images"]
    return _case("pixtral", model, forward, (pixels,), (sizes,), None, notes, "base")


# ------------------------------------------------------------------------------ MiniCPM towers
def _minicpm(model_type: str) -> Callable[[], Any]:
    r"""Two images of 4×4 patches as MiniCPM-V's one strip of patches ``(1, C, P, 32·P)`` with
    their grids (``target_sizes``); scored per image on its rows' mean. Its single examples
    (``case.singles()``) are each image's half of the strip."""

    def build() -> Any:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        from ..build import tiny_config

        torch.manual_seed(0)
        model = getattr(transformers, MODEL_MAPPING_NAMES[model_type])(
            tiny_config(model_type)).eval()
        patch = model.config.patch_size
        strip = torch.randn(1, 3, patch, 32 * patch, generator=_generator(7))

        def forward_of(count: int) -> Callable[[Tensor], Tensor]:
            sizes = torch.tensor([[4, 4]] * count)

            def forward(pixel_values: Tensor) -> Tensor:
                state = model(pixel_values=pixel_values, target_sizes=sizes).last_hidden_state
                return state.reshape(count, -1, state.shape[-1]).mean(1)[:, :4]

            return forward

        notes = ["inputs: pixel_values (one strip of patches), target_sizes", "packed images"]
        case = _case(model_type, model, forward_of(2), (strip,), (), None, notes, "base")
        width = 16 * patch
        case.singles = lambda: [_case(model_type, model, forward_of(1),
                                      (strip[..., b * width:(b + 1) * width],), (), None,
                                      notes, "base") for b in range(2)]
        return case

    return build


def _packed_unequal(model_type: str) -> Callable[[], Any]:
    r"""A ``grid_thw`` tower whose examples hold different images, packed in order: example 0
    one image of 4×4 patches, example 1 two (4×4 and 4×2); scored per example on the mean of its
    images' output rows. Its single examples (``case.singles()``) are each example's rows."""
    images = [[(1, 4, 4)], [(1, 4, 4), (1, 4, 2)]]

    def build() -> Any:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        from ..build import tiny_config

        torch.manual_seed(0)
        model = getattr(transformers, MODEL_MAPPING_NAMES[model_type])(
            tiny_config(model_type)).eval()
        counts = [sum(t * h * w for t, h, w in grids) for grids in images]
        rows = torch.randn(sum(counts), 192, generator=_generator(4))

        def forward_of(examples: list[int]) -> Callable[[Tensor], Tensor]:
            grid = torch.tensor([g for b in examples for g in images[b]])

            def forward(pixel_values: Tensor) -> Tensor:
                state = model(pixel_values=pixel_values, grid_thw=grid).last_hidden_state[0]
                per_example = state.split([counts[b] for b in examples])
                return torch.stack([r.mean(0) for r in per_example])[:, :4]

            return forward

        notes = ["inputs: pixel_values (packed rows (192,)), grid_thw: example 0 one image, "
                 "example 1 two", "packed images"]
        case = _case(model_type, model, forward_of([0, 1]), (rows,), (), None, notes, "base")
        starts = [0, counts[0]]
        case.singles = lambda: [_case(model_type, model, forward_of([b]),
                                      (rows[starts[b]:starts[b] + counts[b]],), (), None,
                                      notes, "base") for b in range(2)]
        return case

    return build


# ------------------------------------------------------------------------------ SAM3 tracker
def _sam3_tracker() -> Any:
    r"""SAM3's ViT (56-pixel images in patches of 14: a 4×4 grid, windows of 2 that tile it, the
    second layer global) under SAM2's prompt encoder and mask decoder, one point prompt."""
    import transformers

    vit = transformers.Sam3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=56, patch_size=14, window_size=2, global_attn_indexes=[1],
        pretrain_image_size=56)
    vision = transformers.Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=32,
                                           backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]])
    config = transformers.Sam3TrackerConfig(
        vision_config=vision,
        prompt_encoder_config={"image_size": 56, "patch_size": 14, "mask_input_channels": 8,
                               "hidden_size": 32},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "iou_head_hidden_dim": 32},
        memory_encoder_hidden_size=32)
    return _prompted_case("sam3_tracker", "Sam3TrackerModel", config, 56)


# ------------------------------------------------------------------------------ SAM3 (text)
def _sam3(model_type: str, class_name: str) -> Callable[[], Any]:
    r"""SAM3 prompted by text (padded on example 1) over a 56-pixel image (SAM3's ViT as in
    :func:`_sam3_tracker`), scored on its first object queries' logits."""

    def build() -> Any:
        import transformers

        from ..build import _ids_and_mask, tiny_config

        config = tiny_config(model_type)
        vit = transformers.Sam3ViTConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=56, patch_size=14, window_size=2, global_attn_indexes=[1],
            pretrain_image_size=56)
        config.vision_config = transformers.Sam3VisionConfig(
            backbone_config=vit, fpn_hidden_size=32,
            backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]])
        for name in ("geometry_encoder_config", "detr_encoder_config", "detr_decoder_config",
                     "mask_decoder_config"):
            getattr(config, name).hidden_size = 32
        torch.manual_seed(0)
        model = getattr(transformers, class_name)(config).eval()
        ids, mask = _ids_and_mask(config.text_config)
        pixels = torch.randn(2, 3, 56, 56, generator=_generator(8))

        def forward(input_ids: Tensor, pixel_values: Tensor, attention_mask: Tensor) -> Tensor:
            return model(pixel_values=pixel_values, input_ids=input_ids,
                         attention_mask=attention_mask).pred_logits[:, :4]

        notes = ["inputs: input_ids (text prompt), pixel_values"]
        return _case(model_type, model, forward, (ids, pixels), (mask,), mask, notes, "base")

    return build


# ------------------------------------------------------------------ windows padded with zero rows
def _image_encoder(model_type: str, class_name: str) -> Callable[[], Any]:
    r"""A SAM image encoder built from the sweep's tiny config (a 4×4 grid in one 14×14 window:
    its padded slots take attention), scored on the mean over positions of its neck's first
    channels (channels-first, each position's channels normalised: the generic score, a mean
    over channels, is identically zero)."""

    def build() -> Any:
        import transformers

        from ..build import tiny_config

        config = tiny_config(model_type)
        torch.manual_seed(0)
        model = getattr(transformers, class_name)(config).eval()
        size = config.image_size
        pixels = torch.randn(2, 3, size, size, generator=_generator(9))

        def forward(pixel_values: Tensor) -> Tensor:
            state = model(pixel_values=pixel_values).last_hidden_state  # (B, C, h, w)
            return state.flatten(2).mean(-1)[:, :4]

        return _case(model_type, model, forward, (pixels,), (), None,
                     ["inputs: pixel_values"], "base")

    return build


def _maskformer() -> Any:
    r"""MaskFormer for instance segmentation from the sweep's tiny config (its Swin backbone pads
    each stage into one window), scored on the first query's class logits (the base model's
    generic score, a mean over normalised channels, is identically zero)."""
    import transformers

    from ..build import tiny_config

    config = tiny_config("maskformer")
    config.backbone_config.depths = [1, 1, 1, 1]  # not 18 blocks in the third stage
    torch.manual_seed(0)
    model = transformers.MaskFormerForInstanceSegmentation(config).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=_generator(10))

    def forward(pixel_values: Tensor) -> Tensor:
        return model(pixel_values=pixel_values).class_queries_logits[:, 0]

    return _case("maskformer", model, forward, (pixels,), (), None, ["inputs: pixel_values"],
                 "base")


def _text_ids(config: Any) -> list[dict[str, Tensor]]:
    r"""Padded ids alone, for a text tower whose ``main_input_name`` is not ``input_ids``."""
    from ..build import _ids_and_mask

    return [{"input_ids": _ids_and_mask(config)[0]}]


OVERRIDES: dict[str, dict[str, Any]] = {
    # its first and last layers are RepMixer convolutions: a third layer holds the attention
    "sam3_lite_text_text_model": {"inputs": _text_ids, "config": {"num_hidden_layers": 3}},
}
BUILDERS: dict[str, Any] = {
    "siglip2": _siglip2,
    "siglip2_vision_model": _siglip2_vision,
    "sam": _sam("sam", "SamModel"),
    "sam_hq": _sam("sam_hq", "SamHQModel"),
    "sam_vision_model": _image_encoder("sam_vision_model", "SamVisionModel"),
    "sam_hq_vision_model": _image_encoder("sam_hq_vision_model", "SamHQVisionModel"),
    "maskformer": _maskformer,
    "sam2": _sam2,
    "sam2_vision_model": _sam2_vision,
    "sam2_hiera_det_model": _sam2_hiera,
    "sam3_tracker": _sam3_tracker,
    "sam3": _sam3("sam3", "Sam3Model"),
    "sam3_lite_text": _sam3("sam3_lite_text", "Sam3LiteTextModel"),
    "gemma4_vision": _gemma4_vision,
    "pixtral": _pixtral,
    "minicpm_ocr_vision": _minicpm("minicpm_ocr_vision"),
    "minicpmv4_7_vision": _minicpm("minicpmv4_7_vision"),
    "kimi_k25_vision": _packed("kimi_k25_vision", (3, 8, 8)),
    "hunyuan_vl_vision": _packed_unequal("hunyuan_vl_vision"),
    "hy_v4_vl_vision": _packed_unequal("hy_v4_vl_vision"),
    "muse_glimmer_vision": _packed("muse_glimmer_vision", (384,)),  # two frames per patch
    "muse_spark_vision": _packed("muse_spark_vision", (384,)),
    # one row per language-model token: 2×2 tokens of 2×2 merged 8-pixel patches per image
    "inkling2_vision": _packed("inkling2_vision", (16, 16, 3), "image_grid_thw", 8, (1, 2, 2)),
    "video_llama_3_vision": _packed("video_llama_3_vision", (192,),
                                    merge_sizes=torch.tensor([1, 1])),
}
_TIMM = "needs timm (optional, not a dependency)"
_SESSION = ("stateful video tracking: forward takes an inference session (frames, prompts, "
            "memory bank) that every call updates; there is no stateless batch forward to explain")
SKIP: dict[str, str] = {
    **dict.fromkeys(("edgetam", "edgetam_vision_model", "fast_vlm", "perception_lm",
                     "gemma3n_vision", "pe_video", "pe_video_encoder", "pe_audio_video",
                     "pe_audio_video_encoder"), _TIMM),
    **dict.fromkeys(("sam2_video", "sam3_tracker_video", "sam3_video"), _SESSION),
    "edgetam_video": f"{_SESSION}; its image encoder also {_TIMM}",
}
