r"""A zoo of tiny architectures built from configs (random weights, no download) for the generic
engine's parametrised tests: models nobody hand-coded an explainer for.

Every entry of :data:`ARCHS` is a zero-argument builder returning an :class:`Arch`: the model in
``eval()`` mode (fixed seed, hidden size 32, 2 layers, 2 heads unless the family needs otherwise,
vocabulary 99, sequences of at most ~12 tokens, images of 16×16 or 32×32 with 8×8 patches), a
``forward_func`` returning per-example scores of shape ``(B, C)``, a batch of 2 examples, and the
expected node type of every attention module that runs:

* ``"A"``: self-attention over a sequence holding one input modality only so far;
* ``"B"``: cross-attention (queries from one sequence, keys/values from another);
* ``"C"``: self-attention over a sequence that already mixes sources (it received another
  sequence through a cross-attention call earlier, or tokens of another modality were spliced /
  concatenated into it).

transformers models keep the library's default attention implementation (``sdpa``); the optional
``output_attentions`` callables run an ``eager`` deep copy with ``output_attentions=True``.

Nothing here imports :mod:`captum_hetattn`.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tiny_models import FFN, HEADS, HIDDEN, LAYERS, VOCAB, _seq2seq_sizes  # noqa: E402
from torch import Tensor, nn  # noqa: E402

SEED = 0

BERT_LIKE = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=FFN,
)
LLAMA_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=HEADS,
    intermediate_size=FFN,
    max_position_embeddings=64,
)


@dataclass
class Arch:
    r"""One tiny architecture and how to score it.

    ``forward_func(*inputs, *additional_forward_args)`` returns float scores of shape ``(B, C)``
    (row ``b`` depends on example ``b`` only). ``types`` maps regexes (``re.search`` on the
    qualified names of ``model.named_modules()``) to the node type ``"A"``/``"B"``/``"C"`` of every
    attention module that runs in the forward. ``feeds`` are the positions in ``inputs`` that the
    score depends on through attention. ``padded`` returns ``(padded_case, unpadded_case,
    input_position, pad_positions)``: batches of one with the same real tokens, the padded case
    having extra tokens masked out by its attention mask at ``pad_positions`` of
    ``inputs[input_position]``.
    """

    name: str
    model: nn.Module
    forward_func: Callable[..., Tensor]
    inputs: tuple[Tensor, ...]
    additional_forward_args: tuple = ()
    target: int = 0
    feeds: tuple[int, ...] = ()
    types: dict[str, str] = field(default_factory=dict)
    output_attentions: Callable[[], list[Tensor]] | None = None
    padded: Callable[[], tuple[Arch, Arch, int, list[int]]] | None = None
    notes: str = ""


ARCHS: dict[str, Callable[[], Arch]] = {}


def _register(name: str) -> Callable[[Callable[[], Arch]], Callable[[], Arch]]:
    r"""Register a builder under ``name``; it runs under ``torch.manual_seed(SEED)`` (restoring
    the caller's RNG afterwards) and its model is put in ``eval()`` mode."""

    def decorate(build: Callable[[], Arch]) -> Callable[[], Arch]:
        def builder() -> Arch:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(SEED)
                arch = build()
            arch.model.eval()
            assert arch.name == name
            return arch

        builder.__name__ = build.__name__
        builder.__doc__ = build.__doc__
        ARCHS[name] = builder
        return builder

    return decorate


# ------------------------------------------------------------------------------- inputs
def _generator(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def _ids(batch: int = 2, length: int = 6, offset: int = 0, low: int = 5, high: int = 90) -> Tensor:
    r"""Token ids in ``[low, high)``: clear of the special ids (0–4) and placeholder ids (≥ 90)."""
    return torch.randint(low, high, (batch, length), generator=_generator(100 + offset))


def _floats(*shape: int, offset: int = 0) -> Tensor:
    return torch.randn(*shape, generator=_generator(200 + offset))


def _ones(ids: Tensor) -> Tensor:
    return torch.ones(ids.shape, dtype=torch.long)


def _pad_right(ids: Tensor, extra: int, pad_id: int) -> tuple[Tensor, Tensor, list[int]]:
    r"""``ids`` of shape (1, n) padded on the right with ``extra`` pad ids: (ids, mask, pads)."""
    n = ids.shape[1]
    padded = torch.cat([ids, torch.full((1, extra), pad_id, dtype=ids.dtype)], dim=1)
    mask = torch.ones(1, n + extra, dtype=torch.long)
    mask[:, n:] = 0
    return padded, mask, list(range(n, n + extra))


def _last_real(logits: Tensor, mask: Tensor) -> Tensor:
    r"""Logits at the last position where ``mask`` is 1 (right padding), per example."""
    last = mask.long().sum(dim=1) - 1
    return logits[torch.arange(logits.shape[0]), last]


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a, b, dim=-1).unsqueeze(-1)


# ------------------------------------------------------------------------------- attention maps
def _collect_attentions(output: Any) -> list[Tensor]:
    r"""Every tensor under an output field whose name contains ``attention`` (nested outputs and
    tuples flattened)."""
    found: list[Tensor] = []

    def walk(value: Any, take: bool) -> None:
        if isinstance(value, Tensor):
            if take:
                found.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, take or "attention" in str(key))
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item, take)

    walk(output, False)
    return found


def _eager_attentions(
    model: nn.Module, call: Callable[[nn.Module], Any]
) -> Callable[[], list[Tensor]]:
    r"""A callable running ``call`` on an eager deep copy of ``model`` (``call`` must pass
    ``output_attentions=True``) and returning the attention tensors it returns."""

    def run() -> list[Tensor]:
        eager = copy.deepcopy(model)
        if hasattr(eager, "set_attn_implementation"):
            from transformers.utils import logging

            verbosity = logging.get_verbosity()
            logging.set_verbosity_error()  # models with hand-written attention warn here
            try:
                eager.set_attn_implementation("eager")
            finally:
                logging.set_verbosity(verbosity)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            return _collect_attentions(call(eager))

    return run


def _decoder_types(prefix: str, self_suffix: str, cross: str) -> dict[str, str]:
    r"""Self-attention of decoder layer 0 runs before any cross-attention: A; later layers: C."""
    return {
        rf"{prefix}\.0\.{self_suffix}$": "A",
        rf"{prefix}\.[1-9]\d*\.{self_suffix}$": "C",
        cross: "B",
    }


# =============================================================================== text encoders
def _classifier_text_arch(
    name: str, model: nn.Module, pad_id: int, attention_regex: str, notes: str = ""
) -> Arch:
    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    ids = _ids(length=7)
    ids[:, 0] = 2  # a [CLS]-like start token

    def padded() -> tuple[Arch, Arch, int, list[int]]:
        real = ids[:1, :5]
        padded_ids, mask, pads = _pad_right(real, 3, pad_id)
        kwargs = dict(model=model, forward_func=forward, feeds=(0,), types=types)
        return (
            Arch(name, inputs=(padded_ids,), additional_forward_args=(mask,), **kwargs),
            Arch(name, inputs=(real,), additional_forward_args=(_ones(real),), **kwargs),
            0,
            pads,
        )

    types = {attention_regex: "A"}
    mask = _ones(ids)
    return Arch(
        name,
        model,
        forward,
        (ids,),
        (mask,),
        target=1,
        feeds=(0,),
        types=types,
        output_attentions=_eager_attentions(
            model, lambda m: m(input_ids=ids, attention_mask=mask, output_attentions=True)
        ),
        padded=padded,
        notes=notes,
    )


@_register("bert")
def bert() -> Arch:
    r"""BERT sequence classifier (3 labels), 7 tokens."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, num_labels=3, **BERT_LIKE)
    model = BertForSequenceClassification(config)
    return _classifier_text_arch("bert", model, 0, r"encoder\.layer\.\d+\.attention\.self$")


@_register("roberta")
def roberta() -> Arch:
    r"""RoBERTa sequence classifier (3 labels), 7 tokens, pad id 1 (position ids skip pads)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=VOCAB, max_position_embeddings=20, pad_token_id=1, num_labels=3, **BERT_LIKE
    )
    model = RobertaForSequenceClassification(config)
    return _classifier_text_arch("roberta", model, 1, r"encoder\.layer\.\d+\.attention\.self$")


# =============================================================================== vision encoders
def _image_classifier_arch(name: str, model: nn.Module, attention_regex: str, size: int) -> Arch:
    pixels = _floats(2, 3, size, size)

    def forward(pixel_values: Tensor) -> Tensor:
        return model(pixel_values=pixel_values).logits

    return Arch(
        name,
        model,
        forward,
        (pixels,),
        target=2,
        feeds=(0,),
        types={attention_regex: "A"},
        output_attentions=_eager_attentions(
            model, lambda m: m(pixel_values=pixels, output_attentions=True)
        ),
    )


@_register("vit")
def vit() -> Arch:
    r"""ViT image classifier: 16×16 images, 8×8 patches → [CLS] + 4 patches."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=16, patch_size=8, num_labels=3, **BERT_LIKE)
    model = ViTForImageClassification(config)
    return _image_classifier_arch("vit", model, r"layers\.\d+\.attention$", 16)


@_register("deit")
def deit() -> Arch:
    r"""DeiT with distillation head: [CLS] + [DIST] + 4 patches."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(image_size=16, patch_size=8, num_labels=3, **BERT_LIKE)
    model = DeiTForImageClassificationWithTeacher(config)
    return _image_classifier_arch("deit", model, r"layers\.\d+\.attention$", 16)


