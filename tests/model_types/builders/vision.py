r"""Sweep data for vision model types (see :mod:`model_types.builders`)."""

from __future__ import annotations

from typing import Any


def _resnet(**extra: Any) -> Any:
    r"""A tiny transformers ResNet backbone (no timm, nothing pretrained), as DETR-family tests
    use: four stages of one block, widths 8–16."""
    from transformers import ResNetConfig

    values = {"embedding_size": 8, "hidden_sizes": [8, 8, 16, 16], "depths": [1, 1, 1, 1],
              "out_features": ["stage2", "stage3", "stage4"], **extra}
    return ResNetConfig(**values)


#: DETR-family detectors: a transformers ResNet instead of the default timm one
_NO_TIMM = {"use_timm_backbone": False, "use_pretrained_backbone": False, "num_queries": 5}

OVERRIDES: dict[str, dict[str, Any]] = {
    "conditional_detr": {"config": {**_NO_TIMM, "backbone_config": _resnet(
        out_features=["stage4"])}},
    "dab-detr": {"config": {**_NO_TIMM, "backbone_config": _resnet(out_features=["stage4"])}},
    "table-transformer": {"config": {**_NO_TIMM, "backbone_config": _resnet(
        out_features=["stage4"])}},
    # multi-scale deformable attention over three feature levels
    "deformable_detr": {"config": {**_NO_TIMM, "num_feature_levels": 3,
                                   "backbone_config": _resnet()}},
}
BUILDERS: dict[str, Any] = {}
SKIP: dict[str, str] = {}
