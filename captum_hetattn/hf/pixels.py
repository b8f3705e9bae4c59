r"""Relevance over the processed picture → relevance over **the picture as the user gave it**.

An image processor resizes a picture, may centre-crop it (CLIP) and pads a batch to one size
(DETR, ViLT: the ``pixel_mask`` says which pixels are real). The engine's relevance lies over the
processed ``pixel_values`` (``h × w``); a user wants it over their picture (``H × W``).
:class:`Geometry` records what the processor did, as far as it is known, and
:func:`to_picture` undoes it:

1. keep the real (unpadded) part of the processed picture;
2. put it back where the centre crop took it from, in the resized picture (what the crop cut
   off gets 0: the model never saw it);
3. resize that to ``H × W``.

:func:`geometry_for` reads the processor's ``size`` / ``crop_size`` / ``do_center_crop``;
a processor that works another way (tiling, padding to a square) can be described by
constructing :class:`Geometry` by hand. :func:`tokens_to_pixels` lays a patch grid's token
relevance over the processed picture first (:class:`~captum_hetattn.mapping.PatchGrid`),
:func:`attribution_to_pixels` takes the engine's input-shaped attribution of ``pixel_values``.

Examples::

    >>> geometry = geometry_for(image_processor, image_size(picture), pixel_values.shape[-2:])
    >>> heat = tokens_to_pixels(explanation.relevance["image"][0], geometry)   # (H, W)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from captum_hetattn.mapping import PatchGrid

Size = tuple[int, int]


@dataclass(frozen=True)
class Geometry:
    r"""How one picture became its processed ``pixel_values``.

    Attributes:
        original: ``(H, W)`` of the picture as given.
        resized: ``(h, w)`` after the processor's resize, before any crop.
        crop: ``(top, left)`` of the processed picture inside the resized one (centre crop),
            ``(0, 0)`` without a crop.
        valid: ``(rows, cols)`` of the processed picture that are real pixels (the rest is
            padding added for the batch).
    """

    original: Size
    resized: Size
    crop: Size
    valid: Size


def _is_pil(image: Any) -> bool:
    """A PIL image (checked by duck type: PIL need not be imported)."""
    return not isinstance(image, (Tensor, np.ndarray)) and hasattr(image, "mode") and hasattr(
        image, "convert")


def image_size(image: Any) -> Size:
    r"""``(H, W)`` of a PIL image, an ``H × W (× C)`` array or a ``(C, H, W)`` tensor.

    Raises:
        TypeError: something that is not a picture.
    """
    if _is_pil(image):  # PIL: size is (W, H)
        width, height = image.size
        return int(height), int(width)
    if isinstance(image, Tensor):
        shape = tuple(image.shape)
        if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
            return int(shape[1]), int(shape[2])
        if len(shape) in (2, 3):
            return int(shape[0]), int(shape[1])
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            return int(image.shape[1]), int(image.shape[2])
        return int(image.shape[0]), int(image.shape[1])
    raise TypeError(f"not a picture: {type(image).__name__} (give a PIL image, an H×W×C array "
                    "or a (C, H, W) tensor)")


def as_rgb(image: Any) -> np.ndarray:
    """The picture as an ``H × W × 3`` uint8 array (for overlays)."""
    if _is_pil(image):
        return np.asarray(image.convert("RGB"))
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    array = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]
    if array.dtype != np.uint8:
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        array = np.clip(array.astype(np.float64) * scale, 0, 255).astype(np.uint8)
    return array


def _resized(size: Mapping[str, int] | int | None, original: Size) -> Size | None:
    """The processor's resized size for ``original``, where ``size`` says it."""
    height, width = original
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if not size:
        return None
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        scale = size["shortest_edge"] / min(height, width)
        if size.get("longest_edge"):
            scale = min(scale, size["longest_edge"] / max(height, width))
        return int(round(height * scale)), int(round(width * scale))
    return None


def valid_size(processed: Size, pixel_mask: Tensor | None = None) -> Size:
    """``(rows, cols)`` of real pixels: the ``pixel_mask``'s extent (top-left), else all."""
    if pixel_mask is None:
        return int(processed[0]), int(processed[1])
    mask = pixel_mask.reshape(pixel_mask.shape[-2:]).bool()
    rows = int(mask.any(dim=1).sum())
    cols = int(mask.any(dim=0).sum())
    return (rows or int(processed[0])), (cols or int(processed[1]))