# =============================================================================== decoder-only LMs
def _causal_lm_arch(name: str, model: nn.Module, attention_regex: str, notes: str = "") -> Arch:
    r"""Logits of the last real token (right padding: the mask says where it is)."""

    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        return _last_real(model(input_ids=ids, attention_mask=mask).logits, mask)

    ids = _ids(length=8)
    mask = _ones(ids)
    types = {attention_regex: "A"}

    def padded() -> tuple[Arch, Arch, int, list[int]]:
        real = ids[1:, :6]
        padded_ids, pad_mask, pads = _pad_right(real, 3, 0)
        kwargs = dict(model=model, forward_func=forward, feeds=(0,), types=types)
        return (
            Arch(name, inputs=(padded_ids,), additional_forward_args=(pad_mask,), **kwargs),
            Arch(name, inputs=(real,), additional_forward_args=(_ones(real),), **kwargs),
            0,
            pads,
        )

    return Arch(
        name,
        model,
        forward,
        (ids,),
        (mask,),
        target=int(ids[0, -1]),
        feeds=(0,),
        types=types,
        output_attentions=_eager_attentions(
            model, lambda m: m(input_ids=ids, attention_mask=mask, output_attentions=True)
        ),
        padded=padded,
        notes=notes,
    )


@_register("gpt2")
def gpt2() -> Arch:
    r"""GPT-2 LM (``GPT2LMHeadModel``, Conv1D projections, fused qkv), 8 tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, n_positions=32,
        bos_token_id=1, eos_token_id=2,
    )
    return _causal_lm_arch("gpt2", GPT2LMHeadModel(config), r"\.h\.\d+\.attn$")


@_register("llama")
def llama() -> Arch:
    r"""Llama LM (RoPE, RMSNorm, SwiGLU), 8 tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(pad_token_id=0, **LLAMA_LIKE)
    return _causal_lm_arch("llama", LlamaForCausalLM(config), r"layers\.\d+\.self_attn$")


@_register("qwen2_gqa")
def qwen2_gqa() -> Arch:
    r"""Qwen2 LM with grouped-query attention: 4 query heads sharing 1 key/value head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sizes = dict(LLAMA_LIKE, num_attention_heads=4, num_key_value_heads=1)
    config = Qwen2Config(pad_token_id=0, **sizes)
    return _causal_lm_arch(
        "qwen2_gqa", Qwen2ForCausalLM(config), r"layers\.\d+\.self_attn$", notes="GQA 4q/1kv"
    )


@_register("gemma")
def gemma() -> Arch:
    r"""Gemma LM (scaled embeddings, head_dim 16, multi-query: 1 key/value head)."""
    from transformers import GemmaConfig, GemmaForCausalLM

    sizes = dict(LLAMA_LIKE, num_key_value_heads=1, head_dim=16)
    config = GemmaConfig(pad_token_id=0, **sizes)
    return _causal_lm_arch("gemma", GemmaForCausalLM(config), r"layers\.\d+\.self_attn$")


@_register("falcon")
def falcon() -> Arch:
    r"""Falcon LM: hand-written attention that calls ``F.scaled_dot_product_attention`` unless its
    config says eager (the engine switches it while recording)."""
    from transformers import FalconConfig, FalconForCausalLM

    config = FalconConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, pad_token_id=0)
    arch = _causal_lm_arch("falcon", FalconForCausalLM(config), r"h\.\d+\.self_attention$")
    # transformers 5.23's Falcon drops the causal mask when output_attentions=True (its logits
    # then differ from the sdpa run), so those maps are no reference; the recorded forward
    # equals the sdpa logits
    arch.output_attentions = None
    arch.notes = "output_attentions=True gives non-causal maps and other logits (transformers)"
    return arch


@_register("bloom")
def bloom() -> Arch:
    r"""BLOOM LM (ALiBi position bias)."""
    from transformers import BloomConfig, BloomForCausalLM

    config = BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                         pad_token_id=0)
    return _causal_lm_arch("bloom", BloomForCausalLM(config), r"h\.\d+\.self_attention$")


@_register("dinov2")
def dinov2() -> Arch:
    r"""DINOv2 classifier: 16×16 images, 8×8 patches → [CLS] + 4 patches."""
    from transformers import Dinov2Config, Dinov2ForImageClassification

    config = Dinov2Config(image_size=16, patch_size=8, num_labels=3, **BERT_LIKE)
    return _image_classifier_arch("dinov2", Dinov2ForImageClassification(config),
                                  r"encoder\.layer\.\d+\.attention$", 16)


@_register("segformer")
def segformer() -> Arch:
    r"""SegFormer classifier: efficient self-attention whose keys are a spatially reduced copy of
    the tokens (made inside the module), two stages joined by an overlapping patch merge."""
    from transformers import SegformerConfig, SegformerForImageClassification

    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
        num_labels=3,
    )
    return _image_classifier_arch("segformer", SegformerForImageClassification(config),
                                  r"blocks\.\d+\.attention$", 32)


@_register("wav2vec2")
def wav2vec2() -> Arch:
    r"""wav2vec 2.0 classifier on a raw waveform (convolutional feature encoder, mean pooling)."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    config = Wav2Vec2Config(
        **BERT_LIKE, conv_dim=(8, 8), conv_stride=(4, 2), conv_kernel=(8, 4),
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, num_labels=3,
    )
    model = Wav2Vec2ForSequenceClassification(config)
    waveform = _floats(2, 400)

    def forward(values: Tensor) -> Tensor:
        return model(input_values=values).logits

    return Arch("wav2vec2", model, forward, (waveform,), target=1, feeds=(0,),
                types={r"layers\.\d+\.attention$": "A"},
                notes="raw waveform: overlapping convolutions, laid out by AudioFrames")


# =============================================================================== encoder–decoders
BART_TYPES = {
    r"encoder\.layers\.\d+\.self_attn$": "A",
    **_decoder_types(r"decoder\.layers", "self_attn", r"decoder\.layers\.\d+\.encoder_attn$"),
}


def _seq2seq_text_arch(
    name: str, model: nn.Module, types: dict[str, str], pad_id: int, notes: str = ""
) -> Arch:
    r"""Encoder ids and decoder ids are attributed; the encoder mask is an additional argument;
    the score is the decoder's last-position logits."""

    def forward(ids: Tensor, decoder_ids: Tensor, mask: Tensor) -> Tensor:
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        return out.logits[:, -1, :]

    ids = _ids(length=7)
    ids[:, -1] = 2  # </s>
    decoder_ids = _ids(length=4, offset=1)
    decoder_ids[:, 0] = 2  # decoder start
    mask = _ones(ids)

    def padded() -> tuple[Arch, Arch, int, list[int]]:
        real = ids[:1, :6]
        padded_ids, pad_mask, pads = _pad_right(real, 2, pad_id)
        kwargs = dict(model=model, forward_func=forward, feeds=(0, 1), types=types)
        return (
            Arch(name, inputs=(padded_ids, decoder_ids[:1]), additional_forward_args=(pad_mask,),
                 **kwargs),
            Arch(name, inputs=(real, decoder_ids[:1]), additional_forward_args=(_ones(real),),
                 **kwargs),
            0,
            pads,
        )

    return Arch(
        name,
        model,
        forward,
        (ids, decoder_ids),
        (mask,),
        target=int(decoder_ids[0, -1]),
        feeds=(0, 1),
        types=types,
        output_attentions=_eager_attentions(
            model,
            lambda m: m(
                input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                output_attentions=True,
            ),
        ),
        padded=padded,
        notes=notes,
    )


def _bart_like_config(config_class: type, **extra: Any) -> Any:
    return config_class(
        vocab_size=VOCAB,
        max_position_embeddings=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
        **_seq2seq_sizes(),
        **extra,
    )


@_register("bart")
def bart() -> Arch:
    r"""BART (``BartForConditionalGeneration``): 7 source tokens, 4 target tokens."""
    from transformers import BartConfig, BartForConditionalGeneration

    model = BartForConditionalGeneration(_bart_like_config(BartConfig))
    return _seq2seq_text_arch("bart", model, BART_TYPES, pad_id=1)


@_register("mbart")
def mbart() -> Arch:
    r"""mBART (pre-norm BART with final layer norms)."""
    from transformers import MBartConfig, MBartForConditionalGeneration

    model = MBartForConditionalGeneration(_bart_like_config(MBartConfig))
    return _seq2seq_text_arch("mbart", model, BART_TYPES, pad_id=1)


@_register("marian")
def marian() -> Arch:
    r"""Marian MT (sinusoidal positions, static embeddings)."""
    from transformers import MarianConfig, MarianMTModel

    config = _bart_like_config(MarianConfig)
    config.pad_token_id = 1
    return _seq2seq_text_arch("marian", MarianMTModel(config), BART_TYPES, pad_id=1)


@_register("pegasus")
def pegasus() -> Arch:
    r"""Pegasus (pre-norm, sinusoidal positions)."""
    from transformers import PegasusConfig, PegasusForConditionalGeneration

    model = PegasusForConditionalGeneration(_bart_like_config(PegasusConfig))
    return _seq2seq_text_arch("pegasus", model, BART_TYPES, pad_id=1)


@_register("m2m100")
def m2m100() -> Arch:
    r"""M2M100 (sinusoidal positions computed from the ids, skipping pads)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    model = M2M100ForConditionalGeneration(_bart_like_config(M2M100Config))
    return _seq2seq_text_arch("m2m100", model, BART_TYPES, pad_id=1)


@_register("t5")
def t5() -> Arch:
    r"""T5 (relative position bias in the first layer of each stack, reused by the others)."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=VOCAB,
        d_model=HIDDEN,
        d_kv=HIDDEN // HEADS,
        d_ff=FFN,
        num_layers=LAYERS,
        num_decoder_layers=LAYERS,
        num_heads=HEADS,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    types = {
        r"encoder\.block\.\d+\.layer\.0\.SelfAttention$": "A",
        **_decoder_types(
            r"decoder\.block",
            r"layer\.0\.SelfAttention",
            r"decoder\.block\.\d+\.layer\.1\.EncDecAttention$",
        ),
    }
    return _seq2seq_text_arch("t5", T5ForConditionalGeneration(config), types, pad_id=0)


