r"""Sweep data for audio model types (see :mod:`model_types.builders`).

Audio models read float features or waveforms, so the generic builder passes no mask; the
types here get their own shapes (what each type's transformers test feeds it) and, where the
model takes one, a frame mask with example 1 padded, passed as an extra forward argument so a
single example gets its own row.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

PAD = 4  # example 1's last frames are padding


def _randn(*shape: int, seed: int = 2) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1234 + seed))


def _frame_mask(frames: int, pad: int = PAD) -> Tensor:
    mask = torch.ones(2, frames, dtype=torch.long)
    mask[1, frames - pad:] = 0
    return mask


def _config(model_type: str, values: dict[str, Any], config_name: str | None = None) -> Any:
    r"""The shrunk default config of ``model_type`` (or of the sub-config class ``config_name``)
    with ``values`` merged in."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from ..build import LABELS, _merge, shrink

    config_class = getattr(transformers, config_name) if config_name else CONFIG_MAPPING[
        model_type]
    data = shrink(config_class().to_dict())
    _merge(data, values)
    for key in ("transformers_version", "architectures", "id2label", "label2id"):
        data.pop(key, None)
    data["num_labels"] = LABELS
    return config_class.from_dict(data)


def _case(model_type: str, class_name: str, values: dict[str, Any], inputs: dict[str, Tensor],
          extras: dict[str, Tensor] | None = None, head: str = "base", fixed: dict | None = None,
          mask: Tensor | None = None, config_name: str | None = None,
          score: Any = None, module: str | None = None) -> Any:
    r"""A Case of ``class_name`` (of ``transformers``, or of ``transformers.models.<module>``
    for a class it does not export): ``inputs`` attributed, ``extras`` (masks) passed as
    additional forward args (sliced per example), ``fixed`` passed as they are;
    ``score(output)`` replaces the generic score."""
    import importlib

    import transformers

    from ..build import Case, _score

    extras = extras or {}
    config = _config(model_type, values, config_name)
    torch.manual_seed(0)
    owner = importlib.import_module(f"transformers.models.{module}") if module else transformers
    model = getattr(owner, class_name)(config).eval()
    names = (*inputs, *extras)

    def forward(*args: Tensor) -> Tensor:
        kwargs = {**(fixed or {}), **dict(zip(names, args, strict=True))}
        # an LM reads each example's last real token (the mask travels with its example)
        read = kwargs.get("attention_mask") if head == "lm" else None
        output = model(**kwargs)
        return score(output) if score is not None else _score(output, head, read)

    with torch.no_grad():
        forward(*inputs.values(), *extras.values())
    return Case(model_type, head, class_name, model, forward, tuple(inputs.values()),
                tuple(extras.values()), 1, mask, [f"inputs: {', '.join(names)}"])


def _ast_inputs(config: Any) -> list[dict[str, Tensor]]:
    return [{"input_values": _randn(2, config.max_length, config.num_mel_bins)}]


_IDS = torch.randint(5, 90, (2, 8), generator=torch.Generator().manual_seed(9))
# Mimi's codec: upsampling groups = hidden size, 4 small codebooks, a frame of 2·2·2 samples
_MIMI = {"upsample_groups": 32, "upsampling_ratios": [2, 2], "codebook_size": 16,
         "codebook_dim": 32, "vector_quantization_hidden_dimension": 32, "num_quantizers": 4,
         "num_filters": 8, "sliding_window": 16}
_FAST_CONFORMER = {"num_mel_bins": 16, "conv_kernel_size": 3, "dropout": 0.0, "layerdrop": 0.0,
                   "activation_dropout": 0.0, "attention_dropout": 0.0}

def _waveform(config: Any) -> list[dict[str, Tensor]]:
    return [{"input_values": _randn(2, 1, 256)}]


OVERRIDES: dict[str, dict[str, Any]] = {
    "mimi": {"config": _MIMI, "inputs": _waveform},
    # the decoder's attention reads the key/value head count from the top config
    "moonshine_streaming": {"config": {"num_key_value_heads": 2}},
    # 24 frames × 16 mel bins in 2×2 patches with stride 2: 12 × 8 patches
    "audio-spectrogram-transformer": {
        "config": {"patch_size": 2, "max_length": 24, "num_mel_bins": 16, "frequency_stride": 2,
                   "time_stride": 2},
        "inputs": _ast_inputs},
}

