r"""Token relevance → Captum-layout attributions shaped like the inputs, and back to pictures.

An :class:`InputMapping` says how one forward input relates to the tokens of one stream:

- :class:`Tokens`: token ids ``(B, T)`` or embeddings / region features ``(B, T, D)`` (relevance
  broadcast over ``D``); also DETR-free box inputs such as LXMERT's ``visual_pos``;
- :class:`PatchGrid`: images ``(B, C, H, W)`` whose tokens are a grid of patches (ViT, CLIP) or
  feature-map cells (DETR), after ``prefix_tokens`` such as ``[CLS]``, distillation or register
  tokens; upsampled to ``H × W`` (bilinear or nearest) and broadcast over channels;
- :class:`AudioFrames`: spectrogram features ``(B, mel, frames)``; each token covers
  ``frames / tokens`` consecutive frames (Whisper: 2);
- :class:`NoAttribution`: an input that gets zeros (masks, position ids).

``tokens=slice(...)`` selects the part of a stream an input covers (single-stream fusion models:
text tokens first, then image tokens). :func:`default_mappings` guesses the mapping from shapes,
:func:`to_heatmap` gives the ``H × W × 1`` numpy array ``visualize_image_attr`` expects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class InputMapping:
    """Base class: ``stream`` and the ``tokens`` of it that one input covers."""

    stream: str = ""
    tokens: slice | None = None

    def select(self, relevance: Tensor) -> Tensor:
        return relevance if self.tokens is None else relevance[:, self.tokens]

    def describe(self) -> str:
        part = "" if self.tokens is None else f" tokens {self.tokens.start}:{self.tokens.stop}"
        return f"{type(self).__name__}(stream '{self.stream}'{part})"

    def to_input(self, relevance: Tensor, inputs: Tensor, position: int) -> Tensor:
        """Lay ``(B, n_stream)`` token relevance out like ``inputs``."""
        raise NotImplementedError

    def to_tokens(self, attribution: Tensor, n_tokens: int) -> Tensor:
        """The way back: an input-shaped attribution summed per token, ``(B, n_stream)``
        (zeros on the stream's tokens this input does not cover)."""
        raise NotImplementedError

    def _place(self, per_token: Tensor, n_tokens: int) -> Tensor:
        out = per_token.new_zeros(per_token.shape[0], n_tokens)
        out[:, self.tokens if self.tokens is not None else slice(None)] = per_token
        return out


def _mismatch(mapping: InputMapping, position: int, inputs: Tensor, why: str) -> ValueError:
    return ValueError(
        f"input {position} of shape {tuple(inputs.shape)} does not match "
        f"{mapping.describe()}: {why}"
    )


@dataclass(frozen=True)
class Tokens(InputMapping):
    r"""One input row per token: ids ``(B, T)`` or features ``(B, T, ...)``."""

    def to_input(self, relevance: Tensor, inputs: Tensor, position: int) -> Tensor:
        relevance = self.select(relevance)
        if inputs.dim() < 2 or inputs.shape[1] != relevance.shape[1]:
            raise _mismatch(self, position, inputs, f"{relevance.shape[1]} tokens expected")
        shape = relevance.shape + (1,) * (inputs.dim() - 2)
        return relevance.reshape(shape).expand(inputs.shape)

    def to_tokens(self, attribution: Tensor, n_tokens: int) -> Tensor:
        per_token = attribution.float().reshape(attribution.shape[0], attribution.shape[1], -1)
        return self._place(per_token.sum(dim=-1), n_tokens)


@dataclass(frozen=True)
class PatchGrid(InputMapping):
    r"""Images ``(B, C, H, W)`` whose tokens are ``prefix_tokens`` then a row-major grid.

    Args:
        stream: the image stream.
        prefix_tokens: tokens before the grid (ViT: 1, DeiT: 2, DETR: 0); ``None`` picks the
            smallest count (0–8) that leaves a grid of the image's aspect ratio.
        grid: ``(rows, cols)``; ``None`` infers it from the token count and the aspect ratio.
        interpolation: ``"bilinear"`` or ``"nearest"`` upsampling to ``H × W``.
        tokens: the part of the stream this image covers.
    """

    prefix_tokens: int | None = None
    grid: tuple[int, int] | None = None
    interpolation: Literal["bilinear", "nearest"] = "bilinear"

    def layout(self, n_tokens: int, height: int, width: int) -> tuple[int, int, int]:
        """``(prefix, rows, cols)`` for ``n_tokens`` tokens over an ``height × width`` image."""
        prefixes = range(9) if self.prefix_tokens is None else (self.prefix_tokens,)
        for prefix in prefixes:
            cells = n_tokens - prefix
            if cells <= 0:
                break
            if self.grid is not None:
                if self.grid[0] * self.grid[1] == cells:
                    return prefix, self.grid[0], self.grid[1]
                continue
            rows = _grid_rows(cells, height / width)
            if rows is not None:
                return prefix, rows, cells // rows
        raise ValueError(
            f"{self.describe()}: cannot lay {n_tokens} tokens out as "
            f"{'a ' + str(self.grid) if self.grid else 'a'} grid over a {height}×{width} image "
            f"(prefix_tokens={self.prefix_tokens}); give prefix_tokens= and grid="
        )

    def to_input(self, relevance: Tensor, inputs: Tensor, position: int) -> Tensor:
        relevance = self.select(relevance)
        if inputs.dim() != 4:
            raise _mismatch(self, position, inputs, "an image batch (B, C, H, W) expected")
        batch, channels, height, width = inputs.shape
        prefix, rows, cols = self.layout(relevance.shape[1], height, width)
        cells = relevance[:, prefix:].reshape(batch, 1, rows, cols)
        options = {"align_corners": False} if self.interpolation == "bilinear" else {}
        image = F.interpolate(cells, size=(height, width), mode=self.interpolation, **options)
        return image.expand(batch, channels, height, width)

    def to_tokens(self, attribution: Tensor, n_tokens: int) -> Tensor:
        batch, _, height, width = attribution.shape
        covered = len(range(n_tokens)[self.tokens]) if self.tokens is not None else n_tokens
        prefix, rows, cols = self.layout(covered, height, width)
        summed = attribution.float().sum(dim=1, keepdim=True)
        # total attribution per cell (mean × area), so sums over the image are preserved
        cells = F.adaptive_avg_pool2d(summed, (rows, cols)) * (height * width / (rows * cols))
        per_token = torch.cat([cells.new_zeros(batch, prefix), cells.reshape(batch, -1)], dim=1)
        return self._place(per_token, n_tokens)


def _grid_rows(cells: int, aspect: float) -> int | None:
    """Rows of a ``rows × cols == cells`` grid whose aspect ratio is closest to ``aspect``."""
    best: tuple[float, int] | None = None
    for rows in range(1, cells + 1):
        if cells % rows:
            continue
        error = abs(math.log((rows / (cells // rows)) / aspect))
        if best is None or error < best[0]:
            best = (error, rows)
    if best is None or best[0] > math.log(1.5):
        return None
    return best[1]


@dataclass(frozen=True)
class AudioFrames(InputMapping):
    r"""Spectrogram features ``(B, mel, frames)`` or ``(B, frames, mel)``; each token covers
    consecutive frames (the frame axis is the last one whose length is ≥ 2 tokens' worth). A raw
    waveform ``(B, samples)``: each token covers its share of the samples (nearest token)."""

    def to_input(self, relevance: Tensor, inputs: Tensor, position: int) -> Tensor:
        relevance = self.select(relevance)
        axis = _frame_axis(inputs, relevance.shape[1])
        if axis is None:
            raise _mismatch(
                self, position, inputs,
                f"(B, mel, frames) or (B, frames, mel) with frames a multiple of "
                f"{relevance.shape[1]} tokens, or a waveform (B, samples), expected",
            )
        if inputs.dim() == 2:  # a waveform: each token covers its share of the samples
            spread = F.interpolate(relevance[:, None].float(), size=inputs.shape[1],
                                   mode="nearest")
            return spread[:, 0].to(relevance.dtype)
        per_token = inputs.shape[axis] // relevance.shape[1]
        frames = relevance.repeat_interleave(per_token, dim=1)
        frames = frames[:, None, :] if axis == 2 else frames[:, :, None]
        return frames.expand(inputs.shape)

    def to_tokens(self, attribution: Tensor, n_tokens: int) -> Tensor:
        covered = len(range(n_tokens)[self.tokens]) if self.tokens is not None else n_tokens
        if attribution.dim() == 2:  # a waveform: the samples each token covers, summed
            samples = attribution.float()[:, None]
            per_token = F.adaptive_avg_pool1d(samples, covered)[:, 0]
            return self._place(per_token * (attribution.shape[1] / covered), n_tokens)
        axis = _frame_axis(attribution, covered)
        frames = attribution.float().sum(dim=1 if axis == 2 else 2)
        per_token = frames.reshape(frames.shape[0], covered, -1).sum(dim=-1)
        return self._place(per_token, n_tokens)


def _frame_axis(inputs: Tensor, n_tokens: int) -> int | None:
    """The frame axis of a 3-D spectrogram (the last axis holding ≥ 2 frames per token), or of
    a waveform ``(B, samples)`` (≥ 2 samples per token)."""
    if not n_tokens:
        return None
    if inputs.dim() == 2:
        return 1 if inputs.shape[1] >= 2 * n_tokens else None
    if inputs.dim() != 3:
        return None
    for axis in (2, 1):
        if inputs.shape[axis] % n_tokens == 0 and inputs.shape[axis] > n_tokens:
            return axis
    return None


@dataclass(frozen=True, eq=False)
class Gathered(InputMapping):
    r"""Each input element takes the relevance of the stream row it feeds.

    ``rows`` ``(B, elements per example)`` holds that row (``-1``: the element feeds no row,
    e.g. an image placeholder id whose embedding the model overwrote). Traced per call by
    :mod:`~captum_hetattn.binding.dataflow` — exact for ids, region features, boxes, token type ids
    and non-overlapping patches of any layout (tiles, 5-D/6-D pixel values).
    """

    rows: Tensor | None = None

    def to_input(self, relevance: Tensor, inputs: Tensor, position: int) -> Tensor:
        assert self.rows is not None
        # packed inputs (a vision tower's patches of all images, no batch dimension) hold each
        # example's elements as one block, in example order
        packed = self.rows.shape[0] * self.rows.shape[1] == inputs.numel()
        if self.rows.shape != (inputs.shape[0], inputs[0].numel()) and not packed:
            raise _mismatch(self, position, inputs, f"rows of shape {tuple(self.rows.shape)}")
        picked = relevance.gather(1, self.rows.clamp(min=0).to(relevance.device))
        picked = torch.where(self.rows.to(relevance.device) >= 0, picked,
                             torch.zeros_like(picked))
        return picked.reshape(inputs.shape)

    def to_tokens(self, attribution: Tensor, n_tokens: int) -> Tensor:
        assert self.rows is not None
        flat = attribution.float().reshape(attribution.shape[0], -1)
        out = flat.new_zeros(flat.shape[0], n_tokens + 1)
        index = torch.where(self.rows >= 0, self.rows, torch.full_like(self.rows, n_tokens))
        return out.scatter_add(1, index.to(flat.device), flat)[:, :n_tokens]


@dataclass(frozen=True)
class NoAttribution(InputMapping):
    """An input that is not explained (attention masks, position ids): zeros."""

    def to_input(self, relevance: Tensor, inputs: Tensor, position: int) -> Tensor:
        return torch.zeros(inputs.shape, dtype=relevance.dtype, device=relevance.device)

    def to_tokens(self, attribution: Tensor, n_tokens: int) -> Tensor:
        return attribution.new_zeros(attribution.shape[0], n_tokens, dtype=torch.float32)


def default_mappings(
    inputs: Sequence[Tensor], sizes: Mapping[str, int], image_stream_names: Sequence[str] = ()
) -> tuple[InputMapping, ...]:
    r"""Guess each input's mapping from its shape.

    An input ``(B, C, H, W)`` is a :class:`PatchGrid` of the image stream (or of the only stream
    with at least as many tokens as a grid needs); an input ``(B, T, ...)`` whose ``T`` equals
    the token count of exactly one stream is :class:`Tokens` of that stream; ``(B, mel, frames)``
    with ``frames`` a multiple (≥ 2) of the ``audio`` stream's tokens is :class:`AudioFrames`.

    Raises:
        ValueError: an input that fits no stream or several; pass ``input_mappings``.
    """
    mappings: list[InputMapping] = []
    for position, tensor in enumerate(inputs):
        candidates: list[InputMapping] = []
        if tensor.dim() == 4:
            images = [s for s in sizes if s in image_stream_names] or [
                s for s in sizes if s == "image"
            ]
            candidates = [PatchGrid(stream) for stream in (images or list(sizes))]
            fitting = []
            for mapping in candidates:
                try:
                    mapping.layout(sizes[mapping.stream], tensor.shape[2], tensor.shape[3])
                    fitting.append(mapping)
                except ValueError:
                    pass
            candidates = fitting
        elif tensor.dim() in (2, 3) and tensor.is_floating_point() and any(
            _spans_audio_frames(tensor, n) for n in sizes.values()
        ):
            candidates = [AudioFrames(s) for s, n in sizes.items()
                          if _spans_audio_frames(tensor, n)]
            candidates = [m for m in candidates if m.stream == "audio"] or candidates
        elif tensor.dim() >= 2:
            candidates = [Tokens(s) for s, n in sizes.items() if n == tensor.shape[1]]
        if len(candidates) != 1:
            found = [m.stream for m in candidates]
            raise ValueError(
                f"cannot tell which stream input {position} of shape {tuple(tensor.shape)} "
                f"belongs to (stream sizes {dict(sizes)}; candidates {found}); pass "
                "input_mappings=[Tokens('text'), PatchGrid('image'), NoAttribution(), ...]"
            )
        mappings.append(candidates[0])
    return tuple(mappings)


def _spans_audio_frames(tensor: Tensor, n_audio: int | None) -> bool:
    """A spectrogram whose frames are ≥ 2 per audio token (Whisper: 2)."""
    return bool(n_audio) and _frame_axis(tensor, n_audio) is not None


def to_heatmap(attribution: Tensor, example: int = 0) -> np.ndarray:
    r"""The ``H × W × 1`` numpy array ``captum.attr.visualization.visualize_image_attr`` wants.

    Args:
        attribution: an image attribution ``(B, C, H, W)``, ``(C, H, W)`` or ``(H, W)``.
        example: which example of a batch.

    Returns:
        ``float32`` array ``(H, W, 1)`` (channels averaged).

    Examples::

        >>> from captum.attr import visualization as viz
        >>> heat = to_heatmap(attributions)
        >>> viz.visualize_image_attr(heat, image_hw3, method="blended_heat_map", sign="positive")
    """
    if not isinstance(attribution, Tensor):
        raise TypeError(f"to_heatmap needs a tensor, got {type(attribution).__name__}")
    if attribution.dim() == 4:
        attribution = attribution[example]
    if attribution.dim() == 3:
        attribution = attribution.mean(dim=0)
    if attribution.dim() != 2:
        raise ValueError(f"to_heatmap needs an image attribution, got {tuple(attribution.shape)}")
    return attribution.detach().float().cpu().numpy()[..., None].copy()