def _audio_seq2seq_arch(name: str, model: nn.Module, features: Tensor, notes: str = "") -> Arch:
    decoder_ids = _ids(length=4, offset=1)
    decoder_ids[:, 0] = 1

    def forward(input_features: Tensor, decoder_ids: Tensor) -> Tensor:
        out = model(input_features=input_features, decoder_input_ids=decoder_ids)
        return out.logits[:, -1, :]

    return Arch(
        name,
        model,
        forward,
        (features, decoder_ids),
        target=int(decoder_ids[0, -1]),
        feeds=(0, 1),
        types=BART_TYPES,
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_features=features, decoder_input_ids=decoder_ids,
                        output_attentions=True),
        ),
        notes=notes,
    )


@_register("whisper")
def whisper() -> Arch:
    r"""Whisper: 8 mel bins × 16 frames (two convolutions, stride 2 → 8 encoder positions)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=8,
        max_source_positions=8,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        **_seq2seq_sizes(),
    )
    model = WhisperForConditionalGeneration(config)
    return _audio_seq2seq_arch("whisper", model, _floats(2, 8, 16))


@_register("speech2text")
def speech2text() -> Arch:
    r"""Speech2Text: 12 frames × 8 filterbank features, 2 strided conv layers → 3 encoder
    positions."""
    from transformers import Speech2TextConfig, Speech2TextForConditionalGeneration

    config = Speech2TextConfig(
        vocab_size=VOCAB,
        input_feat_per_channel=8,
        input_channels=1,
        num_conv_layers=2,
        conv_channels=16,
        conv_kernel_sizes=[5, 5],
        max_source_positions=32,
        max_target_positions=16,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        **_seq2seq_sizes(),
    )
    model = Speech2TextForConditionalGeneration(config)
    return _audio_seq2seq_arch("speech2text", model, _floats(2, 12, 8))


# ============================================================================ image–text encoders
@_register("clip")
def clip() -> Arch:
    r"""CLIP dual encoder (``CLIPModel``): causal text tower pooled at the first ``eos`` (id 3),
    vision tower [CLS] + 4 patches; score = per-example cosine of the two projected embeddings."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=0, eos_token_id=3,
        pad_token_id=1, **BERT_LIKE,
    )  # eos_token_id == 2 would select CLIP's legacy pooling: argmax of the ids
    vision = CLIPVisionConfig(image_size=16, patch_size=8, **BERT_LIKE)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    model = CLIPModel(config)

    def forward(ids: Tensor, pixel_values: Tensor, mask: Tensor) -> Tensor:
        out = model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask)
        return _cosine(out.text_embeds, out.image_embeds)

    ids = _ids(length=6)
    ids[:, 0], ids[:, -1] = 0, 3
    pixels = _floats(2, 3, 16, 16)
    mask = _ones(ids)
    types = {
        r"text_model\.encoder\.layers\.\d+\.self_attn$": "A",
        r"vision_model\.encoder\.layers\.\d+\.self_attn$": "A",
    }

    def padded() -> tuple[Arch, Arch, int, list[int]]:
        real = ids[1:]
        padded_ids, pad_mask, pads = _pad_right(real, 3, 1)
        kwargs = dict(model=model, forward_func=forward, feeds=(0, 1), types=types)
        return (
            Arch("clip", inputs=(padded_ids, pixels[1:]), additional_forward_args=(pad_mask,),
                 **kwargs),
            Arch("clip", inputs=(real, pixels[1:]), additional_forward_args=(_ones(real),),
                 **kwargs),
            0,
            pads,
        )

    return Arch(
        "clip",
        model,
        forward,
        (ids, pixels),
        (mask,),
        feeds=(0, 1),
        types=types,
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                        output_attentions=True),
        ),
        padded=padded,
        notes="two towers, no cross-modal attention: each tower is A",
    )


@_register("siglip")
def siglip() -> Arch:
    r"""SigLIP dual encoder (``SiglipModel``): text pooled at the last token, vision pooled by a
    multi-head attention probe (``nn.MultiheadAttention``: one learned query over the patches)."""
    from transformers import SiglipConfig, SiglipModel, SiglipTextConfig, SiglipVisionConfig

    text = SiglipTextConfig(
        vocab_size=VOCAB, max_position_embeddings=16, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, **BERT_LIKE,
    )
    vision = SiglipVisionConfig(image_size=16, patch_size=8, **BERT_LIKE)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))

    def forward(ids: Tensor, pixel_values: Tensor) -> Tensor:
        out = model(input_ids=ids, pixel_values=pixel_values)
        return _cosine(out.text_embeds, out.image_embeds)

    ids = _ids(length=6)
    pixels = _floats(2, 3, 16, 16)
    return Arch(
        "siglip",
        model,
        forward,
        (ids, pixels),
        feeds=(0, 1),
        types={
            r"text_model\.encoder\.layers\.\d+\.self_attn$": "A",
            r"vision_model\.encoder\.layers\.\d+\.self_attn$": "A",
            r"vision_model\.head\.attention$": "B",
        },
        output_attentions=_eager_attentions(
            model, lambda m: m(input_ids=ids, pixel_values=pixels, output_attentions=True)
        ),
        notes="vision pooling head: nn.MultiheadAttention with a learned probe query (B, like "
        "Perceiver latents); SigLIP text takes no attention mask (pooled at the last position)",
    )


@_register("visual_bert")
def visual_bert() -> Arch:
    r"""VisualBERT (``VisualBertForVisualReasoning``, 3 labels): 7 text tokens then 3 region
    features in one stream; pooled at [CLS]."""
    from transformers import VisualBertConfig, VisualBertForVisualReasoning

    config = VisualBertConfig(vocab_size=VOCAB, visual_embedding_dim=8, num_labels=3, **BERT_LIKE)
    model = VisualBertForVisualReasoning(config)

    def forward(ids: Tensor, visual_embeds: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, visual_embeds=visual_embeds, attention_mask=mask).logits

    ids = _ids(length=7)
    ids[:, 0] = 2
    regions = _floats(2, 3, 8)
    mask = _ones(ids)
    types = {r"encoder\.layer\.\d+\.attention\.self$": "C"}

    def padded() -> tuple[Arch, Arch, int, list[int]]:
        real = ids[:1, :5]
        padded_ids, pad_mask, pads = _pad_right(real, 2, 0)
        kwargs = dict(model=model, forward_func=forward, feeds=(0, 1), types=types)
        return (
            Arch("visual_bert", inputs=(padded_ids, regions[:1]),
                 additional_forward_args=(pad_mask,), **kwargs),
            Arch("visual_bert", inputs=(real, regions[:1]),
                 additional_forward_args=(_ones(real),), **kwargs),
            0,
            pads,
        )

    return Arch(
        "visual_bert",
        model,
        forward,
        (ids, regions),
        (mask,),
        target=1,
        feeds=(0, 1),
        types=types,
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, visual_embeds=regions, attention_mask=mask,
                        output_attentions=True),
        ),
        padded=padded,
        notes="single stream: text ids embedded, region features concatenated after them; "
        "hand-written softmax (VisualBertSelfAttention)",
    )


@_register("vilt")
def vilt() -> Arch:
    r"""ViLT (``ViltForQuestionAnswering``, 3 labels): 6 text tokens, then [CLS] + 4 patches of a
    16×16 image, one stream. ViLT draws its patch order with ``torch.multinomial`` in every
    forward: ``forward_func`` runs it under a forked, re-seeded RNG."""
    from transformers import ViltConfig, ViltForQuestionAnswering

    config = ViltConfig(
        vocab_size=VOCAB, image_size=16, patch_size=8, max_position_embeddings=16, num_labels=3,
        **BERT_LIKE,
    )
    model = ViltForQuestionAnswering(config)

    def forward(ids: Tensor, pixel_values: Tensor, mask: Tensor) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            return model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask).logits

    ids = _ids(length=6)
    ids[:, 0] = 2
    pixels = _floats(2, 3, 16, 16)
    mask = _ones(ids)
    return Arch(
        "vilt",
        model,
        forward,
        (ids, pixels),
        (mask,),
        feeds=(0, 1),
        types={r"encoder\.layer\.\d+\.attention\.attention$": "C"},
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                        output_attentions=True),
        ),
        notes="single stream text + patches; patch order random per forward (seeded here); "
        "hand-written softmax (ViltSelfAttention)",
    )


