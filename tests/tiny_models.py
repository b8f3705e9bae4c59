r"""Tiny random-weight models built from configs (no download), one builder per family.

Every builder returns ``(model, inputs)``: a model in ``eval()`` mode with fixed random weights
(hidden size 32, 2 layers, 2 heads unless the architecture needs otherwise) and a dict of keyword
inputs for ``model(**inputs)`` (batch of 2 unless noted, short sequences). transformers models are
built with ``attn_implementation="eager"`` by default so that ``output_attentions=True`` returns
the maps; pass ``attn_implementation=None`` to get the library default (``sdpa``).

:data:`BUILDERS` maps a family name to its builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Built = tuple[nn.Module, dict[str, Any]]

HIDDEN = 32
LAYERS = 2
HEADS = 2
FFN = 37
VOCAB = 99
SEED = 0

_BERT_LIKE = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=FFN,
)


def _generator(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def _ids(batch: int = 2, length: int = 6, offset: int = 0) -> Tensor:
    return torch.randint(5, VOCAB, (batch, length), generator=_generator(100 + offset))


def _floats(*shape: int, offset: int = 0) -> Tensor:
    return torch.randn(*shape, generator=_generator(200 + offset))


def _padding_mask(batch: int = 2, length: int = 6) -> Tensor:
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length - 2 :] = 0  # the last example is padded: masks must reach the maps
    return mask


def _finish(model: nn.Module) -> nn.Module:
    return model.eval()


def _seeded(build: Callable[..., Built]) -> Callable[..., Built]:
    def wrapper(*args: Any, **kwargs: Any) -> Built:
        torch.manual_seed(SEED)
        model, inputs = build(*args, **kwargs)
        return _finish(model), inputs

    wrapper.__name__ = build.__name__
    wrapper.__doc__ = build.__doc__
    return wrapper


@_seeded
def bert(attn_implementation: str | None = "eager") -> Built:
    r"""BERT encoder (``BertModel``), padded batch."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=VOCAB, attn_implementation=attn_implementation, **_BERT_LIKE)
    return BertModel(config), dict(input_ids=_ids(), attention_mask=_padding_mask())


@_seeded
def roberta(attn_implementation: str | None = "eager") -> Built:
    r"""RoBERTa encoder (``RobertaModel``), padded batch."""
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(
        vocab_size=VOCAB,
        max_position_embeddings=16,
        pad_token_id=1,
        attn_implementation=attn_implementation,
        **_BERT_LIKE,
    )
    return RobertaModel(config), dict(input_ids=_ids(), attention_mask=_padding_mask())


@_seeded
def vit(attn_implementation: str | None = "eager") -> Built:
    r"""ViT encoder on 16×16 images with 8×8 patches: 4 patches + [CLS]."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        image_size=16, patch_size=8, attn_implementation=attn_implementation, **_BERT_LIKE
    )
    return ViTModel(config), dict(pixel_values=_floats(2, 3, 16, 16))


@_seeded
def deit(attn_implementation: str | None = "eager") -> Built:
    r"""DeiT encoder: 4 patches + [CLS] + distillation token."""
    from transformers import DeiTConfig, DeiTModel

    config = DeiTConfig(
        image_size=16, patch_size=8, attn_implementation=attn_implementation, **_BERT_LIKE
    )
    return DeiTModel(config), dict(pixel_values=_floats(2, 3, 16, 16))


@_seeded
def clip(attn_implementation: str | None = "eager") -> Built:
    r"""CLIP with both towers (``CLIPModel``): causal text tower, vision tower."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=16, **_BERT_LIKE)
    vision = CLIPVisionConfig(image_size=16, patch_size=8, **_BERT_LIKE)
    config = CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=16,
        attn_implementation=attn_implementation,
    )
    inputs = dict(
        input_ids=_ids(), attention_mask=_padding_mask(), pixel_values=_floats(2, 3, 16, 16)
    )
    return CLIPModel(config), inputs


def _seq2seq_sizes() -> dict[str, int]:
    return dict(
        d_model=HIDDEN,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
    )


@_seeded
def bart(attn_implementation: str | None = "eager") -> Built:
    r"""BART encoder–decoder (``BartModel``): 6 source tokens, 4 target tokens."""
    from transformers import BartConfig, BartModel

    config = BartConfig(
        vocab_size=VOCAB,
        max_position_embeddings=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        attn_implementation=attn_implementation,
        **_seq2seq_sizes(),
    )
    inputs = dict(
        input_ids=_ids(),
        attention_mask=_padding_mask(),
        decoder_input_ids=_ids(length=4, offset=1),
    )
    return BartModel(config), inputs


