r"""Tiny generating models with processors built offline (never from a hub), for
``tests/test_hf_generation.py``: tokenizers from a small vocabulary (the ``tokenizers`` library
wrapped in ``PreTrainedTokenizerFast``; Whisper's byte-level BPE from a vocabulary dict), image
processors from their torchvision-free classes (``hf_tiny.image_processor``) and feature
extractors from theirs, models from configs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hf_tiny import image_processor
from torch import nn

WORDS = ("the", "a", "cat", "dog", "sat", "on", "mat", "red", "blue", "is", "what", "color", "of",
         "picture", "describe", "sound", "hello", "world", "yes", "no", "big", "small")
PIECES = ("un", "##happy", "##s", "##ing", "##ed")
SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
LAYERS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def wordpiece(template: str | None = "[BOS] $A", extra: tuple[str, ...] = ()) -> Any:
    r"""A WordPiece tokenizer over :data:`WORDS` (+ ``##`` pieces), ``[PAD]=0 [UNK]=1 [BOS]=2
    [EOS]=3``, then ``extra`` special tokens; ``template`` adds the specials around the text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate((*SPECIALS, *extra, *WORDS, *PIECES))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    if template:
        backend.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(s, vocab[s]) for s in SPECIALS if s in template])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                        unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra)})
    return tokenizer


def never_special(model: nn.Module, head: nn.Module, banned: list[int]) -> nn.Module:
    r"""A random model greedily repeats padding or stops at once; a hook on its output layer
    lowers ``banned`` ids by 100 for generate() and the explained forward alike, so the
    tiny models generate words."""

    def lower(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., banned] -= 100.0
        return output

    head.register_forward_hook(lower)
    return model


def picture(seed: int, height: int = 20, width: int = 30) -> Any:
    """A random RGB PIL picture of ``height × width``."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))


def gpt2() -> tuple[nn.Module, Any]:
    r"""GPT-2 (2 layers) with a ``[BOS] $A`` WordPiece tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = wordpiece()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4,
                        n_positions=64, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    model = GPT2LMHeadModel(config).eval()
    return never_special(model, model.lm_head, [0, 1, 2]), tokenizer


def bart() -> tuple[nn.Module, Any]:
    r"""BART (2 + 2 layers) with a ``$A [EOS]`` WordPiece tokenizer; decoder start ``[EOS]``."""
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = wordpiece(template="[BOS] $A [EOS]")
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2,
                        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                        pad_token_id=0, bos_token_id=2, eos_token_id=3,
                        decoder_start_token_id=3, forced_bos_token_id=None,
                        forced_eos_token_id=None)
    model = BartForConditionalGeneration(config).eval()
    return never_special(model, model.lm_head, [0, 1, 2, 3]), tokenizer


def t5() -> tuple[nn.Module, Any]:
    r"""T5 (2 + 2 layers, relative position buckets) with a ``$A [EOS]`` WordPiece tokenizer;
    decoder start ``[PAD]``, as T5's."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = wordpiece(template="$A [EOS]")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      pad_token_id=0, eos_token_id=3, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    return never_special(model, model.lm_head, [0, 1, 2, 3]), tokenizer


def blip() -> tuple[nn.Module, Any]:
    r"""BLIP captioner (``BlipForConditionalGeneration``, 16×16 pictures, 8×8 patches) with a
    ``BlipProcessor`` of a ``BlipImageProcessor`` and a ``[BOS] $A [EOS]`` tokenizer."""
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    tokenizer = wordpiece(template="[BOS] $A [EOS]")
    processor = BlipProcessor(
        image_processor=image_processor("BlipImageProcessor", size={"height": 16, "width": 16}),
        tokenizer=tokenizer)
    torch.manual_seed(0)
    text = BlipTextConfig(vocab_size=len(tokenizer), encoder_hidden_size=32,
                          max_position_embeddings=32, bos_token_id=2, sep_token_id=3,
                          pad_token_id=0, eos_token_id=3, **LAYERS)
    # BLIP's vision default initializer_range is 1e-10: every map would be uniform
    vision = BlipVisionConfig(image_size=16, patch_size=8, initializer_range=0.02, **LAYERS)
    model = BlipForConditionalGeneration(BlipConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)).eval()
    head = model.text_decoder.cls.predictions.decoder
    return never_special(model, head, [0, 1, 2]), processor


def llava() -> tuple[nn.Module, Any]:
    r"""LLaVA (CLIP tower 16×16 / 8×8 patches → 4 image tokens, 2-layer Llama) with a
    ``LlavaProcessor`` of a ``CLIPImageProcessor`` (resize the short side to 16, centre crop
    16×16) and a tokenizer holding ``<image>``."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = wordpiece(extra=("<image>",))
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    processor = LlavaProcessor(
        image_processor=image_processor("CLIPImageProcessor", size={"shortest_edge": 16},
                                        crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1)
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=16, patch_size=8, **LAYERS).to_dict(),
        text_config=LlamaConfig(vocab_size=len(tokenizer), num_key_value_heads=4,
                                max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                                eos_token_id=3, **LAYERS).to_dict(),
        image_token_index=image_token, image_seq_length=4,
        vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(config).eval()
    return never_special(model, model.lm_head, [0, 1, 2, image_token]), processor


WHISPER_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                    "<|translate|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                    "<|notimestamps|>")


def whisper() -> tuple[nn.Module, Any]:
    r"""Whisper (2 + 2 layers, 8 mel bins, 1-second windows: 100 frames → 50 encoder
    positions) with a ``WhisperProcessor`` of a ``WhisperFeatureExtractor`` and a byte-level
    ``WhisperTokenizer`` over a few words."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    for word in ("Ġthe", "Ġcat", "Ġsat", "Ġdog", "Ġhello", "Ġworld"):
        vocab[word] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": list(WHISPER_SPECIALS[1:])})
    ids = tokenizer.convert_tokens_to_ids(list(WHISPER_SPECIALS))
    extractor = WhisperFeatureExtractor(feature_size=8, chunk_length=1, sampling_rate=16000,
                                        hop_length=160)
    processor = WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=8, max_source_positions=50,
        max_target_positions=32, pad_token_id=ids[0], bos_token_id=ids[0],
        eos_token_id=ids[0], decoder_start_token_id=ids[1], suppress_tokens=None,
        begin_suppress_tokens=None, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64)
    model = WhisperForConditionalGeneration(config).eval()
    # bytes and specials lowered: it transcribes words, for max_new_tokens
    return never_special(model, model.proj_out, [*range(256), *ids]), processor


def waves(*lengths: int, seed: int = 0) -> list[np.ndarray]:
    """Waveforms of ``lengths`` samples (16 kHz): a tone plus noise each."""
    rng = np.random.RandomState(seed)
    return [(np.sin(np.linspace(0, 40 * (i + 1), n)) + 0.1 * rng.randn(n)).astype("float32")
            for i, n in enumerate(lengths)]