@_register("lxmert")
def lxmert() -> Arch:
    r"""LXMERT (``LxmertForQuestionAnswering``, 3 answers): 2 language layers, 1 object-relation
    layer, 2 cross-modality layers; 6 tokens, 3 region features + boxes."""
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    config = LxmertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        l_layers=2,
        x_layers=2,
        r_layers=1,
        visual_feat_dim=8,
        visual_pos_dim=4,
        num_qa_labels=3,
        num_object_labels=5,
        num_attr_labels=4,
    )
    model = LxmertForQuestionAnswering(config)

    def forward(ids: Tensor, feats: Tensor, boxes: Tensor, mask: Tensor) -> Tensor:
        out = model(input_ids=ids, visual_feats=feats, visual_pos=boxes, attention_mask=mask)
        return out.question_answering_score

    ids = _ids(length=6)
    ids[:, 0] = 2
    feats = _floats(2, 3, 8)
    boxes = _floats(2, 3, 4, offset=1).sigmoid()
    mask = _ones(ids)
    types = {
        r"encoder\.layer\.\d+\.attention\.self$": "A",
        r"encoder\.r_layers\.\d+\.attention\.self$": "A",
        r"encoder\.x_layers\.\d+\.visual_attention\.att$": "B",
        r"encoder\.x_layers\.\d+\.(lang|visn)_self_att\.self$": "C",
    }

    def padded() -> tuple[Arch, Arch, int, list[int]]:
        real = ids[:1, :4]
        padded_ids, pad_mask, pads = _pad_right(real, 2, 0)
        kwargs = dict(model=model, forward_func=forward, feeds=(0, 1), types=types)
        return (
            Arch("lxmert", inputs=(padded_ids, feats[:1]),
                 additional_forward_args=(boxes[:1], pad_mask), **kwargs),
            Arch("lxmert", inputs=(real, feats[:1]),
                 additional_forward_args=(boxes[:1], _ones(real)), **kwargs),
            0,
            pads,
        )

    return Arch(
        "lxmert",
        model,
        forward,
        (ids, feats),
        (boxes, mask),
        target=2,
        feeds=(0, 1),
        types=types,
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, visual_feats=feats, visual_pos=boxes, attention_mask=mask,
                        output_attentions=True),
        ),
        padded=padded,
        notes="hand-written softmax (LxmertAttention); the one cross module per x-layer "
        "(visual_attention.att) is called twice: lang→vision and vision→lang",
    )


@_register("bridgetower")
def bridgetower() -> Arch:
    r"""BridgeTower (``BridgeTowerForImageAndTextRetrieval``): text encoder layers and vision
    blocks (seq-first ``nn.MultiheadAttention``, 64 wide, 1 head) run interleaved with the
    cross-modal layers (self-attention then cross-attention, in both directions), linked by
    bridge layers; 6 tokens, [CLS] + 4 patches."""
    from transformers import (
        BridgeTowerConfig,
        BridgeTowerForImageAndTextRetrieval,
        BridgeTowerTextConfig,
        BridgeTowerVisionConfig,
    )

    text = BridgeTowerTextConfig(vocab_size=VOCAB, max_position_embeddings=16, **BERT_LIKE)
    vision = BridgeTowerVisionConfig(
        hidden_size=64, num_hidden_layers=LAYERS, image_size=16, patch_size=8
    )
    config = BridgeTowerConfig(
        text_config=text, vision_config=vision, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
    )
    model = BridgeTowerForImageAndTextRetrieval(config)

    def forward(ids: Tensor, pixel_values: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask).logits

    ids = _ids(length=6)
    ids[:, 0] = 0
    pixels = _floats(2, 3, 16, 16)
    mask = _ones(ids)
    return Arch(
        "bridgetower",
        model,
        forward,
        (ids, pixels),
        (mask,),
        target=1,
        feeds=(0, 1),
        types={
            r"text_model\.encoder\.layer\.\d+\.attention\.self$": "A",
            r"vision_model\.visual\.transformer\.resblocks\.\d+\.attn$": "A",
            r"cross_modal_(text|image)_layers\.0\.attention\.self$": "A",
            r"cross_modal_(text|image)_layers\.[1-9]\d*\.attention\.self$": "C",
            r"cross_modal_(text|image)_layers\.\d+\.crossattention\.self$": "B",
        },
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                        output_attentions=True),
        ),
        notes="interleaved uni-modal and cross-modal layers; the vision blocks are "
        "nn.MultiheadAttention in (L, B, D) layout; cross-modal layer 0 self-attention sees one "
        "modality only (A), layer 1 gets the bridged cross features (C)",
    )


# ========================================================================= cross-attention models
@_register("detr")
def detr() -> Arch:
    r"""DETR (``DetrForObjectDetection``) on a tiny transformers ResNet backbone (no timm, no
    pretrained weights): 64×64 images → 2×2 feature map (4 encoder tokens), 5 object queries;
    score = class logits of query 0."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 8, 8, 16],
        depths=[1, 1, 1, 1],
        out_features=["stage4"],
    )
    config = DetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_queries=5,
        num_labels=3,
        **_seq2seq_sizes(),
    )
    model = DetrForObjectDetection(config)

    def forward(pixel_values: Tensor) -> Tensor:
        return model(pixel_values=pixel_values).logits[:, 0, :]

    pixels = _floats(2, 3, 64, 64)
    return Arch(
        "detr",
        model,
        forward,
        (pixels,),
        target=1,
        feeds=(0,),
        types={
            r"encoder\.layers\.\d+\.self_attn$": "A",
            **_decoder_types(
                r"decoder\.layers", "self_attn", r"decoder\.layers\.\d+\.encoder_attn$"
            ),
        },
        output_attentions=_eager_attentions(
            model, lambda m: m(pixel_values=pixels, output_attentions=True)
        ),
        notes="decoder layer 0 self-attention runs over the learned queries only (input-"
        "independent); position embeddings are added to queries/keys inside the attention modules",
    )


@_register("vision_encoder_decoder")
def vision_encoder_decoder() -> Arch:
    r"""``VisionEncoderDecoderModel``: ViT encoder ([CLS] + 4 patches) + GPT-2 decoder with
    cross-attention (``crossattention``); score = last-position logits of 4 target tokens."""
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    encoder = ViTConfig(image_size=16, patch_size=8, **BERT_LIKE)
    decoder = GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN,
        n_positions=16, add_cross_attention=True, is_decoder=True, bos_token_id=1,
        eos_token_id=2,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = VisionEncoderDecoderModel(config=config)

    def forward(pixel_values: Tensor, decoder_ids: Tensor) -> Tensor:
        return model(pixel_values=pixel_values, decoder_input_ids=decoder_ids).logits[:, -1, :]

    pixels = _floats(2, 3, 16, 16)
    decoder_ids = _ids(length=4, offset=1)
    return Arch(
        "vision_encoder_decoder",
        model,
        forward,
        (pixels, decoder_ids),
        target=int(decoder_ids[0, -1]),
        feeds=(0, 1),
        types={
            r"encoder\.layers\.\d+\.attention$": "A",
            **_decoder_types(
                r"decoder\.transformer\.h", "attn", r"decoder\.transformer\.h\.\d+\.crossattention$"
            ),
        },
        output_attentions=_eager_attentions(
            model,
            lambda m: m(pixel_values=pixels, decoder_input_ids=decoder_ids,
                        output_attentions=True),
        ),
    )


@_register("blip_itm")
def blip_itm() -> Arch:
    r"""BLIP image–text matching (``BlipForImageTextRetrieval``, ITM head): ViT-style vision
    tower ([CLS] + 4 patches), then a BERT text encoder whose layers self-attend and then
    cross-attend to the image (hand-written softmax)."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipTextConfig, BlipVisionConfig

    text = BlipTextConfig(
        vocab_size=VOCAB, encoder_hidden_size=HIDDEN, max_position_embeddings=16,
        bos_token_id=0, pad_token_id=1, sep_token_id=2, **BERT_LIKE,
    )
    # BLIP's vision default initializer_range is 1e-10: every map would be uniform.
    vision = BlipVisionConfig(image_size=16, patch_size=8, initializer_range=0.02, **BERT_LIKE)
    model = BlipForImageTextRetrieval(
        BlipConfig(text_config=text, vision_config=vision, projection_dim=16)
    )

    def forward(ids: Tensor, pixel_values: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask).itm_score

    ids = _ids(length=6)
    pixels = _floats(2, 3, 16, 16)
    mask = _ones(ids)
    return Arch(
        "blip_itm",
        model,
        forward,
        (ids, pixels),
        (mask,),
        target=1,
        feeds=(0, 1),
        types={
            r"vision_model\.encoder\.layers\.\d+\.self_attn$": "A",
            **_decoder_types(
                r"text_encoder\.encoder\.layer", r"attention\.self",
                r"text_encoder\.encoder\.layer\.\d+\.crossattention\.self$",
            ),
        },
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                        output_attentions=True),
        ),
        notes="BLIP replaces input_ids[:, 0] by its enc_token_id inside the forward",
    )


