r"""Sound: clips through a feature extractor, and relevance back over each clip's own time.

A feature extractor turns a clip into a waveform ``input_values`` ``(B, samples)`` (wav2vec 2.0,
HuBERT) or a spectrogram ``input_features`` ``(B, mel, frames)`` (Whisper, padded to its 30 s
window), padding a batch to one length. :func:`encode_audio` runs it and keeps each clip's real
length in the input's own units; :func:`audio_relevance` reads one example's attribution of that
input back as relevance per sample or per frame of the real clip, with the time in seconds at
which each starts.

Examples::

    >>> produced, timing = encode_audio(feature_extractor, [clip])
    >>> values, times = audio_relevance(attribution[0], timing, 0)   # (n,), (n,) seconds
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class AudioTiming:
    r"""Where the clips lie in the extractor's output.

    Attributes:
        lengths: per clip, its real samples (waveform) or frames (spectrogram).
        rate: samples or frames per second.
    """

    lengths: tuple[int, ...]
    rate: float


def clip_length(clip: Any) -> int:
    r"""Samples of one mono clip (a 1-D array, list or tensor).

    Raises:
        ValueError: a clip that is not 1-D.
    """
    array = clip.detach().cpu().numpy() if isinstance(clip, Tensor) else np.asarray(clip)
    if array.ndim != 1:
        raise ValueError(f"audio: each clip must be a 1-D mono waveform, got shape "
                         f"{tuple(array.shape)}")
    return int(array.shape[0])


def _padding(feature_extractor: Any) -> dict[str, Any]:
    """Pad a batch to its longest clip, unless the extractor pads its own way (Whisper: to its
    window, which the model requires)."""
    try:
        default = inspect.signature(feature_extractor.__call__).parameters["padding"].default
    except (KeyError, TypeError, ValueError):
        return {"padding": True}
    return {} if default not in (False, None, inspect.Parameter.empty) else {"padding": True}


def encode_audio(feature_extractor: Any, clips: Sequence[Any]
                 ) -> tuple[dict[str, Tensor], AudioTiming]:
    r"""Run ``feature_extractor`` on the clips (at its own sampling rate, padded to one length).

    Args:
        feature_extractor: a transformers feature extractor (``sampling_rate``; Whisper's also
            ``hop_length``); a batch is padded to its longest clip, or as the extractor pads
            by default (Whisper: its 30 s window).
        clips: mono waveforms sampled at the extractor's rate.

    Returns:
        ``(outputs, timing)``: the extractor's tensors and :class:`AudioTiming` of the input
        that is explained.

    Raises:
        NotImplementedError: a spectrogram given as ``input_values`` (AST).
    """
    rate = float(feature_extractor.sampling_rate)
    lengths = [clip_length(clip) for clip in clips]
    arrays = [c.detach().cpu().numpy() if isinstance(c, Tensor) else np.asarray(c, np.float32)
              for c in clips]
    produced = dict(feature_extractor(arrays, sampling_rate=int(rate), return_tensors="pt",
                                      **_padding(feature_extractor)))
    values = produced.get("input_values")
    if values is not None and values.dim() != 2:  # AST: (B, frames, mel) in 2-D patches
        raise NotImplementedError(
            f"{type(feature_extractor).__name__} gives a spectrogram as input_values "
            f"{tuple(values.shape)}: models that read it in overlapping 2-D patches (AST) are "
            "not covered by hf.explain; waveforms (wav2vec 2.0, HuBERT) and Whisper's "
            "input_features are")
    if "input_features" in produced:  # frames of ``hop_length`` samples
        hop = int(getattr(feature_extractor, "hop_length", 1) or 1)
        frames = produced["input_features"].shape[-1]
        return produced, AudioTiming(tuple(min(math.ceil(n / hop), frames) for n in lengths),
                                     rate / hop)
    return produced, AudioTiming(tuple(lengths), rate)


def audio_relevance(attribution: Tensor, timing: AudioTiming, example: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    r"""One example's attribution of the audio input → relevance over its real clip.

    Args:
        attribution: the example's input-shaped attribution: ``(samples,)`` of a waveform or
            ``(mel, frames)`` of a spectrogram (mel bins averaged).
        timing: from :func:`encode_audio`.
        example: the example's index (its real length).

    Returns:
        ``(values, times)``: ``float32`` relevance per sample or frame of the real clip, and
        the second at which each starts.
    """
    values = attribution.detach().float().cpu()
    if values.dim() == 2:
        values = values.mean(dim=0)
    length = timing.lengths[example]
    kept = values.reshape(-1)[:length].numpy().astype(np.float32)
    return kept, (np.arange(length, dtype=np.float64) / timing.rate)


__all__ = ["AudioTiming", "audio_relevance", "clip_length", "encode_audio"]