_PARAKEET = {"encoder_config": _FAST_CONFORMER}
_STREAMING = {"encoder_config": {**_FAST_CONFORMER, "sliding_window": 8,
                                 "default_num_lookahead_tokens": 2}}


def _transducer(model_type: str, class_name: str, config: dict[str, Any]) -> Any:
    r"""An RNNT / TDT model (8× subsampling) over 64 frames of 16 mel bins, one decoder token
    per example; example 1's last 16 frames (2 encoder tokens) are padding."""
    return _case(model_type, class_name, config, {"input_features": _randn(2, 64, 16)},
                 {"attention_mask": _frame_mask(64, 16),
                  "decoder_input_ids": torch.tensor([[5], [6]])}, mask=_frame_mask(8, 2))


# its rotary embedding spans at least 32 channels of a head: one head of 32
_CLVP_ENCODER = {"num_attention_heads": 1, "bos_token_id": 98, "eos_token_id": 98}


# Nemotron 3.5 Transcribe: a speech encoder and a diarization model (4 speakers) on the same
# 16 mel bins, both 8× subsampled; a Nemotron-H LM (one Mamba-2 mixer, one attention layer)
_DIARIZATION = {"audio_config": {"num_mel_bins": 16}, "chunk_length": 16, "chunk_right_context": 4,
                "head_config": {"hidden_size": 32, "audio_hidden_size": 32, "num_speakers": 4},
                "streaming_config": {"num_speakers": 4, "speaker_cache_length": 8,
                                     "fifo_length": 8, "speaker_cache_update_period": 8}}
_TRANSCRIBE_AUDIO = {"asr_config": {"num_mel_bins": 16}, "diarization_config": _DIARIZATION}
_TRANSCRIBE = {
    "audio_config": _TRANSCRIBE_AUDIO, "audio_token_id": 98,
    "word_timestamp_config": {"blank_token_id": 98},
    "text_config": {"layers_block_type": ["mamba", "attention"], "mamba_num_heads": 4,
                    "mamba_head_dim": 16, "expand": 2, "n_groups": 1, "ssm_state_size": 8,
                    "chunk_size": 8, "moe_shared_expert_intermediate_size": 64}}


def _transcribe_speechlm() -> Any:
    r"""64 frames of 16 mel bins (example 1's last 16 padding) become 8 audio tokens (6 for
    example 1: padding frames give none) between 2 + 2 text ids; example 1 masks its last 2."""
    ids = torch.tensor([[5, 6] + [98] * 8 + [7, 8], [5, 6] + [98] * 6 + [7, 8, 0, 0]])
    mask = (ids != 0).long()
    return _case("nemo_speechlm", "Nemotron3_5TranscribeForConditionalGeneration", _TRANSCRIBE,
                 {"input_ids": ids, "input_features": _randn(2, 64, 16)},
                 {"attention_mask": mask, "input_features_mask": _frame_mask(64, 16)},
                 head="lm", mask=mask)


def _wave_mask(samples: int, pad: int) -> Tensor:
    r"""A ``(2, 1, samples)`` waveform padding mask, example 1's last ``pad`` samples padding."""
    return _frame_mask(samples, pad).unsqueeze(1)


# its test's codec: an acoustic encoder of hop 2·2·4 = 16 (24 at the decoder's 24 kHz) beside
# a Wav2Vec2-BERT semantic encoder over 8 mel bins × 2 stacked frames, one FSQ codebook
_NEUCODEC = {"encoder_hidden_size": 8, "downsampling_ratios": [2, 2, 4], "hidden_size": 32,
             "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8,
             "quantization_dim": 64, "quantization_levels": [4, 4, 4, 4],
             "semantic_model_config": {"model_type": "wav2vec2-bert", "hidden_size": 32,
                                       "num_attention_heads": 2, "intermediate_size": 64,
                                       "feature_projection_input_dim": 16,
                                       "output_hidden_size": 32}}


def _audio_score(output: Any) -> Tensor:
    r"""A codec's reconstruction in 4 means over consecutive spans of samples (its first 4
    samples alone fall where the synthesis window is ~0)."""
    return output.audio_values.flatten(1).unflatten(1, (4, -1)).mean(-1)