@_register("blip2_qformer")
def blip2_qformer() -> Arch:
    r"""BLIP-2 Q-Former (``Blip2QFormerModel``): 4 query embeddings self-attend, then
    cross-attend to 5 image features (width 24) in every layer; score = query 0's output."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    config = Blip2QFormerConfig(
        vocab_size=VOCAB, encoder_hidden_size=24, cross_attention_frequency=1, **BERT_LIKE
    )
    model = Blip2QFormerModel(config)

    def forward(queries: Tensor, image_features: Tensor) -> Tensor:
        out = model(query_embeds=queries, encoder_hidden_states=image_features)
        return out.last_hidden_state[:, 0, :]

    queries = _floats(2, 4, HIDDEN)
    features = _floats(2, 5, 24, offset=1)
    return Arch(
        "blip2_qformer",
        model,
        forward,
        (queries, features),
        feeds=(0, 1),
        types=_decoder_types(
            r"encoder\.layer",
            r"attention\.attention",
            r"encoder\.layer\.\d+\.crossattention\.attention$",
        ),
        output_attentions=_eager_attentions(
            model,
            lambda m: m(query_embeds=queries, encoder_hidden_states=features,
                        output_attentions=True),
        ),
    )


@_register("perceiver")
def perceiver() -> Arch:
    r"""Perceiver (``PerceiverModel``, no pre/post-processor): 4 latents cross-attend to 6
    inputs (width 16), then self-attend twice; score = latent 0."""
    from transformers import PerceiverConfig, PerceiverModel

    config = PerceiverConfig(
        num_latents=4,
        d_latents=HIDDEN,
        d_model=16,
        num_blocks=1,
        num_self_attends_per_block=2,
        num_self_attention_heads=HEADS,
        num_cross_attention_heads=1,
        attention_probs_dropout_prob=0.0,
    )
    model = PerceiverModel(config)

    def forward(inputs: Tensor) -> Tensor:
        return model(inputs=inputs).last_hidden_state[:, 0, :]

    inputs = _floats(2, 6, 16)
    return Arch(
        "perceiver",
        model,
        forward,
        (inputs,),
        feeds=(0,),
        types={
            r"encoder\.cross_attention\.attention\.self$": "B",
            r"encoder\.self_attends\.\d+\.attention\.self$": "A",
        },
        output_attentions=_eager_attentions(
            model, lambda m: m(inputs=inputs, output_attentions=True)
        ),
        notes="hand-written softmax; latents (learned) ← inputs is B; the latents are parameter "
        "tokens, never a source, so after it they hold the inputs only: their self-attention is A",
    )


@_register("layoutlmv3")
def layoutlmv3() -> Arch:
    r"""LayoutLMv3 (``LayoutLMv3ForSequenceClassification``): 6 text tokens with boxes, then
    [CLS] + 4 patches of a 16×16 page, one stream with 1D/2D relative position biases."""
    from transformers import LayoutLMv3Config, LayoutLMv3ForSequenceClassification

    config = LayoutLMv3Config(
        vocab_size=VOCAB,
        max_position_embeddings=20,
        coordinate_size=6,
        shape_size=4,
        rel_pos_bins=8,
        max_rel_pos=16,
        rel_2d_pos_bins=8,
        max_rel_2d_pos=32,
        input_size=16,
        patch_size=8,
        num_labels=3,
        **BERT_LIKE,
    )
    model = LayoutLMv3ForSequenceClassification(config)

    def forward(ids: Tensor, pixel_values: Tensor, bbox: Tensor, mask: Tensor) -> Tensor:
        out = model(input_ids=ids, pixel_values=pixel_values, bbox=bbox, attention_mask=mask)
        return out.logits

    ids = _ids(length=6)
    ids[:, 0] = 0
    pixels = _floats(2, 3, 16, 16)
    corners = torch.randint(0, 500, (2, 6, 2), generator=_generator(7))
    bbox = torch.cat([corners, corners + 100], dim=-1)
    mask = _ones(ids)
    return Arch(
        "layoutlmv3",
        model,
        forward,
        (ids, pixels),
        (bbox, mask),
        target=2,
        feeds=(0, 1),
        types={r"encoder\.layer\.\d+\.attention\.self$": "C"},
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, pixel_values=pixels, bbox=bbox, attention_mask=mask,
                        output_attentions=True),
        ),
        notes="single stream: text tokens then patch tokens concatenated; hand-written softmax",
    )


# =========================================================================== plain PyTorch models
def TorchSeq2Seq() -> nn.Module:  # noqa: N802 - a model class, configured
    r"""The plain-PyTorch encoder–decoder of ``tiny_models`` (``nn.TransformerEncoder`` /
    ``nn.TransformerDecoder``), head on the last target token, no nested tensors."""
    from tiny_models import TinyTorchTransformer

    return TinyTorchTransformer(head_position=-1, nested=False, causal_flag=True)


@_register("torch_seq2seq")
def torch_seq2seq() -> Arch:
    r""":class:`TorchSeq2Seq`: 6 source tokens, 4 target tokens, boolean key padding mask."""
    model = TorchSeq2Seq()
    src, tgt = _ids(length=6), _ids(length=4, offset=1)
    pad = torch.zeros(src.shape, dtype=torch.bool)
    types = {
        r"encoder\.layers\.\d+\.self_attn$": "A",
        **_decoder_types(r"decoder\.layers", "self_attn", r"decoder\.layers\.\d+\.multihead_attn$"),
    }

    def forward(src: Tensor, tgt: Tensor, src_key_padding_mask: Tensor) -> Tensor:
        return model(src, tgt, src_key_padding_mask=src_key_padding_mask)

    def padded() -> tuple[Arch, Arch, int, list[int]]:
        real = src[:1, :4]
        padded_src, mask, pads = _pad_right(real, 2, 0)
        kwargs = dict(model=model, forward_func=forward, feeds=(0, 1), types=types)
        return (
            Arch("torch_seq2seq", inputs=(padded_src, tgt[:1]),
                 additional_forward_args=(mask == 0,), **kwargs),
            Arch("torch_seq2seq", inputs=(real, tgt[:1]),
                 additional_forward_args=(torch.zeros(real.shape, dtype=torch.bool),), **kwargs),
            0,
            pads,
        )

    return Arch(
        "torch_seq2seq",
        model,
        forward,
        (src, tgt),
        (pad,),
        target=1,
        feeds=(0, 1),
        types=types,
        padded=padded,
        notes="nn.MultiheadAttention; nn.TransformerEncoderLayer takes its fused fast path (no "
        "MultiheadAttention.forward call) in eval mode under no_grad unless hooks or a torch "
        "function mode are active; the padding mask is boolean, True = padding",
    )


@_register("torch_dual_encoder")
def torch_dual_encoder() -> Arch:
    r"""Two ``nn.TransformerEncoder`` towers with the same length (4 tokens, 4 patches of a
    16×16 image), no cross-modal attention; score = cosine of the two [0]-token outputs."""

    class DualEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.words = nn.Embedding(VOCAB, HIDDEN)
            self.patches = nn.Linear(3 * 8 * 8, HIDDEN)
            self.text_position = nn.Parameter(torch.randn(4, HIDDEN) * 0.1)
            self.image_position = nn.Parameter(torch.randn(4, HIDDEN) * 0.1)
            layer = nn.TransformerEncoderLayer(
                HIDDEN, HEADS, dim_feedforward=FFN, dropout=0.0, batch_first=True, norm_first=True
            )
            self.text_encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
            self.image_encoder = nn.TransformerEncoder(
                copy.deepcopy(layer), LAYERS, enable_nested_tensor=False
            )

        def forward(self, ids: Tensor, pixel_values: Tensor) -> Tensor:
            text = self.text_encoder(self.words(ids) + self.text_position)
            image = self.image_encoder(self.patches(_patchify(pixel_values)) + self.image_position)
            return _cosine(text[:, 0], image[:, 0])

    model = DualEncoder()

    def forward(ids: Tensor, pixel_values: Tensor) -> Tensor:
        return model(ids, pixel_values)

    return Arch(
        "torch_dual_encoder",
        model,
        forward,
        (_ids(length=4), _floats(2, 3, 16, 16)),
        feeds=(0, 1),
        types={r"(text|image)_encoder\.layers\.\d+\.self_attn$": "A"},
        notes="equal-length towers (4 + 4 tokens), nn.MultiheadAttention, norm_first",
    )


def _patchify(pixel_values: Tensor, patch: int = 8) -> Tensor:
    r"""(B, C, H, W) → (B, H/p · W/p, C·p·p), row-major patches."""
    batch, channels, height, width = pixel_values.shape
    x = pixel_values.unfold(2, patch, patch).unfold(3, patch, patch)  # B C h w p p
    return x.permute(0, 2, 3, 1, 4, 5).reshape(batch, -1, channels * patch * patch)


class _SoftmaxAttentionBase(nn.Module):
    r"""Shared projections; subclasses' ``forward`` computes the softmax itself."""

    def __init__(self, dim: int = HIDDEN, num_heads: int = HEADS) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        batch, _, length, _ = x.shape
        return self.out(x.transpose(1, 2).reshape(batch, length, -1))

    def _scores(
        self, hidden_states: Tensor, keys_from: Tensor, key_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        q = self._split(self.query(hidden_states))
        k = self._split(self.key(keys_from))
        v = self._split(self.value(keys_from))
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5  # (B, H, n_q, n_k)
        if key_mask is not None:
            masked = key_mask[:, None, None, :] == 0
            scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
        return scores, v


class TextSelfAttention(_SoftmaxAttentionBase):
    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        scores, v = self._scores(hidden_states, hidden_states, attention_mask)
        probs = torch.softmax(scores, dim=-1)
        return self._merge(probs @ v)


class PatchSelfAttention(_SoftmaxAttentionBase):
    def forward(self, hidden_states: Tensor) -> Tensor:
        scores, v = self._scores(hidden_states, hidden_states, None)
        probs = scores.softmax(dim=-1)
        return self._merge(probs @ v)


class TextImageCrossAttention(_SoftmaxAttentionBase):
    def forward(self, hidden_states: Tensor, context: Tensor | None = None) -> Tensor:
        scores, v = self._scores(hidden_states, context, None)
        probs = F.softmax(scores, dim=-1)
        return self._merge(probs @ v)


class _Block(nn.Module):
    r"""Pre-norm residual block around one attention module and an MLP."""

    def __init__(self, attention: nn.Module, cross: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(HIDDEN)
        self.attention = attention
        self.context_norm = nn.LayerNorm(HIDDEN) if cross else None
        self.mlp_norm = nn.LayerNorm(HIDDEN)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, FFN), nn.GELU(), nn.Linear(FFN, HIDDEN))

    def forward(self, x: Tensor, context: Tensor | None = None, **kwargs: Any) -> Tensor:
        if self.context_norm is not None:
            x = x + self.attention(self.norm(x), context=self.context_norm(context))
        else:
            x = x + self.attention(self.norm(x), **kwargs)
        return x + self.mlp(self.mlp_norm(x))