@_seeded
def t5(attn_implementation: str | None = "eager") -> Built:
    r"""T5 encoder–decoder (``T5Model``, relative position bias): 6 source, 4 target tokens."""
    from transformers import T5Config, T5Model

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
        decoder_start_token_id=0,
        attn_implementation=attn_implementation,
    )
    inputs = dict(
        input_ids=_ids(),
        attention_mask=_padding_mask(),
        decoder_input_ids=_ids(length=4, offset=1),
    )
    return T5Model(config), inputs


@_seeded
def whisper(attn_implementation: str | None = "eager") -> Built:
    r"""Whisper encoder–decoder: 8 mel bins × 16 frames (8 encoder positions), 4 target tokens."""
    from transformers import WhisperConfig, WhisperModel

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
        attn_implementation=attn_implementation,
        **_seq2seq_sizes(),
    )
    inputs = dict(input_features=_floats(2, 8, 16), decoder_input_ids=_ids(length=4, offset=1))
    return WhisperModel(config), inputs


@_seeded
def detr(attn_implementation: str | None = "eager") -> Built:
    r"""DETR with a tiny transformers ResNet backbone (no timm): 64×64 images → 2×2 features,
    5 object queries."""
    from transformers import DetrConfig, DetrModel, ResNetConfig

    backbone = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 8, 8, 16],
        depths=[1, 1, 1, 1],
        out_features=["stage4"],
    )
    config = DetrConfig(
        backbone_config=backbone,
        num_queries=5,
        attn_implementation=attn_implementation,
        **_seq2seq_sizes(),
    )
    return DetrModel(config), dict(pixel_values=_floats(2, 3, 64, 64))


@_seeded
def vision_encoder_decoder(attn_implementation: str | None = "eager") -> Built:
    r"""``VisionEncoderDecoderModel``: ViT encoder + GPT-2 decoder with cross-attention."""
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    encoder = ViTConfig(image_size=16, patch_size=8, **_BERT_LIKE)
    decoder = GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=FFN,
        n_positions=16,
        add_cross_attention=True,
        is_decoder=True,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = VisionEncoderDecoderModel(config=config)
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    inputs = dict(pixel_values=_floats(2, 3, 16, 16), decoder_input_ids=_ids(length=4, offset=1))
    return model, inputs


@_seeded
def lxmert() -> Built:
    r"""LXMERT (hand-written attention): 2 language, 1 vision, 2 cross layers; 6 tokens, 3 boxes."""
    from transformers import LxmertConfig, LxmertModel

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
    inputs = dict(
        input_ids=_ids(),
        attention_mask=_padding_mask(),
        visual_feats=_floats(2, 3, 8),
        visual_pos=_floats(2, 3, 4, offset=1).sigmoid(),
    )
    return LxmertModel(config), inputs


@_seeded
def visual_bert() -> Built:
    r"""VisualBERT (hand-written attention): 6 text tokens + 3 visual embeddings in one stream."""
    from transformers import VisualBertConfig, VisualBertModel

    config = VisualBertConfig(vocab_size=VOCAB, visual_embedding_dim=8, **_BERT_LIKE)
    inputs = dict(input_ids=_ids(), attention_mask=_padding_mask(), visual_embeds=_floats(2, 3, 8))
    return VisualBertModel(config), inputs


@_seeded
def vilt() -> Built:
    r"""ViLT (hand-written attention): 6 text tokens + [CLS] + 4 patches of a 16×16 image.

    ViLT permutes the patches at random in every forward: call it through :func:`run`."""
    from transformers import ViltConfig, ViltModel

    config = ViltConfig(
        vocab_size=VOCAB, image_size=16, patch_size=8, max_position_embeddings=16, **_BERT_LIKE
    )
    inputs = dict(
        input_ids=_ids(), attention_mask=_padding_mask(), pixel_values=_floats(2, 3, 16, 16)
    )
    return ViltModel(config), inputs


@_seeded
def blip() -> Built:
    r"""BLIP image–text matching (``BlipForImageTextRetrieval``, hand-written attention): vision
    tower, then a text encoder with cross-attention to the image."""
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipTextConfig, BlipVisionConfig

    text = BlipTextConfig(
        vocab_size=VOCAB, encoder_hidden_size=HIDDEN, max_position_embeddings=16, **_BERT_LIKE
    )
    # BLIP's vision default initializer_range is 1e-10: every map would be uniform.
    vision = BlipVisionConfig(
        image_size=16, patch_size=8, initializer_range=0.02, **_BERT_LIKE
    )
    config = BlipConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16
    )
    inputs = dict(
        input_ids=_ids(), attention_mask=_padding_mask(), pixel_values=_floats(2, 3, 16, 16)
    )
    return BlipForImageTextRetrieval(config), inputs


