r"""Per-type data for :mod:`model_types.build`: config values beyond the generic shrink (what the
type's own test suite uses, in our own words), a forced model class, extra forward kwargs, and
the types that cannot be built here with the reason."""

from __future__ import annotations

from typing import Any

#: model_type -> {"config": {...}, "head": (kind, class name), "kwargs": {...}}
_SWIN = {"image_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [1, 2, 1],
         "num_heads": [2, 2, 4], "window_size": 4, "mlp_ratio": 2.0}
_HYBRID_SSM = {"mamba_n_heads": 4, "mamba_d_head": 16, "mamba_expand": 2, "mamba_n_groups": 1,
               "mamba_d_state": 8}

OVERRIDES: dict[str, dict[str, Any]] = {
    # shifted windows: 16×16 patches of 2, windows of 4, three stages
    "swin": {"config": _SWIN},
    "swinv2": {"config": _SWIN},
    "donut-swin": {"config": _SWIN},
    "maskformer-swin": {"config": _SWIN},
    # convolutional projections; a stage's depth must exceed its index (drop-path rates)
    "cvt": {"config": {"image_size": 64, "embed_dim": [16, 32, 48], "num_heads": [1, 2, 3],
                       "depth": [1, 2, 3]}},
    # attention with subsampling stages: keys of 8, two down-sampling steps
    "levit": {"config": {"image_size": 64, "patch_size": 16, "hidden_sizes": [16, 32, 48],
                         "num_attention_heads": [1, 2, 3], "depths": [1, 1, 1],
                         "key_dim": [8, 8, 8], "mlp_ratio": [2, 2, 2],
                         "attention_ratio": [2, 2, 2],
                         "down_ops": [["Subsample", 8, 2, 4, 2, 2], ["Subsample", 8, 4, 4, 2, 2]]}},
    # strides 4·2·2·2: at 32 px the last stage (the one with [CLS]) holds a single patch
    "pvt": {"config": {"image_size": 64}},
    "swin2sr": {"config": {"embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2],
                           "window_size": 4, "image_size": 32, "patch_size": 1}},
    # Mamba-2 mixers beside attention layers: heads × head size = expand × hidden
    "bamba": {"config": {**_HYBRID_SSM, "attn_layer_indices": [1]}},
    "granitemoehybrid": {"config": {**_HYBRID_SSM, "layer_types": ["mamba", "attention"]}},
    "jamba": {"config": {"attn_layer_period": 2, "attn_layer_offset": 1,
                         "expert_layer_period": 2, "expert_layer_offset": 1}},
    "mamba2": {"config": {"num_heads": 4, "head_dim": 16, "expand": 2, "n_groups": 1}},
    # one recurrent block, one attention block
    "recurrent_gemma": {"config": {"block_types": ["recurrent", "attention"]}},
    # LSH and local attention over 8 tokens in chunks of 4; axial positions 4 × 2
    "reformer": {"config": {"axial_pos_embds_dim": [16, 16], "axial_pos_shape": [4, 2],
                            "attn_layers": ["local", "lsh"], "local_attn_chunk_length": 4,
                            "lsh_attn_chunk_length": 4, "num_buckets": 2,
                            "max_position_embeddings": 8, "is_decoder": False}},
}

#: model_type -> the builder of ``tests/arch_zoo.py`` that makes it when the generic shrink does
#: not (multimodal models whose inputs a shrunk config cannot guess: regions, image tokens)
ARCH_ZOO: dict[str, str] = {
    "lxmert": "lxmert", "bridgetower": "bridgetower", "kosmos-2": "kosmos2",
    "detr": "detr", "blip-2": "blip2_opt", "instructblip": "instructblip",
    "idefics3": "idefics3", "smolvlm": "smolvlm", "layoutlmv3": "layoutlmv3",
    "mllama": "mllama", "fuyu": "fuyu", "git": "git", "visual_bert": "visual_bert",
    "vilt": "vilt", "llava_next": "llava_next", "perceiver": "perceiver",
    "vision-encoder-decoder": "vision_encoder_decoder", "speech_to_text": "speech2text",
}

#: model_type -> why it is not built here (does not count in the sweep's total)
SKIP: dict[str, str] = {}

# the per-family modules of :mod:`model_types.builders` add their own entries
from .builders import BUILDERS  # noqa: E402, F401 - re-exported for build.py
from .builders import OVERRIDES as _FAMILY_OVERRIDES  # noqa: E402
from .builders import SKIP as _FAMILY_SKIP  # noqa: E402

for _name, _entry in _FAMILY_OVERRIDES.items():
    if _name in OVERRIDES:
        raise ValueError(f"model type {_name!r} has overrides in two places")
    OVERRIDES[_name] = _entry
SKIP.update(_FAMILY_SKIP)
