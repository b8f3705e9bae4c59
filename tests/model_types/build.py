r"""A tiny model of any transformers model type, built the way a user would use it.

:func:`shrink` turns a type's default config into a tiny one (hidden sizes, layers, heads,
intermediate sizes, vocabulary, images, nested sub-configs), :data:`OVERRIDES` holds the config
values a type needs beyond that (learned from what the type's own test suite uses), and
:func:`build` tries the model classes a user would reach for — a sequence / image / audio
classifier, a seq2seq or causal LM, else the base model scored on its last hidden state — with a
batch of 2 inputs made from the model's ``main_input_name`` (ids with per-example padding,
pixels, waveforms or features), and keeps the first one whose forward runs.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from .overrides import ARCH_ZOO, BUILDERS, OVERRIDES, SKIP  # noqa: E402

VOCAB = 99
HIDDEN = 32
HEADS = 2
HEAD_DIM = HIDDEN // HEADS
LAYERS = 2
FFN = 64
IMAGE = 32
PATCH = 8
LABELS = 3
LENGTH = 8
PAD_EXTRA = 3  # example 1 is padded on the right by this many tokens

_HIDDEN_KEYS = {
    "hidden_size", "d_model", "n_embd", "embed_dim", "hidden_dim", "d_embed", "embedding_size",
    "word_embed_proj_dim", "text_embed_dim", "vision_embed_dim", "encoder_hidden_size",
    "projection_dim", "d_inner_hidden", "emb_dim", "n_embed", "model_dim", "width",
    "audio_embed_dim", "embedding_dim", "vision_hidden_size", "text_hidden_size",
    "proj_dim", "encoder_embed_dim", "decoder_hidden_size", "out_hidden_size",
    "audio_hidden_size", "condition_dim",
}
_HEAD_KEYS = {
    "num_attention_heads", "n_head", "n_heads", "encoder_attention_heads",
    "decoder_attention_heads", "num_heads", "attention_heads", "decoder_num_attention_heads",
    "num_decoder_attention_heads", "encoder_num_attention_heads",
}
_KV_KEYS = {"num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"}
_LAYER_KEYS = {
    "num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers", "decoder_layers",
    "num_encoder_layers", "num_decoder_layers", "decoder_num_hidden_layers",
    "encoder_num_hidden_layers", "num_decoder_hidden_layers", "depth",
}
_FFN_KEYS = {
    "intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "n_inner", "d_ff",
    "mlp_dim", "decoder_intermediate_size", "moe_intermediate_size",
    "shared_expert_intermediate_size", "ffn_hidden_size", "inner_hidden_size", "dim_feedforward",
}
_ID_KEYS = (
    "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
    "cls_token_id", "unk_token_id", "mask_token_id",
)
_POSITION_KEYS = {"max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length",
                  "max_target_positions", "n_ctx"}


def _shrink_int(key: str, value: int, original: dict[str, Any]) -> int:
    if key in _HIDDEN_KEYS:
        return min(value, HIDDEN)
    if key in _HEAD_KEYS:
        return min(value, HEADS)
    if key in _KV_KEYS:
        heads = next((original[k] for k in _HEAD_KEYS if isinstance(original.get(k), int)), value)
        return min(value, HEADS) if value >= heads else 1
    if key in ("head_dim", "d_kv", "attention_head_size", "rotary_dim", "rotary_emb_dim",
               "d_head"):
        return min(value, HEAD_DIM)
    if key in ("qk_rope_head_dim", "qk_nope_head_dim"):
        return min(value, HEAD_DIM // 2)
    if key.endswith("head_dim") or key in ("kv_lora_rank", "q_lora_rank"):
        return min(value, HEAD_DIM)
    if key in ("num_expert_group", "n_group", "topk_group"):
        return 1
    if "num" in key and key.endswith("heads"):
        return min(value, HEADS)
    if key in _FFN_KEYS:
        return min(value, FFN)
    if key == "vocab_size":
        return min(value, VOCAB)
    if key in _POSITION_KEYS:
        return min(value, 128)
    if key == "image_size":
        return min(value, IMAGE)
    if key == "patch_size":
        return min(value, PATCH)
    if key in ("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts"):
        return min(value, 4)
    if key in ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts",
               "num_experts_per_token", "moe_k", "router_top_k"):
        return min(value, 2)
    if key in ("num_queries", "num_query_tokens", "num_latents"):
        return min(value, 8)
    if key in ("d_latents", "subsampling_conv_channels"):
        return min(value, HIDDEN)
    if key in ("num_self_attends_per_block", "num_blocks"):
        return min(value, LAYERS)
    if key in ("max_source_positions",):
        return min(value, 32)
    return value


def _shrink_list(key: str, value: list, layers: int | None, kept: int) -> list:
    if layers is not None and len(value) == layers:  # per-layer lists (layer types, ...)
        return value[:kept]
    if not all(isinstance(v, int) for v in value) or not value:
        return value
    if key in ("image_size", "input_size", "img_size") and len(value) in (2, 3):
        return [min(v, 64) for v in value]
    if key in ("depths", "num_layers", "encoder_layers", "layers", "stage_depths", "depth",
               "num_hidden_layers"):
        return [1] * len(value)
    if key in ("hidden_sizes", "embed_dims", "embed_dim", "hidden_size", "dims", "widths",
               "channels", "neck_hidden_sizes", "embedding_dims"):
        return [16 if i == 0 else HIDDEN for i in range(len(value))]
    if key in ("num_attention_heads", "num_heads", "heads", "attention_heads"):
        return [1 if i == 0 else HEADS for i in range(len(value))]
    return value


def _kept_layers(data: dict[str, Any]) -> tuple[int | None, int]:
    r"""How many layers the config had and how many to keep: 2, or the shortest prefix of a
    per-layer pattern (``layer_types``, ...) holding every kind of layer (hybrids keep one of
    each), at most 8."""
    layers = next((data[k] for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
                   if isinstance(data.get(k), int)), None)
    if layers is None:
        return None, LAYERS
    kept = min(layers, LAYERS)
    for value in data.values():
        if isinstance(value, list) and len(value) == layers and layers > 1:
            kinds = list(dict.fromkeys(map(str, value)))
            prefix = max(list(map(str, value)).index(kind) for kind in kinds) + 1
            kept = max(kept, min(prefix, 8))
    return layers, kept


def shrink(data: dict[str, Any]) -> dict[str, Any]:
    r"""A tiny copy of a config's ``to_dict()`` (nested sub-configs shrunk the same way)."""
    layers, kept = _kept_layers(data)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("id2label", "label2id", "rope_scaling",
                                                   "rope_parameters"):
            out[key] = shrink(value) if _looks_like_config(value) else value
        elif isinstance(value, bool) or value is None:
            out[key] = value
        elif isinstance(value, int):
            out[key] = kept if (key in _LAYER_KEYS and value == layers) else (
                min(value, LAYERS) if key in _LAYER_KEYS else _shrink_int(key, value, data))
        elif isinstance(value, list):
            out[key] = _shrink_list(key, value, layers, kept)
        else:
            out[key] = value
    hidden, heads = out.get("hidden_size"), out.get("num_attention_heads")
    if "head_dim" in out and out["head_dim"] is None and isinstance(hidden, int) and isinstance(
            heads, int) and heads:
        out["head_dim"] = hidden // heads
    if isinstance(out.get("qk_rope_head_dim"), int):  # multi-head latent attention
        out["head_dim"] = out["qk_rope_head_dim"]
        out["qk_head_dim"] = out["qk_rope_head_dim"] + (out.get("qk_nope_head_dim") or 0)
    if out.get("num_experts_per_tok", 0) is None and isinstance(out.get("n_routed_experts"), int):
        out["num_experts_per_tok"] = 2
    layer_config = out.get("per_layer_config")
    if isinstance(layer_config, dict):  # per-layer settings of layers that are gone
        out["per_layer_config"] = {k: v for k, v in layer_config.items() if int(k) < kept}
    return _fix_ids(_fix_rope(out))