def geometry_for(image_processor: Any, original: Size, processed: Sequence[int],
                 pixel_mask: Tensor | None = None) -> Geometry:
    r"""What ``image_processor`` did to one picture, from its settings and the result's size.

    Without a centre crop the real part of the processed picture is the whole resized picture;
    with one (``do_center_crop``), the resized size is computed from ``size`` and the crop is
    centred, as the transformers processors do.

    Args:
        image_processor: a transformers image processor (or None: only resized).
        original: ``(H, W)`` of the picture as given.
        processed: ``(h, w)`` of its ``pixel_values``.
        pixel_mask: its ``(h, w)`` pixel mask (padding), if the processor returned one.

    Returns:
        A :class:`Geometry`.
    """
    valid = valid_size((int(processed[0]), int(processed[1])), pixel_mask)
    resized = valid
    crop = (0, 0)
    if getattr(image_processor, "do_center_crop", False):
        guess = _resized(getattr(image_processor, "size", None), original)
        if guess is not None and guess[0] >= valid[0] and guess[1] >= valid[1]:
            resized = guess
            crop = ((guess[0] - valid[0]) // 2, (guess[1] - valid[1]) // 2)
    return Geometry(original=(int(original[0]), int(original[1])), resized=resized, crop=crop,
                    valid=valid)


def to_picture(heat: Tensor | np.ndarray, geometry: Geometry) -> np.ndarray:
    r"""A map over the processed picture ``(h, w)`` → the same map over the original ``(H, W)``.

    Args:
        heat: ``(h, w)`` relevance over ``pixel_values`` (one value per pixel).
        geometry: from :func:`geometry_for`.

    Returns:
        ``float32`` array ``(H, W)``.
    """
    heat = torch.as_tensor(np.asarray(heat, dtype=np.float32) if not isinstance(heat, Tensor)
                           else heat.detach().float().cpu())
    if heat.dim() != 2:
        raise ValueError(f"to_picture needs an (h, w) map, got shape {tuple(heat.shape)}")
    rows, cols = geometry.valid
    real = heat[:rows, :cols]
    canvas = real.new_zeros(geometry.resized)
    top, left = geometry.crop
    canvas[top:top + rows, left:left + cols] = real[: canvas.shape[0] - top,
                                                    : canvas.shape[1] - left]
    picture = F.interpolate(canvas[None, None], size=geometry.original, mode="bilinear",
                            align_corners=False, antialias=True)
    return picture[0, 0].numpy().astype(np.float32)


def attribution_to_pixels(attribution: Tensor, geometry: Geometry) -> np.ndarray:
    r"""One example's input-shaped attribution of ``pixel_values`` (``(C, h, w)``; each pixel
    holds its token's relevance) → ``(H, W)`` over the original picture (channels averaged)."""
    if attribution.dim() == 3:
        attribution = attribution.float().mean(dim=0)
    return to_picture(attribution, geometry)


def tokens_to_pixels(relevance: Tensor, geometry: Geometry, grid: PatchGrid | None = None,
                     processed: Size | None = None) -> np.ndarray:
    r"""One example's image-token relevance ``(n,)`` → ``(H, W)`` over the original picture.

    Args:
        relevance: the image source's token relevance (prefix tokens such as ``[CLS]`` first).
        geometry: from :func:`geometry_for`.
        grid: how the tokens lie over the processed picture (``None``: a
            :class:`~captum_hetattn.mapping.PatchGrid` guessed from the token count).
        processed: ``(h, w)`` of ``pixel_values``; ``None``: the real part of it.
    """
    grid = grid or PatchGrid("image")
    height, width = processed or geometry.valid
    placeholder = torch.zeros(1, 1, height, width)
    laid = grid.to_input(relevance.detach().float().cpu()[None], placeholder, 0)
    return to_picture(laid[0, 0], geometry)


__all__ = [
    "Geometry",
    "as_rgb",
    "attribution_to_pixels",
    "geometry_for",
    "image_size",
    "to_picture",
    "tokens_to_pixels",
    "valid_size",
]