class HandWrittenVQA(nn.Module):
    r"""Text tower (``TextSelfAttention``), image tower (``PatchSelfAttention``), one text→image
    cross-attention layer (``TextImageCrossAttention``, keys from ``context=``), then one fusion
    text self-attention layer; 3-way classifier on text token 0. No transformers, no
    ``nn.MultiheadAttention``."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB, HIDDEN)
        self.text_position = nn.Parameter(torch.randn(12, HIDDEN) * 0.1)
        self.patch_embed = nn.Linear(3 * 8 * 8, HIDDEN)
        self.image_position = nn.Parameter(torch.randn(4, HIDDEN) * 0.1)
        self.text_tower = nn.ModuleList(_Block(TextSelfAttention()) for _ in range(LAYERS))
        self.image_tower = nn.ModuleList(_Block(PatchSelfAttention()) for _ in range(LAYERS))
        self.cross = _Block(TextImageCrossAttention(), cross=True)
        self.fusion = _Block(TextSelfAttention())
        self.head = nn.Linear(HIDDEN, 3)

    def forward(
        self, ids: Tensor, pixel_values: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        text = self.words(ids) + self.text_position[: ids.shape[1]]
        for block in self.text_tower:
            text = block(text, attention_mask=attention_mask)
        image = self.patch_embed(_patchify(pixel_values)) + self.image_position
        for block in self.image_tower:
            image = block(image)
        text = self.cross(text, context=image)
        text = self.fusion(text, attention_mask=attention_mask)
        return self.head(text[:, 0])


@_register("handwritten_vqa")
def handwritten_vqa() -> Arch:
    r""":class:`HandWrittenVQA`: 6 text tokens, 4 patches of a 16×16 image."""
    model = HandWrittenVQA()

    def forward(ids: Tensor, pixel_values: Tensor, attention_mask: Tensor) -> Tensor:
        return model(ids, pixel_values, attention_mask)

    ids = _ids(length=6)
    pixels = _floats(2, 3, 16, 16)
    mask = _ones(ids)
    types = {
        r"^text_tower\.\d+\.attention$": "A",
        r"^image_tower\.\d+\.attention$": "A",
        r"^cross\.attention$": "B",
        r"^fusion\.attention$": "C",
    }

    def padded() -> tuple[Arch, Arch, int, list[int]]:
        real = ids[1:, :4]
        padded_ids, pad_mask, pads = _pad_right(real, 3, 0)
        kwargs = dict(model=model, forward_func=forward, feeds=(0, 1), types=types)
        return (
            Arch("handwritten_vqa", inputs=(padded_ids, pixels[1:]),
                 additional_forward_args=(pad_mask,), **kwargs),
            Arch("handwritten_vqa", inputs=(real, pixels[1:]),
                 additional_forward_args=(_ones(real),), **kwargs),
            0,
            pads,
        )

    return Arch(
        "handwritten_vqa",
        model,
        forward,
        (ids, pixels),
        (mask,),
        target=2,
        feeds=(0, 1),
        types=types,
        padded=padded,
        notes="hand-written softmax attention classes, num_heads attribute, cross attention gets "
        "its keys through context=",
    )


class InterleavedTowers(nn.Module):
    r"""Text and image towers of equal length (4 tokens, 4 patches) run layer by layer:
    ``text_layers[i]``, ``image_layers[i]``, then ``cross_layers[i]`` (text queries, image
    context); 3-way classifier on text token 0."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB, HIDDEN)
        self.patch_embed = nn.Linear(3 * 8 * 8, HIDDEN)
        self.position = nn.Parameter(torch.randn(4, HIDDEN) * 0.1)
        self.text_layers = nn.ModuleList(_Block(TextSelfAttention()) for _ in range(LAYERS))
        self.image_layers = nn.ModuleList(_Block(PatchSelfAttention()) for _ in range(LAYERS))
        self.cross_layers = nn.ModuleList(
            _Block(TextImageCrossAttention(), cross=True) for _ in range(LAYERS)
        )
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, ids: Tensor, pixel_values: Tensor) -> Tensor:
        text = self.words(ids) + self.position
        image = self.patch_embed(_patchify(pixel_values)) + self.position
        for text_layer, image_layer, cross_layer in zip(
            self.text_layers, self.image_layers, self.cross_layers, strict=True
        ):
            text = text_layer(text)
            image = image_layer(image)
            text = cross_layer(text, context=image)
        return self.head(text[:, 0])


@_register("interleaved_towers")
def interleaved_towers() -> Arch:
    r""":class:`InterleavedTowers`: 4 text tokens, 4 patches of a 16×16 image."""
    model = InterleavedTowers()

    def forward(ids: Tensor, pixel_values: Tensor) -> Tensor:
        return model(ids, pixel_values)

    return Arch(
        "interleaved_towers",
        model,
        forward,
        (_ids(length=4), _floats(2, 3, 16, 16)),
        target=1,
        feeds=(0, 1),
        types={
            r"^text_layers\.0\.attention$": "A",
            r"^text_layers\.[1-9]\d*\.attention$": "C",
            r"^image_layers\.\d+\.attention$": "A",
            r"^cross_layers\.\d+\.attention$": "B",
        },
        notes="towers interleaved layer by layer, same number of tokens in both streams; text "
        "layer 1 runs after cross layer 0 (C), image layers never receive text (A)",
    )


# =============================================================================== VLMs (decoder LMs)
IMAGE_TOKEN = 98  # placeholder id of the VLMs below (ids drawn by _ids stay below 90)
LM_TYPES = {r"language_model\.layers\.\d+\.self_attn$": "C"}


def _vlm_ids(
    n_image: int,
    n_text: int,
    image_token: int = IMAGE_TOKEN,
    bos: int | None = 1,
    offset: int = 0,
    before: list[int] | None = None,
    after: list[int] | None = None,
) -> Tensor:
    r"""Batch of 2: [bos] + before + image placeholders + after + text tokens."""
    parts = [] if bos is None else [torch.full((2, 1), bos)]
    if before:
        parts.append(torch.tensor(before).expand(2, -1))
    parts.append(torch.full((2, n_image), image_token))
    if after:
        parts.append(torch.tensor(after).expand(2, -1))
    parts.append(_ids(length=n_text, offset=offset))
    return torch.cat(parts, dim=1)


def _vlm_arch(
    name: str,
    model: nn.Module,
    ids: Tensor,
    pixel_kwargs: dict[str, Tensor],
    types: dict[str, str],
    pixels_in_inputs: bool = True,
    extra: dict[str, Tensor] | None = None,
    notes: str = "",
    pad_id: int = 0,
    with_padded: bool = False,
) -> Arch:
    r"""A VLM scored on the logits of the last real token. ``inputs`` = (input_ids, first pixel
    tensor) when ``pixels_in_inputs``, else (input_ids,); the other pixel tensors (image sizes,
    grids, ...), the attention mask and ``extra`` per-example tensors are additional arguments,
    in that order."""
    pixel_names = list(pixel_kwargs)
    extra = extra or {}
    extra_names = list(extra)
    n_attr = 1 if pixels_in_inputs else 0

    def forward(ids: Tensor, *args: Tensor) -> Tensor:
        pixels = dict(zip(pixel_names, args[: len(pixel_names)], strict=True))
        mask = args[len(pixel_names)]
        more = dict(zip(extra_names, args[len(pixel_names) + 1 :], strict=True))
        logits = model(input_ids=ids, attention_mask=mask, **pixels, **more).logits
        return _last_real(logits, mask)

    mask = _ones(ids)
    values = list(pixel_kwargs.values())
    inputs = (ids, *values[:n_attr])
    additional = (*values[n_attr:], mask, *extra.values())

    def padded() -> tuple[Arch, Arch, int, list[int]]:
        real = ids[:1]
        padded_ids, pad_mask, pads = _pad_right(real, 2, pad_id)
        first = [v[:1] for v in values]
        more = [v[:1] for v in extra.values()]
        padded_more = [
            torch.cat([v, torch.zeros(1, 2, *v.shape[2:], dtype=v.dtype)], dim=1) for v in more
        ]
        kwargs = dict(model=model, forward_func=forward, feeds=(0, 1) if n_attr else (0,),
                      types=types, target=int(ids[0, -1]))
        return (
            Arch(name, inputs=(padded_ids, *first[:n_attr]),
                 additional_forward_args=(*first[n_attr:], pad_mask, *padded_more), **kwargs),
            Arch(name, inputs=(real, *first[:n_attr]),
                 additional_forward_args=(*first[n_attr:], _ones(real), *more), **kwargs),
            0,
            pads,
        )

    return Arch(
        name,
        model,
        forward,
        inputs,
        additional,
        target=int(ids[0, -1]),
        feeds=(0, 1) if n_attr else (0,),
        types=types,
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, attention_mask=mask, **pixel_kwargs, **extra,
                        output_attentions=True),
        ),
        padded=padded if with_padded else None,
        notes=notes,
    )


def _clip_vision(image_size: int = 16, **extra: Any) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=image_size, patch_size=8, **BERT_LIKE, **extra)


def _llama_text(**extra: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**dict(LLAMA_LIKE, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra))


@_register("llava")
def llava() -> Arch:
    r"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP vision tower (16×16, 8×8 patches →
    [CLS] + 4), features of layer -2 without [CLS], 2-layer MLP projector, spliced into a Llama
    at the 4 placeholder ids; 12 tokens."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=_clip_vision(), text_config=_llama_text(), image_token_index=IMAGE_TOKEN,
        image_seq_length=4,
    )
    model = LlavaForConditionalGeneration(config)
    ids = _vlm_ids(4, 7)
    return _vlm_arch(
        "llava", model, ids, dict(pixel_values=_floats(2, 3, 16, 16)),
        {r"vision_tower\.encoder\.layers\.\d+\.self_attn$": "A", **LM_TYPES},
        with_padded=True,
        notes="vision_feature_layer=-2: the last vision layer runs but does not reach the LM",
    )