def _fix_ids(out: dict[str, Any]) -> dict[str, Any]:
    r"""Special ids inside the shrunk vocabulary: pad/bos/eos/... at 0–4, placeholder ids
    (image, audio, video tokens) at 90–98, clear of the ids the inputs draw (5–89)."""
    if "vocab_size" in out and out["vocab_size"] is None and "hidden_size" in out:
        out["vocab_size"] = VOCAB
    vocab = out.get("vocab_size")
    if not isinstance(vocab, int):
        return out
    if "pad_token_id" in out and out["pad_token_id"] is None:
        out["pad_token_id"] = 0  # a classifier finds each example's last real token by it
    for number, key in enumerate(_ID_KEYS):
        if isinstance(out.get(key), int) and out[key] >= vocab:
            out[key] = min(number, vocab - 1)
        elif isinstance(out.get(key), list):
            out[key] = [v if v < vocab else 2 for v in out[key]]
    placeholder = VOCAB - 1
    for key, value in out.items():
        if key in _ID_KEYS or isinstance(value, bool):
            continue
        if (key.endswith("_token_id") or key.endswith("_token_index")) and isinstance(
                value, int) and value >= vocab:
            out[key], placeholder = max(min(placeholder, vocab - 1), 0), placeholder - 1
    return out


def _fix_rope(out: dict[str, Any]) -> dict[str, Any]:
    r"""Multimodal rotary sections sum to half the (shrunk) head dimension."""
    for name in ("rope_scaling", "rope_parameters"):
        rope = out.get(name)
        section = rope.get("mrope_section") if isinstance(rope, dict) else None
        if isinstance(section, list) and section:
            half = (out.get("head_dim") or HEAD_DIM) // 2
            parts = [max(1, half * s // sum(section)) for s in section]
            parts[0] += half - sum(parts)
            out[name] = {**rope, "mrope_section": parts}
    staged = any(isinstance(out.get(k), list) for k in ("depths", "hidden_sizes", "embed_dims"))
    if not staged:  # a layer-indexed backbone (ViT-like): its outputs of layers that are gone
        if "out_features" in out:
            out["out_features"] = None
        if isinstance(out.get("out_indices"), (list, tuple)):
            out["out_indices"] = [1]
    return out


def _looks_like_config(value: dict) -> bool:
    return "model_type" in value or any(k in value for k in _HIDDEN_KEYS | _LAYER_KEYS)


def _merge(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value


def tiny_config(model_type: str) -> Any:
    r"""The tiny config of ``model_type``: the default config shrunk, then its overrides."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    data = shrink(config_class().to_dict())
    _merge(data, OVERRIDES.get(model_type, {}).get("config", {}))
    stages = data.get("depths")
    if isinstance(stages, list) and isinstance(data.get("out_indices"), list) and max(
            data["out_indices"], default=0) > len(stages):  # an override with fewer stages
        data["out_features"] = data["out_indices"] = None
    text = data.get("text_config")
    # multimodal rotary embeddings whose default sections (time, height, width) are written in
    # the model, for the full head size: sections for the tiny one
    holder = text if "vision_config" in data and isinstance(text, dict) else (
        data if any(k in model_type for k in ("vl", "glm", "omni")) else None)
    rope = holder.get("rope_parameters") if holder is not None else None
    if isinstance(rope, dict) and "rope_type" in rope and "mrope_section" not in rope:
        holder["rope_parameters"] = {**rope, "mrope_section": [2, 3, 3]}
    data.pop("transformers_version", None)
    data.pop("architectures", None)
    data["num_labels"] = LABELS
    data.pop("id2label", None)
    data.pop("label2id", None)
    return config_class.from_dict(data)


# ------------------------------------------------------------------------------ model classes
def _head_candidates(model_type: str, config: Any) -> list[tuple[str, str]]:
    r"""``(head kind, class name)`` pairs in the order a user would try them."""
    from transformers.models.auto import modeling_auto as auto

    def name(mapping: str) -> str | None:
        value = getattr(auto, mapping).get(model_type)
        return value[0] if isinstance(value, (tuple, list)) else value

    forced = OVERRIDES.get(model_type, {}).get("head")
    order = [
        ("seq2seq", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
        ("seq2seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"),
    ] if getattr(config, "is_encoder_decoder", False) else []
    order += [
        ("classifier", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
        ("classifier", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
        ("classifier", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"),
        ("lm", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
        ("base", "MODEL_MAPPING_NAMES"),
    ]
    found = [(kind, name(mapping)) for kind, mapping in order if name(mapping)]
    if forced:
        found = [pair for pair in found if pair[1] == forced[1]] or [tuple(forced)]
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------------------ inputs
def _generator(offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(1234 + offset)


def _config_value(config: Any, *keys: str, default: Any = None) -> Any:
    nested = ("vision_config", "audio_config", "encoder", "encoder_config", "audio_encoder_config",
              "speech_config", "backbone_config")
    for holder in (config, *(getattr(config, name, None) for name in nested)):
        for key in keys:
            value = getattr(holder, key, None) if holder is not None else None
            if value is not None:
                return value
    return default


def _ids_and_mask(config: Any) -> tuple[Tensor, Tensor]:
    vocab = _config_value(config, "vocab_size", default=VOCAB)
    vocab = vocab if isinstance(vocab, int) else VOCAB
    ids = torch.randint(5, max(6, min(vocab, VOCAB - 9)), (2, LENGTH), generator=_generator(0))
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    mask[1, -PAD_EXTRA:] = 0
    pad = getattr(config, "pad_token_id", None)
    ids[1, -PAD_EXTRA:] = pad if isinstance(pad, int) else 0
    return ids, mask


def _pixel_variants(config: Any) -> list[Tensor]:
    size = _config_value(config, "image_size", "input_size", "img_size", default=IMAGE)
    size = size if isinstance(size, (list, tuple)) else (size, size)
    size = tuple(int(s) for s in size[-2:]) if len(size) >= 2 else (IMAGE, IMAGE)
    channels = _config_value(config, "num_channels", "in_channels", "in_chans", default=3)
    channels = channels if isinstance(channels, int) else 3
    frames = _config_value(config, "num_frames", default=None)
    shapes = [(2, channels, *size)]
    if isinstance(frames, int):
        shapes.insert(0, (2, frames, channels, *size))
    shapes.append((2, 3, IMAGE, IMAGE))
    return [torch.randn(*s, generator=_generator(1)) for s in dict.fromkeys(shapes)]


def _audio_variants(config: Any, name: str) -> list[Tensor]:
    if name == "input_values":
        bins = _config_value(config, "num_mel_bins", default=None)
        shapes = [(2, 1600), (2, 1, 1600)] + ([(2, 64, bins)] if isinstance(bins, int) else [])
    else:
        bins = _config_value(config, "num_mel_bins", "feature_size", "input_feat_per_channel",
                             "n_mels", default=8)
        bins = bins if isinstance(bins, int) else 8
        frames = 2 * _config_value(config, "max_source_positions", default=32)
        frames = frames if isinstance(frames, int) else 64
        channels = _config_value(config, "input_channels", default=1)
        channels = channels if isinstance(channels, int) else 1
        # (B, bins, frames) for Whisper-likes, (B, frames, bins) for Speech2Text / conformers,
        # two stacked frames per row for Wav2Vec2-BERT
        shapes = [(2, bins, frames), (2, frames, bins * channels), (2, 64, bins),
                  (2, 64, 2 * bins)]
    return [torch.randn(*s, generator=_generator(2)) for s in dict.fromkeys(shapes)]


# ------------------------------------------------------------------------------ the case
@dataclass
class Case:
    r"""One built type: ``forward_func(*inputs, *additional_forward_args)`` → ``(B, C)`` scores;
    ``mask`` is the padding mask of ``inputs[0]`` (``None`` without one)."""

    model_type: str
    head: str
    class_name: str
    model: nn.Module
    forward_func: Callable[..., Tensor]
    inputs: tuple[Tensor, ...]
    additional_forward_args: tuple = ()
    target: Any = 1  # Captum's target: an int, a tuple or a per-example list
    mask: Tensor | None = None
    notes: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)

    def example(self, index: int) -> Case:
        r"""Example ``index`` alone (a batch of one)."""
        pick = lambda t: t[index:index + 1] if isinstance(t, Tensor) and t.dim() else t  # noqa: E731
        return Case(self.model_type, self.head, self.class_name, self.model, self.forward_func,
                    tuple(pick(t) for t in self.inputs),
                    tuple(pick(t) for t in self.additional_forward_args),
                    self.target[index:index + 1] if isinstance(self.target, list) else self.target,
                    None if self.mask is None else pick(self.mask), self.notes, self.types)


def _first_float(output: Any) -> Any:
    r"""The first floating tensor in a (nested) model output, depth first."""
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    values = output.values() if isinstance(output, dict) else (
        output if isinstance(output, (tuple, list)) else ())
    for item in values:
        found = _first_float(item)
        if found is not None:
            return found
    return output


def _score(output: Any, head: str, mask: Tensor | None) -> Tensor:
    r"""Per-example scores ``(B, C)``: a classifier's logits, an LM's logits at the last real
    token, else the first 4 channels of the mean (over real tokens) of the last hidden state."""
    pair = [getattr(output, name, None) for name in ("text_embeds", "image_embeds")]
    if all(isinstance(p, Tensor) and p.dim() == 2 for p in pair) and pair[0].shape == pair[1].shape:
        return (pair[0] * pair[1])[:, :4]  # example i's text against its own image
    fields = ("logits", "last_hidden_state", "pooler_output", "image_embeds", "text_embeds",
              "prediction_logits", "encoder_last_hidden_state")
    value = None
    for name in fields:
        value = getattr(output, name, None) if not isinstance(output, dict) else output.get(name)
        if isinstance(value, Tensor) and value.is_floating_point():
            break
        value = None
    if value is None:
        value = _first_float(output)
    if isinstance(value, (tuple, list)):
        value = value[-1]
    if head in ("lm", "seq2seq") and value.dim() == 3:
        if head == "lm" and mask is not None and mask.shape[1] == value.shape[1]:
            # the last real token, whichever side the padding is on (and past any hole)
            last = (mask.long() * torch.arange(1, mask.shape[1] + 1)).argmax(dim=1)
            return value[torch.arange(value.shape[0]), last]
        return value[:, -1]
    if value.dim() == 3:
        if mask is not None and mask.shape[1] == value.shape[1]:
            weights = mask.to(value.dtype).unsqueeze(-1)
            value = (value * weights).sum(1) / weights.sum(1)
        else:
            value = value.mean(1)
    elif value.dim() > 3:
        value = value.flatten(2).mean(-1) if value.shape[1] < value.shape[-1] else \
            value.flatten(1, -2).mean(1)
    return value.reshape(value.shape[0], -1)[:, :4]


def _forward_for(model: nn.Module, head: str, names: tuple[str, ...], has_mask: bool,
                 extra: dict[str, Any], tokens_mask: Callable[..., Tensor] | None = None
                 ) -> Callable[..., Tensor]:
    r"""``forward(*inputs, [mask])`` → scores: ``inputs`` are passed as ``names``. Packed
    vision towers (``grid_thw`` in ``extra``) return every image's rows stacked: each image's
    rows are averaged. ``tokens_mask(inputs)``: the real tokens the score reads (patches)."""

    def forward(*args: Tensor) -> Tensor:
        kwargs = dict(extra)
        kwargs.update(zip(names, args[:len(names)], strict=True))
        mask = args[len(names)] if has_mask else None
        if mask is not None:
            kwargs["attention_mask"] = mask
        read = tokens_mask(kwargs) if tokens_mask is not None else mask
        scores = _score(model(**kwargs), head, read)
        if "grid_thw" in extra:
            scores = scores.reshape(extra["grid_thw"].shape[0], -1, scores.shape[-1]).mean(1)
        return scores

    return forward


def _input_variants(model: nn.Module, config: Any) -> tuple[str, list[Tensor]]:
    main = getattr(model, "main_input_name", "input_ids")
    if main in ("input_ids", "inputs_embeds"):
        return "input_ids", [_ids_and_mask(config)[0]]
    if main in ("pixel_values", "pixel_values_videos"):
        return main, _pixel_variants(config)
    if main in ("input_values", "input_features"):
        return main, _audio_variants(config, main)
    if main == "inputs":  # Perceiver: ids or pixels, by its preprocessor
        return main, [_ids_and_mask(config)[0], *_pixel_variants(config)]
    return main, []


def _variants(model: nn.Module, config: Any, head: str,
              model_type: str = "") -> list[dict[str, Tensor]]:
    r"""The inputs to try, each ``{name: tensor}`` in the order they are attributed: the main
    input alone, then with pixels beside ids (dual encoders, image-text models), with decoder
    ids for encoder-decoders."""
    parameters = inspect.signature(model.forward).parameters
    custom = OVERRIDES.get(model_type, {}).get("inputs")
    if custom is not None:
        return [dict(named) for named in custom(config)]
    if "grid_thw" in parameters:
        return [_packed_patches(config, parameters)]
    main, values = _input_variants(model, config)
    if not values:
        raise LookupError(f"no input builder for main_input_name '{main}'")
    found = [{main: value} for value in values]
    if main == "input_ids" and "pixel_values" in parameters:
        found += [{main: values[0], "pixel_values": pixels} for pixels in _pixel_variants(config)]
    required = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    ids = _ids_and_mask(config)[0]
    for name in required:  # ids a second text input reads (Q-Former prompts, grounding text)
        if name.endswith("input_ids"):
            found = [{**named, name: ids} if name not in named else named for named in found]
    if head == "seq2seq" and "decoder_input_ids" in parameters:
        start = getattr(config, "decoder_start_token_id", None)
        decoder_ids = torch.randint(5, 40, (2, 4), generator=_generator(3))
        decoder_ids[:, 0] = start if isinstance(start, int) else 0
        found = [{**names, "decoder_input_ids": decoder_ids} for names in found]
    return found


def _packed_patches(config: Any, parameters: Any) -> dict[str, Tensor]:
    r"""Qwen-VL-style vision towers: two images of 4×4 patches packed into one sequence of
    flattened patches, with their ``grid_thw``."""
    channels = _config_value(config, "in_channels", "num_channels", default=3)
    temporal = _config_value(config, "temporal_patch_size", default=1)
    patch = _config_value(config, "patch_size", default=PATCH)
    name = "hidden_states" if "hidden_states" in parameters else "pixel_values"
    rows = torch.randn(32, channels * temporal * patch * patch, generator=_generator(4))
    return {name: rows, "grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4]])}


def _try_class(model_type: str, config: Any, head: str, class_name: str) -> Case:
    import transformers

    cls = getattr(transformers, class_name)
    torch.manual_seed(0)
    model = cls(config).eval()
    parameters = inspect.signature(model.forward).parameters
    extra = OVERRIDES.get(model_type, {}).get("kwargs", {})
    errors = []
    for named in _variants(model, config, head, model_type):
        if "grid_thw" in named:
            extra = {**extra, "grid_thw": named.pop("grid_thw")}
        first = next(iter(named.values()))
        has_mask = not first.is_floating_point() and "attention_mask" in parameters
        tokens_mask = OVERRIDES.get(model_type, {}).get("mask")  # tokens not ids (patches)
        tokens_mask = None if tokens_mask is None else partial(tokens_mask, config)
        forward = _forward_for(model, head, tuple(named), has_mask, extra, tokens_mask)
        mask = _ids_and_mask(config)[1] if has_mask else None
        args = (mask,) if has_mask else ()
        mask = tokens_mask(named) if tokens_mask is not None else mask
        try:
            with torch.no_grad():
                scores = forward(*named.values(), *args)
        except Exception as error:  # noqa: BLE001 - the next variant may fit
            errors.append(f"{type(error).__name__}: {str(error)[:200]}")
            continue
        if scores.dim() != 2 or scores.shape[0] != 2 or not scores.is_floating_point():
            errors.append(f"scores of shape {tuple(scores.shape)}")
            continue
        target = min(7 if head in ("lm", "seq2seq") else 1, scores.shape[1] - 1)
        notes = [f"inputs: {', '.join(named)}"] + (["packed images"] if "grid_thw" in extra
                                                      else [])
        return Case(model_type, head, class_name, model, forward, tuple(named.values()), args,
                    target, mask, notes)
    raise RuntimeError("; ".join(errors) or "no input variant")


def build(model_type: str) -> Case:
    r"""A tiny model of ``model_type`` with a batch of 2 and a score; raises
    :class:`BuildError` with every class tried and why it did not run."""
    if model_type in SKIP:
        raise BuildError(SKIP[model_type])
    if model_type in BUILDERS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return BUILDERS[model_type]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config = tiny_config(model_type)
        except Exception as error:  # noqa: BLE001 - a config that cannot be made is a skip
            raise BuildError(f"config: {type(error).__name__}: {str(error)[:300]}") from error
        tried = []
        for head, class_name in _head_candidates(model_type, config):
            try:
                return _try_class(model_type, config, head, class_name)
            except Exception as error:  # noqa: BLE001 - the next class may run
                tried.append(f"{class_name}: {type(error).__name__}: {str(error)[:300]}")
    if model_type in ARCH_ZOO:
        return _from_arch_zoo(model_type, ARCH_ZOO[model_type])
    raise BuildError(" | ".join(tried) or "no model class for this type")


def _from_arch_zoo(model_type: str, name: str) -> Case:
    r"""The type as ``tests/arch_zoo.py`` builds it (its inputs and score; its expected node
    types are checked too)."""
    from arch_zoo import ARCHS

    arch = ARCHS[name]()
    if "no-batch-slice" in arch.notes:
        raise BuildError(f"arch_zoo '{name}' packs its examples (no batch of 2 to slice)")
    mask = next((a for a in arch.additional_forward_args if isinstance(a, Tensor)
                 and a.dim() == 2 and a.shape == arch.inputs[0].shape
                 and not a.is_floating_point()), None)
    return Case(model_type, "arch_zoo", type(arch.model).__name__, arch.model,
                arch.forward_func, arch.inputs, arch.additional_forward_args, arch.target, mask,
                [f"tests/arch_zoo.py '{name}'"], arch.types)


class BuildError(Exception):
    r"""The type could not be built here (its reason names each class tried)."""