@_seeded
def blip2_qformer(attn_implementation: str | None = "eager") -> Built:
    r"""BLIP-2 Q-Former (``Blip2QFormerModel``): 4 learned queries attending to 5 image features."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    config = Blip2QFormerConfig(
        vocab_size=VOCAB,
        encoder_hidden_size=24,
        cross_attention_frequency=1,
        attn_implementation=attn_implementation,
        **_BERT_LIKE,
    )
    inputs = dict(
        query_embeds=_floats(2, 4, HIDDEN), encoder_hidden_states=_floats(2, 5, 24, offset=1)
    )
    return Blip2QFormerModel(config), inputs


@_seeded
def perceiver() -> Built:
    r"""Perceiver (hand-written attention): 4 latents cross-attend 6 inputs, then 2 self-attends."""
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
    return PerceiverModel(config), dict(inputs=_floats(2, 6, 16))


class SelfAttention(nn.Module):
    """A hand-written softmax self-attention (fused q/k/v projection, ``heads`` heads)."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, hidden: Tensor) -> Tensor:
        q, k, v = self.qkv(hidden).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).flatten(2))


class TinyTorchTransformer(nn.Module):
    r"""A plain-PyTorch encoder–decoder on ``nn.TransformerEncoder`` / ``nn.TransformerDecoder``
    (``nn.MultiheadAttention`` inside), with a classification head on the target token
    ``head_position`` (the first by default); ``nested``: the encoder's nested-tensor fast path;
    ``causal_flag``: tell the decoder its mask is causal (``tgt_is_causal``)."""

    def __init__(
        self, vocab: int = VOCAB, dim: int = HIDDEN, heads: int = HEADS, head_position: int = 0,
        nested: bool = True, causal_flag: bool = False,
    ) -> None:
        super().__init__()
        self.head_position, self.causal_flag = head_position, causal_flag
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(16, dim) * 0.1)
        encoder_layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=FFN, dropout=0.1, batch_first=True
        )
        decoder_layer = nn.TransformerDecoderLayer(
            dim, heads, dim_feedforward=FFN, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(encoder_layer, LAYERS, enable_nested_tensor=nested)
        self.decoder = nn.TransformerDecoder(decoder_layer, LAYERS)
        self.head = nn.Linear(dim, 3)

    def forward(
        self, src: Tensor, tgt: Tensor, src_key_padding_mask: Tensor | None = None
    ) -> Tensor:
        src_x = self.embed(src) + self.position[: src.shape[1]]
        tgt_x = self.embed(tgt) + self.position[: tgt.shape[1]]
        memory = self.encoder(src_x, src_key_padding_mask=src_key_padding_mask)
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        out = self.decoder(
            tgt_x, memory, tgt_mask=causal, tgt_is_causal=self.causal_flag,
            memory_key_padding_mask=src_key_padding_mask,
        )
        return self.head(out[:, self.head_position])


@_seeded
def torch_transformer() -> Built:
    r""":class:`TinyTorchTransformer`: 6 source tokens (last example padded), 4 target tokens."""
    padding = _padding_mask() == 0
    inputs = dict(src=_ids(), tgt=_ids(length=4, offset=1), src_key_padding_mask=padding)
    return TinyTorchTransformer(), inputs


def run(model: nn.Module, inputs: dict[str, Any], **kwargs: Any) -> Any:
    r"""``model(**inputs, **kwargs)`` with the global RNG reset first: ViLT draws its image
    patches with ``torch.multinomial`` in every forward, even in eval mode."""
    torch.manual_seed(SEED)
    return model(**inputs, **kwargs)


BUILDERS: dict[str, Callable[..., Built]] = {
    "bert": bert,
    "roberta": roberta,
    "vit": vit,
    "deit": deit,
    "clip": clip,
    "bart": bart,
    "t5": t5,
    "whisper": whisper,
    "detr": detr,
    "vision_encoder_decoder": vision_encoder_decoder,
    "lxmert": lxmert,
    "visual_bert": visual_bert,
    "vilt": vilt,
    "blip": blip,
    "blip2_qformer": blip2_qformer,
    "perceiver": perceiver,
    "torch_transformer": torch_transformer,
}