@_register("llava_next")
def llava_next() -> Arch:
    r"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``), anyres with one 16×32 grid pinpoint:
    each image = base 16×16 view + 2 crops (pixel_values (B, 3, 3, 16, 16)); 4 base tokens +
    2×4 crop tokens + 2 ``image_newline`` tokens = 14 image tokens."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(
        vision_config=_clip_vision(), text_config=_llama_text(), image_token_index=IMAGE_TOKEN,
        image_grid_pinpoints=[[16, 32]], image_seq_length=14,
    )
    model = LlavaNextForConditionalGeneration(config)
    ids = _vlm_ids(14, 5)
    pixels = _floats(2, 3, 3, 16, 16)
    sizes = torch.tensor([[16, 32], [16, 32]])
    return _vlm_arch(
        "llava_next", model, ids, dict(pixel_values=pixels, image_sizes=sizes),
        {r"vision_tower\.encoder\.layers\.\d+\.self_attn$": "A", **LM_TYPES},
        notes="vision tower runs on B·3 views flattened into its batch; a learned image_newline "
        "vector is appended after each row of crop features",
    )


@_register("qwen2_vl")
def qwen2_vl() -> Arch:
    r"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): one 16×16 image per example, patches
    4×4×(2 frames) → 4×4 grid → 2×2 merged = 4 image tokens between vision start/end tokens;
    M-RoPE from ``mm_token_type_ids``. pixel_values are packed (B·16, 96) with
    ``image_grid_thw`` (B, 3): both are additional arguments, only input_ids are attributed."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    head_dim = HIDDEN // HEADS
    text = dict(
        LLAMA_LIKE, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]),
    )
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    vision = dict(
        depth=LAYERS, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=HEADS, mlp_ratio=2,
        patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
    )
    config = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN, video_token_id=97,
        vision_start_token_id=96, vision_end_token_id=95,
    )
    model = Qwen2VLForConditionalGeneration(config)
    ids = _vlm_ids(4, 6, before=[96], after=[95])
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])
    pixels = _floats(2 * 16, 3 * 2 * 4 * 4)
    token_types = (ids == IMAGE_TOKEN).int()
    return _vlm_arch(
        "qwen2_vl", model, ids, dict(pixel_values=pixels, image_grid_thw=grid),
        {r"visual\.blocks\.\d+\.attn$": "A", **LM_TYPES},
        pixels_in_inputs=False,
        extra=dict(mm_token_type_ids=token_types),
        notes="no-batch-slice: pixel_values are the packed patches of all images (no batch dim: "
        "example b owns rows 16b:16(b+1), as image_grid_thw says); the vision blocks see "
        "(N_total, D) and each VisionAttention call runs one attention per image (split by "
        "cu_seqlens); M-RoPE needs mm_token_type_ids (last additional arg)",
    )


@_register("idefics3")
def idefics3() -> Arch:
    r"""Idefics3 (``Idefics3ForConditionalGeneration``): SigLIP-style vision encoder on a 32×32
    image (16 patches, no [CLS]), pixel shuffle ×2 → 4 tokens of width 128, linear connector,
    spliced into a Llama at 4 ``<image>`` placeholders wrapped in ``<fake_token_around_image>``."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig

    vision = Idefics3VisionConfig(image_size=32, patch_size=8, **BERT_LIKE)
    config = Idefics3Config(
        vision_config=vision, text_config=_llama_text(), image_token_id=IMAGE_TOKEN, scale_factor=2
    )
    model = Idefics3ForConditionalGeneration(config)
    ids = _vlm_ids(4, 6, before=[97], after=[97])
    return _vlm_arch(
        "idefics3", model, ids, dict(pixel_values=_floats(2, 1, 3, 32, 32)),
        {r"vision_model\.encoder\.layers\.\d+\.self_attn$": "A",
         r"text_model\.layers\.\d+\.self_attn$": "C"},
        with_padded=True,
        notes="pixel_values (B, images, 3, H, W); zero-image-dropped: an all-zero image counts as "
        "padding and is removed, so an all-zero pixel baseline fails (placeholder count mismatch)",
    )


@_register("smolvlm")
def smolvlm() -> Arch:
    r"""SmolVLM (``SmolVLMForConditionalGeneration``): Idefics3-like, 32×32 image → 16 patches →
    pixel shuffle ×2 → 4 image tokens spliced into a Llama."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig

    vision = SmolVLMVisionConfig(image_size=32, patch_size=8, **BERT_LIKE)
    config = SmolVLMConfig(
        vision_config=vision, text_config=_llama_text(), image_token_id=IMAGE_TOKEN, scale_factor=2
    )
    model = SmolVLMForConditionalGeneration(config)
    ids = _vlm_ids(4, 5, before=[97], after=[97])
    return _vlm_arch(
        "smolvlm", model, ids, dict(pixel_values=_floats(2, 1, 3, 32, 32, offset=3)),
        {r"vision_model\.encoder\.layers\.\d+\.self_attn$": "A",
         r"text_model\.layers\.\d+\.self_attn$": "C"},
        notes="zero-image-dropped: like Idefics3, an all-zero image is removed as padding",
    )


@_register("paligemma")
def paligemma() -> Arch:
    r"""PaliGemma (``PaliGemmaForConditionalGeneration``): SigLIP vision tower without head (4
    patches, no [CLS]), linear projector, 4 image tokens spliced into a Gemma whose prefix (image
    + prompt, ``token_type_ids`` 0) attends bidirectionally and whose suffix (type 1) is causal."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        SiglipVisionConfig,
    )

    vision = SiglipVisionConfig(image_size=16, patch_size=8, vision_use_head=False, **BERT_LIKE)
    text = GemmaConfig(**dict(LLAMA_LIKE, num_key_value_heads=1, head_dim=16, pad_token_id=0,
                              bos_token_id=1, eos_token_id=2))
    config = PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
        projection_dim=HIDDEN, hidden_size=HIDDEN, vocab_size=VOCAB,
    )
    model = PaliGemmaForConditionalGeneration(config)
    ids = torch.cat([torch.full((2, 4), IMAGE_TOKEN), torch.ones(2, 1, dtype=torch.long),
                     _ids(length=6)], dim=1)
    token_types = torch.zeros_like(ids)
    token_types[:, -2:] = 1  # the last 2 tokens are the suffix
    return _vlm_arch(
        "paligemma", model, ids, dict(pixel_values=_floats(2, 3, 16, 16)),
        {r"vision_tower\.encoder\.layers\.\d+\.self_attn$": "A", **LM_TYPES},
        extra=dict(token_type_ids=token_types),
        with_padded=True,
        notes="bidirectional prefix over image + prompt from token_type_ids (additional arg after "
        "the mask); text embeddings are scaled by sqrt(hidden) inside the embedding, image "
        "features are not; positions are 1-indexed",
    )


@_register("blip2_opt")
def blip2_opt() -> Arch:
    r"""BLIP-2 (``Blip2ForConditionalGeneration``) with a tiny OPT: vision tower ([CLS] + 4
    patches), Q-Former (4 learned queries, cross-attention every other layer), linear projection,
    4 query outputs spliced into OPT at the image placeholders."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        OPTConfig,
    )

    vision = Blip2VisionConfig(image_size=16, patch_size=8, **BERT_LIKE)
    qformer = Blip2QFormerConfig(
        vocab_size=VOCAB, encoder_hidden_size=HIDDEN, cross_attention_frequency=2, **BERT_LIKE
    )
    text = OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=FFN,
        num_attention_heads=HEADS, max_position_embeddings=64, word_embed_proj_dim=HIDDEN,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    config = Blip2Config(
        vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=4,
        image_token_index=IMAGE_TOKEN,
    )
    model = Blip2ForConditionalGeneration(config)
    ids = _vlm_ids(4, 6, bos=None)
    ids = torch.cat([ids[:, :4], torch.ones(2, 1, dtype=torch.long), ids[:, 4:]], dim=1)
    return _vlm_arch(
        "blip2_opt", model, ids, dict(pixel_values=_floats(2, 3, 16, 16)),
        {
            r"vision_model\.encoder\.layers\.\d+\.self_attn$": "A",
            r"qformer\.encoder\.layer\.\d+\.attention\.attention$": "A",
            r"qformer\.encoder\.layer\.\d+\.crossattention\.attention$": "B",
            r"language_model\.model\.decoder\.layers\.\d+\.self_attn$": "C",
        },
        with_padded=True,
        notes="Q-Former layer 0: queries self-attend (A) then cross-attend (B); layer 1 self: A, "
        "the learned queries are parameter tokens (never a source) holding the image only; no "
        "cross (cross_attention_frequency=2); OPT positions come from the attention mask",
    )