def _spread_fsq(case: Any, module: str) -> Any:
    r"""``case`` with the linear ``module`` (before an FSQ quantizer) rescaled so its outputs on
    the batch have unit spread: at init they are ~1e-4, every latent rounds to the same code and
    the decoder's input (so its audio) is exactly zero."""
    layer = case.model.get_submodule(module)
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        case.forward_func(*case.inputs, *case.additional_forward_args)
        handle.remove()
        layer.weight.mul_(1.0 / float(seen[0].std()))
    case.notes.append(f"{module} rescaled: latents spread over the FSQ levels")
    return case


# Qwen3-ASR's encoder: chunks of 100 frames (its token count per chunk, 13, is fixed in the
# model), 16 mel bins, attention in windows of 2 chunks = one window per example here
_QWEN3_ASR_ENCODER = {"num_mel_bins": 16, "downsample_hidden_size": 8, "output_dim": 32,
                      "n_window": 50, "n_window_infer": 200}


def _qwen3_asr_tokens(features_mask: Tensor) -> Tensor:
    r"""Each example's encoder token count: 13 per full chunk of 100 frames, the rest through
    three stride-2 convolutions."""
    from transformers.models.qwen3_asr.modeling_qwen3_asr import _get_feat_extract_output_lengths

    return _get_feat_extract_output_lengths(features_mask.sum(-1).long())


def _qwen3_asr_encoder() -> Any:
    r"""The encoder packs every example's valid tokens into one sequence (attention within each
    example's window): the score averages each example's own rows. 200 frames of 16 mel bins,
    both examples whole (26 tokens each). The inputs stay batch-first (the packing is inside),
    so single examples slice off the batch. Example 1's last 50 frames are masked: 26 + 20
    packed rows, examples of different sizes."""
    import transformers

    from ..build import Case

    config = _config("qwen3_asr_encoder", _QWEN3_ASR_ENCODER)
    torch.manual_seed(0)
    model = transformers.Qwen3ASREncoder(config).eval()

    def forward(input_features: Tensor, input_features_mask: Tensor) -> Tensor:
        rows = model(input_features=input_features,
                     input_features_mask=input_features_mask).last_hidden_state
        sizes = _qwen3_asr_tokens(input_features_mask).tolist()
        return torch.stack([part.mean(0)[:4] for part in rows.split(sizes)])

    features, mask = _randn(2, 16, 200), _frame_mask(200, 50)
    with torch.no_grad():
        forward(features, mask)
    return Case("qwen3_asr_encoder", "base", "Qwen3ASREncoder", model, forward, (features,),
                (mask,), 1, None, ["inputs: input_features"])


def _qwen3_asr() -> Any:
    r"""The speech LM: 2 text ids, audio placeholders (26 for example 0's 200 frames, 20 for
    example 1's 150), text ids, example 1's last 9 padding."""
    ids = torch.tensor([[5, 6] + [98] * 26 + [7, 8, 9, 10, 11, 12],
                        [5, 6] + [98] * 20 + [7, 8, 9] + [0] * 9])
    mask = (ids != 0).long()
    return _case("qwen3_asr", "Qwen3ASRForConditionalGeneration",
                 {"audio_config": _QWEN3_ASR_ENCODER, "audio_token_id": 98, "pad_token_id": 0,
                  "eos_token_id": 2, "timestamp_token_id": 97,
                  "text_config": {"pad_token_id": 0}},
                 {"input_ids": ids, "input_features": _randn(2, 16, 200)},
                 {"attention_mask": mask, "input_features_mask": _frame_mask(200, 50)},
                 head="lm", mask=mask)


def _voxtral_realtime_text() -> Any:
    r"""The text decoder of Voxtral Realtime alone (not exported by ``transformers``): ids with
    example 1's last 3 padding, the time condition of 6 delay tokens the full model passes."""
    from transformers.models.voxtral_realtime.modeling_voxtral_realtime import (
        VoxtralRealtimeTimeEmbedding,
    )

    t_cond = VoxtralRealtimeTimeEmbedding(32)(torch.tensor([6.0]))[None]
    return _case("voxtral_realtime_text", "VoxtralRealtimeTextModel", {"sliding_window": 16},
                 {"input_ids": _IDS}, {"attention_mask": _frame_mask(8, 3)}, head="lm",
                 fixed={"t_cond": t_cond}, mask=_frame_mask(8, 3),
                 module="voxtral_realtime.modeling_voxtral_realtime")