@_register("instructblip")
def instructblip() -> Arch:
    r"""InstructBLIP (``InstructBlipForConditionalGeneration``) with a tiny Llama: the Q-Former
    reads 4 learned queries + the instruction (``qformer_input_ids``, 4 tokens) in one
    self-attention; only the queries cross-attend to the image; 4 query outputs spliced into the
    LM."""
    from transformers import (
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
    )

    vision = InstructBlipVisionConfig(image_size=16, patch_size=8, **BERT_LIKE)
    qformer = InstructBlipQFormerConfig(
        vocab_size=VOCAB, encoder_hidden_size=HIDDEN, cross_attention_frequency=1,
        max_position_embeddings=32, pad_token_id=0, **BERT_LIKE,
    )
    config = InstructBlipConfig(
        vision_config=vision, qformer_config=qformer, text_config=_llama_text(),
        num_query_tokens=4, image_token_index=IMAGE_TOKEN,
    )
    model = InstructBlipForConditionalGeneration(config)
    ids = _vlm_ids(4, 6)
    qformer_ids = _ids(length=4, offset=5)
    qformer_mask = _ones(qformer_ids)

    def forward(ids: Tensor, pixel_values: Tensor, qformer_ids: Tensor, mask: Tensor,
                qformer_mask: Tensor) -> Tensor:
        out = model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask,
                    qformer_input_ids=qformer_ids, qformer_attention_mask=qformer_mask)
        return _last_real(out.logits, mask)

    pixels = _floats(2, 3, 16, 16)
    mask = _ones(ids)
    return Arch(
        "instructblip",
        model,
        forward,
        (ids, pixels, qformer_ids),
        (mask, qformer_mask),
        target=int(ids[0, -1]),
        feeds=(0, 1, 2),
        types={
            r"vision_model\.encoder\.layers\.\d+\.self_attn$": "A",
            **_decoder_types(r"qformer\.encoder\.layer", r"attention\.attention",
                             r"qformer\.encoder\.layer\.\d+\.crossattention\.attention$"),
            r"language_model\.model\.layers\.\d+\.self_attn$": "C",
        },
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                        qformer_input_ids=qformer_ids, qformer_attention_mask=qformer_mask,
                        output_attentions=True),
        ),
        notes="Q-Former layer 0 self-attention over [learned queries; instruction text] has one "
        "input modality so far (A); the cross-attention sees only the query rows",
    )


@_register("mllama")
def mllama() -> Arch:
    r"""Mllama (``MllamaForConditionalGeneration``): tiled vision encoder (1 image, 1 tile of
    16×16: [CLS] + 4 patches padded to 8 tokens; 2 local layers + 1 global layer; output =
    final ⊕ layer-1 states), projected, then read by a text decoder through a gated
    cross-attention layer (layer 1) between self-attention layers 0 and 2."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaTextConfig,
        MllamaVisionConfig,
    )

    vision = MllamaVisionConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_global_layers=1, attention_heads=HEADS,
        intermediate_size=FFN, vision_output_dim=2 * HIDDEN, image_size=16, patch_size=8,
        max_num_tiles=1, supported_aspect_ratios=[[1, 1]], intermediate_layers_indices=[1],
    )
    text = MllamaTextConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=3, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, intermediate_size=FFN, cross_attention_layers=[1],
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN)
    model = MllamaForConditionalGeneration(config)
    # The cross-attention gates start at 0 (tanh(0) = 0): open them so the image reaches the text.
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for name in ("cross_attn_attn_gate", "cross_attn_mlp_gate"):
                if hasattr(layer, name):
                    getattr(layer, name).fill_(1.0)
    ids = _vlm_ids(1, 7)  # <|image|> is a plain token here: nothing is spliced at it
    pixels = _floats(2, 1, 1, 3, 16, 16)
    aspect_ids = torch.ones(2, 1, dtype=torch.long)
    aspect_mask = torch.ones(2, 1, 1, dtype=torch.long)
    cross_mask = torch.ones(2, ids.shape[1], 1, 1, dtype=torch.long)
    cross_mask[:, 0] = 0  # bos comes before the image: it does not attend to it

    def forward(ids: Tensor, pixel_values: Tensor, aspect_ratio_ids: Tensor,
                aspect_ratio_mask: Tensor, mask: Tensor, cross_attention_mask: Tensor) -> Tensor:
        out = model(input_ids=ids, pixel_values=pixel_values, aspect_ratio_ids=aspect_ratio_ids,
                    aspect_ratio_mask=aspect_ratio_mask, attention_mask=mask,
                    cross_attention_mask=cross_attention_mask)
        return _last_real(out.logits, mask)

    mask = _ones(ids)
    return Arch(
        "mllama",
        model,
        forward,
        (ids, pixels),
        (aspect_ids, aspect_mask, mask, cross_mask),
        target=int(ids[0, -1]),
        feeds=(0, 1),
        types={
            r"vision_model\.(transformer|global_transformer)\.layers\.\d+\.self_attn$": "A",
            r"language_model\.layers\.0\.self_attn$": "A",
            r"language_model\.layers\.([2-9]|\d\d+)\.self_attn$": "C",
            r"language_model\.layers\.\d+\.cross_attn$": "B",
        },
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, pixel_values=pixels, aspect_ratio_ids=aspect_ids,
                        aspect_ratio_mask=aspect_mask, attention_mask=mask,
                        cross_attention_mask=cross_mask, output_attentions=True),
        ),
        notes="cross-attention VLM: the text stream never holds image tokens; layer 1 is a "
        "cross-attention-only decoder layer (no self-attention), gates set to 1 (they are "
        "initialised at 0); the vision encoder pads each tile to a multiple of 8 tokens",
    )


@_register("git")
def git() -> Arch:
    r"""GIT (``GitForCausalLM``): CLIP-like image encoder ([CLS] + 4 patches, all kept),
    projected and concatenated before the 6 text tokens; one BERT-style self-attention stack over
    [image; text] (image tokens bidirectional, text causal)."""
    from transformers import GitConfig, GitForCausalLM

    vision = dict(image_size=16, patch_size=8, **BERT_LIKE)
    config = GitConfig(
        vision_config=vision, vocab_size=VOCAB, max_position_embeddings=32, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, **BERT_LIKE,
    )
    model = GitForCausalLM(config)
    ids = _ids(length=6)
    ids[:, 0] = 1

    def forward(ids: Tensor, pixel_values: Tensor, mask: Tensor) -> Tensor:
        logits = model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask).logits
        return _last_real(logits[:, -ids.shape[1]:], mask)

    pixels = _floats(2, 3, 16, 16)
    mask = _ones(ids)
    return Arch(
        "git",
        model,
        forward,
        (ids, pixels),
        (mask,),
        target=int(ids[0, -1]),
        feeds=(0, 1),
        types={
            r"image_encoder\.vision_model\.encoder\.layers\.\d+\.self_attn$": "A",
            r"git\.encoder\.layer\.\d+\.attention\.self$": "C",
        },
        output_attentions=_eager_attentions(
            model,
            lambda m: m(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                        output_attentions=True),
        ),
        notes="image tokens concatenated (torch.cat) before the text, not spliced at placeholders",
    )


@_register("fuyu")
def fuyu() -> Arch:
    r"""Fuyu (``FuyuForCausalLM``): no vision transformer: 4 raw 8×8×3 patches (B, 4, 192) go
    through one linear layer and are spliced at 4 image placeholders (a newline token after each
    row of 2) of a Persimmon decoder."""
    from transformers import FuyuConfig, FuyuForCausalLM, PersimmonConfig

    text = PersimmonConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=64, qk_layernorm=True, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )
    config = FuyuConfig(
        text_config=text, image_size=16, patch_size=8, num_channels=3, image_token_id=IMAGE_TOKEN,
        pad_token_id=0,
    )
    model = FuyuForCausalLM(config)
    row = torch.tensor([IMAGE_TOKEN, IMAGE_TOKEN, 97])
    ids = torch.cat([row.expand(2, -1), row.expand(2, -1), torch.ones(2, 1, dtype=torch.long),
                     _ids(length=5)], dim=1)
    patches = _patchify(_floats(2, 3, 16, 16))
    return _vlm_arch(
        "fuyu", model, ids, dict(pixel_values=patches),
        {r"language_model\.layers\.\d+\.self_attn$": "C"},
        with_padded=True,
        notes="no vision encoder attention at all: only the LM's self-attention (C)",
    )


@_register("kosmos2")
def kosmos2() -> Arch:
    r"""Kosmos-2 (``Kosmos2ForConditionalGeneration``): CLIP-like vision encoder ([CLS] + 4
    patches), a resampler (4 learned latent queries cross-attend to [image features; latents]),
    then the 4 latents are written into the text embeddings where ``image_embeds_position_mask``
    is 1 (boolean-index assignment)."""
    from transformers import (
        Kosmos2Config,
        Kosmos2ForConditionalGeneration,
        Kosmos2TextConfig,
        Kosmos2VisionConfig,
    )

    text = Kosmos2TextConfig(
        vocab_size=VOCAB, embed_dim=HIDDEN, layers=LAYERS, ffn_dim=FFN, attention_heads=HEADS,
        max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    vision = Kosmos2VisionConfig(image_size=16, patch_size=8, **BERT_LIKE)
    config = Kosmos2Config(text_config=text, vision_config=vision, latent_query_num=4)
    model = Kosmos2ForConditionalGeneration(config)
    # <s> <image> 4 × placeholder </image> text
    ids = _vlm_ids(4, 5, image_token=3, bos=0, before=[96], after=[95])
    position_mask = (torch.arange(ids.shape[1]) >= 2) & (torch.arange(ids.shape[1]) < 6)
    position_mask = position_mask.long().expand(2, -1).clone()
    return _vlm_arch(
        "kosmos2", model, ids, dict(pixel_values=_floats(2, 3, 16, 16)),
        {
            r"vision_model\.model\.encoder\.layers\.\d+\.self_attn$": "A",
            r"image_to_text_projection\.x_attn$": "B",
            r"text_model\.model\.layers\.\d+\.self_attn$": "C",
        },
        extra=dict(image_embeds_position_mask=position_mask),
        pad_id=1,
        with_padded=True,
        notes="resampler x_attn: learned latents query [image features; latents] (B); same "
        "KosmosTextAttention class as the LM self-attention; splice by boolean-index assignment",
    )