def _clvp_score(output: Any) -> Tensor:
    r"""Example i's text embedding against its own speech embedding (the logits pair every text
    with every speech clip of the batch)."""
    return (output.text_embeds * output.speech_embeds)[:, :4]


BUILDERS: dict[str, Any] = {
    "voxtral_realtime_text": _voxtral_realtime_text,
    # WavTokenizer's encoder returns only its codes: scored as numbers (a conv + LSTM encoder and
    # a codebook lookup, nothing to differentiate)
    "wavtokenizer_encoder": partial(
        _case, "wavtokenizer_encoder", "WavTokenizerEncoderModel", {"codebook_dim": 32},
        {"input_values": _randn(2, 1, 3200)},
        score=lambda output: output.audio_codes.flatten(1)[:, :4].float()),
    "qwen3_asr_encoder": _qwen3_asr_encoder,
    "qwen3_asr": _qwen3_asr,
    # 8 frames of 128 samples / 16-wide features, example 1's last 2 feature frames masked in the
    # semantic encoder; no waveform padding mask: a padded one makes a (B, 1, T) code mask that
    # the decoder's mask builder cannot index (transformers 5.25)
    "neucodec": lambda: _spread_fsq(_case(
        "neucodec", "NeuCodecModel", _NEUCODEC,
        {"input_values": _randn(2, 1, 128), "input_features": _randn(2, 8, 16, seed=3)},
        {"input_features_mask": _frame_mask(8, 2)}, score=_audio_score),
        "quantizer.project_in"),
    # its test's codec: a DAC of hop 16·16 over 256 samples beside a 2-layer HuBERT (codes
    # between encoder and decoder, the semantic model under no_grad)
    "xcodec": partial(
        _case, "xcodec", "XcodecModel",
        {"acoustic_model_config": {"decoder_hidden_size": 8, "encoder_hidden_size": 8,
                                   "codebook_size": 16, "downsampling_ratios": [16, 16],
                                   "upsampling_ratios": [16, 16], "hidden_size": 32},
         "codebook_dim": 64,
         "semantic_model_config": {"hidden_size": 32, "num_hidden_layers": 2,
                                   "num_attention_heads": 2, "intermediate_size": 12,
                                   "conv_dim": [4] * 7}},
        {"input_values": _randn(2, 1, 256)}, score=_audio_score),
    # NeuCodec's parent: the same codec at one sampling rate (the decoder takes no mask)
    "xcodec2": lambda: _spread_fsq(_case(
        "xcodec2", "Xcodec2Model", _NEUCODEC,
        {"input_values": _randn(2, 1, 128), "input_features": _randn(2, 8, 16, seed=3)},
        {"input_features_mask": _frame_mask(8, 2)}, score=_audio_score),
        "quantizer.project_in"),
    "nemo_speechlm": _transcribe_speechlm,
    "nemotron3_5_transcribe_audio": partial(
        _case, "nemotron3_5_transcribe_audio", "Nemotron3_5TranscribeAudioModel",
        _TRANSCRIBE_AUDIO, {"input_features": _randn(2, 64, 16)},
        {"input_features_mask": _frame_mask(64, 16)}, mask=_frame_mask(8, 2)),
    # speech encoder states (8 frames, example 1's last 2 padding), upsampled 2× before attention
    # (the relevance is over the 16 upsampled frames)
    "nemotron3_5_transcribe_word_timestamp": partial(
        _case, "nemotron3_5_transcribe_word_timestamp", "Nemotron3_5TranscribeWordTimestampModel",
        {"blank_token_id": 98}, {"inputs_embeds": _randn(2, 8, 32)},
        {"attention_mask": _frame_mask(8, 2)}, mask=_frame_mask(16, 4)),
    # its test's sizes: text ids (example 1 padded, the mask to the text encoder) conditioning
    # a decoder on 20 frames of 16 mel bins; the speech encoder reads the decoder's argmax ids
    "clvp": partial(
        _case, "clvp", "ClvpModelForConditionalGeneration",
        {"decoder_config": {"feature_size": 16, "num_mel_attn_blocks": 1, "max_text_tokens": 32,
                            "max_mel_tokens": 32, "relative_attention_num_buckets": 4,
                            "relative_attention_max_distance": 16, "bos_token_id": 97,
                            "eos_token_id": 98},
         "text_config": _CLVP_ENCODER, "speech_config": _CLVP_ENCODER},
        {"input_ids": _IDS, "input_features": _randn(2, 16, 20)},
        {"attention_mask": _frame_mask(8, 3)}, mask=_frame_mask(8, 3), score=_clvp_score),
    # conformer over 20 frames of 16 stacked features, example 1's last 4 frames masked
    "wav2vec2-bert": partial(
        _case, "wav2vec2-bert", "Wav2Vec2BertForSequenceClassification",
        {"feature_projection_input_dim": 16, "conv_depthwise_kernel_size": 3,
         "apply_spec_augment": False, "layerdrop": 0.0, "classifier_proj_size": 16},
        {"input_features": _randn(2, 20, 16)}, {"attention_mask": _frame_mask(20)},
        head="classifier", mask=_frame_mask(20)),
    # 20 low-frame-rate rows of 8 mel bins × 7 stacked frames, with the frame mask
    "fun_asr_nano_encoder": partial(
        _case, "fun_asr_nano_encoder", "FunAsrNanoEncoder",
        {"num_mel_bins": 8, "fsmn_kernel_size": 3, "hidden_dropout": 0.0,
         "attention_dropout": 0.0},
        {"input_features": _randn(2, 20, 56)},
        {"input_features_mask": _frame_mask(20)}),
    # the Whisper-like encoder over 8 mel bins × 64 frames (stride 2: 32 positions), mask on frames
    "audioflamingo3_encoder": partial(
        _case, "audioflamingo3_encoder", "AudioFlamingo3Encoder", {"num_mel_bins": 8},
        {"input_features": _randn(2, 8, 64)}, {"input_features_mask": _frame_mask(64, 8)}),
    # conformer with chunked local attention: 16 mel bins, 2 conv subsampling steps; the mask is
    # True on padding frames
    "gemma3n_audio": partial(
        _case, "gemma3n_audio", "Gemma3nAudioEncoder",
        {"input_feat_size": 16, "sscp_conv_channel_size": [16, 16], "conf_num_hidden_layers": 2,
         "conf_reduction_factor": 1},
        {"audio_mel": _randn(2, 32, 16)}, {"audio_mel_mask": _frame_mask(32, 8) == 0}),
    # its subsampler reads as many mel bins as its first conv has channels
    "gemma4_audio": partial(
        _case, "gemma4_audio", "Gemma4AudioModel",
        {"subsampling_conv_channels": [16, 16], "output_proj_dims": 32},
        {"input_features": _randn(2, 32, 16)}, {"attention_mask": _frame_mask(32, 8) == 1}),
    # 4 stacked frames of 8 mel bins per row
    "granite_speech5_encoder": partial(
        _case, "granite_speech5_encoder", "GraniteSpeech5Encoder",
        {"num_mel_bins": 8, "conv_kernel_size": 3, "context_size": 8},
        {"input_features": _randn(2, 16, 32)}, {"attention_mask": _frame_mask(16)}),
    "granite_speech5_ctc": partial(
        _case, "granite_speech5_ctc", "GraniteSpeech5ForCTC",
        {"encoder_config": {"num_mel_bins": 8, "conv_kernel_size": 3, "context_size": 8}},
        {"input_features": _randn(2, 16, 32)}, {"attention_mask": _frame_mask(16)}, head="lm"),
    # fast conformer (8× subsampling) over 64 frames of 16 mel bins, one decoder token each
    "parakeet_rnnt": partial(_transducer, "parakeet_rnnt", "ParakeetForRNNT", _PARAKEET),
    "parakeet_tdt": partial(_transducer, "parakeet_tdt", "ParakeetForTDT", _PARAKEET),
    # cache-aware streaming conformer (8× subsampling), as Parakeet
    "nemotron_asr_streaming": partial(
        _transducer, "nemotron_asr_streaming", "NemotronAsrStreamingForRNNT", _STREAMING),
    "nemotron3_5_asr": partial(
        _transducer, "nemotron3_5_asr", "Nemotron3_5AsrForRNNT",
        {**_STREAMING, "num_prompts": 4, "prompt_intermediate_size": 32,
         "default_prompt_id": 1}),
    # one text stream and 4 audio codebooks per step, summed into one embedding per step
    "kyutai_speech_to_text": partial(
        _case, "kyutai_speech_to_text", "KyutaiSpeechToTextModel",
        {"num_codebooks": 4, "codebook_vocab_size": 16, "sliding_window": 8},
        {"input_ids": torch.randint(5, 15, (2, 8, 5), generator=torch.Generator().manual_seed(7))},
        {"attention_mask": _frame_mask(8, 3)}, mask=_frame_mask(8, 3)),
    # 64 frames of 16 mel bins, 8 frames per audio token: 8 text ids beside them
    "voxtral_realtime": partial(
        _case, "voxtral_realtime", "VoxtralRealtimeModel",
        {"audio_config": {"num_mel_bins": 16, "sliding_window": 16},
         "text_config": {"sliding_window": 16}},
        {"input_features": _randn(2, 16, 64)},
        {"input_ids": torch.randint(5, 40, (2, 8), generator=torch.Generator().manual_seed(8))}),
    # the sub-models are what runs (BarkModel only generates): the semantic text-to-token LM
    "bark": partial(
        _case, "bark", "BarkSemanticModel", {"input_vocab_size": 99, "output_vocab_size": 99},
        {"input_ids": _IDS}, {"attention_mask": _frame_mask(8, 3)}, head="lm",
        mask=_frame_mask(8, 3), config_name="BarkSemanticConfig"),
    # the decoder LM over one codebook (its test builds it from the decoder config)
    "musicgen": partial(
        _case, "musicgen", "MusicgenForCausalLM", {"num_codebooks": 1, "vocab_size": 99},
        {"input_ids": _IDS}, {"attention_mask": _frame_mask(8, 3)}, head="lm",
        mask=_frame_mask(8, 3), config_name="MusicgenDecoderConfig"),
    "musicgen_melody": partial(
        _case, "musicgen_melody", "MusicgenMelodyForCausalLM",
        {"num_codebooks": 1, "vocab_size": 99}, {"input_ids": _IDS},
        {"attention_mask": _frame_mask(8, 3)}, head="lm", mask=_frame_mask(8, 3),
        config_name="MusicgenMelodyDecoderConfig"),
    # text encoder + decoder over 3 delayed codebook channels
    "dia": partial(
        _case, "dia", "DiaForConditionalGeneration",
        {"delay_pattern": [0, 1, 2],
         "decoder_config": {"cross_hidden_size": 32, "num_channels": 3}},
        {"input_ids": _IDS},
        {"attention_mask": _frame_mask(8, 3),
         "decoder_input_ids": torch.randint(5, 40, (2, 4, 3),
                                            generator=torch.Generator().manual_seed(10))},
        head="seq2seq", mask=_frame_mask(8, 3),
        # its logits are (batch · 3 channels, steps, vocab): each example's last step, the
        # mean over its channels
        score=lambda output: output.logits.view(-1, 3, *output.logits.shape[1:])[:, :, -1]
        .mean(1)),
    # the backbone LM over text ids; its codec is a tiny Mimi
    "csm": partial(
        _case, "csm", "CsmForConditionalGeneration",
        {"num_codebooks": 4, "text_vocab_size": 99, "codec_config": _MIMI,
         "depth_decoder_config": {"num_codebooks": 4, "backbone_hidden_size": 32,
                                  "max_position_embeddings": 5}},
        {"input_ids": _IDS}, {"attention_mask": _frame_mask(8, 3)}, head="lm",
        mask=_frame_mask(8, 3)),
    # Mimi's and Pocket-TTS's codecs: a tiny Mimi-shaped codec on 256 samples or 8 latent frames
    "mimi_decoder": partial(_case, "mimi_decoder", "MimiDecoderModel", _MIMI,
                            {"latents": _randn(2, 32, 8)}),
    "pocket_tts_audio_tokenizer": partial(
        _case, "pocket_tts_audio_tokenizer", "PocketTTSAudioTokenizerModel", _MIMI,
        {"input_values": _randn(2, 1, 256)}),
    "pocket_tts_audio_tokenizer_decoder": partial(
        _case, "pocket_tts_audio_tokenizer_decoder", "PocketTTSAudioTokenizerDecoderModel", _MIMI,
        {"latents": _randn(2, 32, 8)}),
    # waveforms long enough for their strided convolutions
    "pe_audio_encoder": partial(_case, "pe_audio_encoder", "PeAudioEncoder", {},
                                {"input_values": _randn(2, 1, 4800)}),
    "vibevoice_acoustic_tokenizer_encoder": partial(
        _case, "vibevoice_acoustic_tokenizer_encoder", "VibeVoiceAcousticTokenizerEncoderModel",
        {}, {"hidden_states": _randn(2, 1, 3200)}),
    # one frame of 1920 samples per example (the feature extractor pads to a multiple of it)
    "muse_spark_audio": partial(_case, "muse_spark_audio", "MuseSparkAudioModel", {},
                                {"input_values": _randn(2, 1920)}),
    # no projections around the quantizer: its codebooks are as wide as the hidden size
    "wavtokenizer": partial(_case, "wavtokenizer", "WavTokenizerModel", {"codebook_dim": 32},
                            {"input_values": _randn(2, 1, 3200)}),
    "vibevoice_acoustic_tokenizer": partial(
        _case, "vibevoice_acoustic_tokenizer", "VibeVoiceAcousticTokenizerModel", {},
        {"input_values": _randn(2, 1, 3200)}),
    "vibevoice_acoustic_tokenizer_decoder": partial(
        _case, "vibevoice_acoustic_tokenizer_decoder", "VibeVoiceAcousticTokenizerDecoderModel",
        {}, {"hidden_states": _randn(2, 32, 4)}),
    # audio-text contrastive: text ids (example 1 padded) beside a waveform
    "pe_audio": partial(
        _case, "pe_audio", "PeAudioModel", {},
        {"input_ids": _IDS, "input_values": _randn(2, 1, 4800)},
        {"attention_mask": _frame_mask(8, 3)}, mask=_frame_mask(8, 3)),
    # CLAP: HTS-AT (Swin windows of 4 over a 64×16 spectrogram image) beside a RoBERTa text tower
    "clap": partial(
        _case, "clap", "ClapModel",
        {"audio_config": {"spec_size": 64, "num_mel_bins": 16, "patch_size": 2,
                          "patch_stride": [2, 2], "window_size": 4, "depths": [1, 1],
                          "num_attention_heads": [2, 2], "hidden_size": 32,
                          "patch_embeds_hidden_size": 16, "projection_dim": 32,
                          "enable_fusion": False},
         "text_config": {"projection_dim": 32}, "projection_dim": 32},
        {"input_ids": _IDS, "input_features": _randn(2, 1, 64, 16)},
        {"attention_mask": _frame_mask(8, 3)}, mask=_frame_mask(8, 3)),
    # codebooks as wide as the hidden size, 3200 samples
    "encodec": partial(_case, "encodec", "EncodecModel", {"codebook_dim": 32},
                       {"input_values": _randn(2, 1, 3200)}),
    # the speech LM: 20 feature rows become 20 audio-token embeddings between 2 + 2 text ids
    "fun_asr_nano": partial(
        _case, "fun_asr_nano", "FunAsrNanoForConditionalGeneration",
        {"adaptor_config": {"intermediate_size": 8}, "audio_token_id": 98,
         "audio_config": {"num_mel_bins": 8, "fsmn_kernel_size": 3, "hidden_dropout": 0.0,
                          "attention_dropout": 0.0}},
        {"input_features": _randn(2, 20, 56)},
        {"input_features_mask": _frame_mask(20, 0),
         "input_ids": torch.tensor([[5, 6] + [98] * 20 + [7, 8]] * 2)}, head="lm"),
}
SKIP: dict[str, str] = {
    "higgs_audio_v2_tokenizer": "needs torchaudio, which is not installed here",
}
