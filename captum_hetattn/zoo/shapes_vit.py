r"""``shapes_vit``: a tiny ViT that names the shape of the one red object in a picture.

Task. A ``48 × 48`` picture on a black background holds 3–5 shapes (circle / square / triangle),
one per cell of a ``3 × 3`` grid of ``16 × 16`` cells, each jittered inside its cell. Exactly one
shape is red; the others are green, blue or yellow and have random shapes, so the answer can only
be read off the red one. Label = the red object's shape (0 circle, 1 square, 2 triangle).

Evidence. The image stream is ``[CLS]`` + a row-major ``6 × 6`` grid of ``8 × 8`` patches; the
evidence marks every patch that holds at least one pixel of the red object (``[CLS]`` False).
Each cell's centre is a patch corner, so an object covers the 4 patches around it (3 for about
8% of the triangles); chance for a pointing game is about 4 / 36.

Model. ``transformers.ViTForImageClassification``: patch 8, hidden 64, 4 layers, 4 heads, no
dropout; pixels scaled to ``[-1, 1]`` (background ``-1``). ``remove`` paints removed patches with
the background value, i.e. makes them look like empty canvas; ``[CLS]`` is never removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor
from transformers import ViTConfig, ViTForImageClassification

from captum_hetattn.graph.presets import preset
from captum_hetattn.mapping import PatchGrid
from captum_hetattn.zoo import (
    Batch,
    Example,
    ZooModel,
    fit,
    load_weights,
    single_thread,
)

NAME = "shapes_vit"
IMAGE_SIZE = 48
PATCH = 8
GRID = IMAGE_SIZE // PATCH  # patches per side
CELL = 16  # objects sit one per cell of a 3 × 3 grid
CELLS = IMAGE_SIZE // CELL
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (230, 210, 40),
}
DISTRACTOR_COLOURS: tuple[str, ...] = ("green", "blue", "yellow")
MAX_OBJECTS = 5
BACKGROUND_VALUE = -1.0  # black canvas after scaling to [-1, 1]

# training recipe (fixed: `train(seed)` is deterministic given the seed)
STEPS = 450
BATCH_SIZE = 96
LEARNING_RATE = 2e-3
WARMUP = 100
CLIP = 1.0  # gradient-norm clipping: keeps early ViT training from collapsing


def config() -> ViTConfig:
    """The model's configuration (3 classes, 37 tokens: ``[CLS]`` + 36 patches)."""
    return ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(SHAPES),
        id2label=dict(enumerate(SHAPES)),
        label2id={s: i for i, s in enumerate(SHAPES)},
    )


# ------------------------------------------------------------------ the synthetic task
def _shape_masks(shape: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray) -> np.ndarray:
    r"""``(n, H, W)`` masks of one object per image (``shape``, centre, radius: ``(n,)``)."""
    coords = np.arange(IMAGE_SIZE) + 0.5
    dy = coords[None, :, None] - cy[:, None, None]
    dx = coords[None, None, :] - cx[:, None, None]
    rad = r[:, None, None]
    circle = dx**2 + dy**2 <= rad**2
    half = 0.85 * rad  # a square of about the circle's area
    square = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # apex up, base of width 2r at the bottom
    triangle = (dy >= -rad) & (dy <= rad) & (np.abs(dx) <= (dy + rad) / 2)
    kind = shape[:, None, None]
    return np.where(kind == 0, circle, np.where(kind == 1, square, triangle))


def render(
    rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    r"""Draw ``n`` pictures.

    Returns:
        images ``(n, H, W, 3)`` uint8, labels ``(n,)`` (shape of the red object), the red
        object's pixel mask ``(n, H, W)`` bool, and one description line per picture.
    """
    count = rng.integers(3, MAX_OBJECTS + 1, size=n)
    cells = np.argsort(rng.random((n, CELLS * CELLS)), axis=1)[:, :MAX_OBJECTS]
    shapes = rng.integers(0, len(SHAPES), size=(n, MAX_OBJECTS))
    colours = rng.integers(0, len(DISTRACTOR_COLOURS), size=(n, MAX_OBJECTS))
    radius = rng.uniform(4.0, 6.0, size=(n, MAX_OBJECTS))
    jitter = rng.uniform(-2.0, 2.0, size=(n, MAX_OBJECTS, 2))
    shade = rng.integers(-15, 16, size=(n, MAX_OBJECTS, 3))  # small colour jitter
    images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    red_mask = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    palette = np.array([COLOURS[c] for c in DISTRACTOR_COLOURS], dtype=np.int16)
    for slot in range(MAX_OBJECTS):
        present = slot < count
        cy = (cells[:, slot] // CELLS) * CELL + CELL / 2 + jitter[:, slot, 0]
        cx = (cells[:, slot] % CELLS) * CELL + CELL / 2 + jitter[:, slot, 1]
        mask = _shape_masks(shapes[:, slot], cy, cx, radius[:, slot]) & present[:, None, None]
        # slot 0 is the red object; its cell is random, so its place tells nothing
        colour = np.array(COLOURS["red"]) if slot == 0 else palette[colours[:, slot]]
        colour = np.broadcast_to(colour, (n, 3)) + shade[:, slot]
        images = np.where(mask[..., None], colour[:, None, None, :], images)
        if slot == 0:
            red_mask = mask
    descriptions = []
    for i in range(n):
        others = ", ".join(
            f"{DISTRACTOR_COLOURS[colours[i, s]]} {SHAPES[shapes[i, s]]}"
            for s in range(1, count[i])
        )
        descriptions.append(
            f"shape of the red object? → {SHAPES[shapes[i, 0]]} (others: {others})"
        )
    return images.clip(0, 255).astype(np.uint8), shapes[:, 0].copy(), red_mask, descriptions


def to_pixels(images: np.ndarray) -> Tensor:
    """uint8 ``(n, H, W, 3)`` → ``pixel_values`` ``(n, 3, H, W)`` in ``[-1, 1]``."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def patch_evidence(mask: np.ndarray) -> Tensor:
    r"""``(n, 1 + GRID²)`` booleans: ``[CLS]`` False, then the patches the mask touches."""
    n = mask.shape[0]
    patches = mask.reshape(n, GRID, PATCH, GRID, PATCH).any(axis=(2, 4)).reshape(n, -1)
    return torch.from_numpy(np.concatenate([np.zeros((n, 1), dtype=bool), patches], axis=1))


def _token_names() -> list[str]:
    return ["[CLS]"] + [f"patch r{r}c{c}" for r in range(GRID) for c in range(GRID)]


# ------------------------------------------------------------------ the zoo model
class ShapesViT(ZooModel):
    r"""The trained ViT and its task (see the module docstring)."""

    name = NAME
    removable_streams = ("image",)
    protected_tokens = {"image": (0,)}

    def __init__(self, model: ViTForImageClassification) -> None:
        self.model = model
        self.graph = preset("vit")
        self.input_mappings = (PatchGrid("image", prefix_tokens=1),)

    def forward_func(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, H, W)`` pixels → ``(B, 3)`` logits."""
        return self.model(pixel_values=pixel_values).logits

    def make_examples(self, n: int, seed: int) -> list[Example]:
        images, labels, red_mask, descriptions = render(np.random.default_rng(seed), n)
        pixels = to_pixels(images)
        evidence = patch_evidence(red_mask)
        tokens = _token_names()
        return [
            Example(
                inputs=pixels[i : i + 1],
                additional_forward_args=None,
                label=int(labels[i]),
                evidence={"image": evidence[i]},
                image=images[i],
                tokens={"image": tokens},
                description=descriptions[i],
            )
            for i in range(n)
        ]

    def remove(self, batch: Batch, stream: str, keep: Tensor) -> Batch:
        r"""Paint the patches where ``keep`` is False with the background (``[CLS]`` is kept).

        Args:
            keep: ``(B, 1 + 36)`` booleans over the image stream's tokens.
        """
        if stream != "image":
            return super().remove(batch, stream, keep)
        pixels = batch.inputs
        assert isinstance(pixels, Tensor)
        if keep.shape != (pixels.shape[0], 1 + GRID * GRID):
            raise ValueError(
                f"{NAME}: keep must be (batch, {1 + GRID * GRID}) over the image tokens, "
                f"got {tuple(keep.shape)}"
            )
        grid = keep[:, 1:].reshape(-1, 1, GRID, GRID).to(pixels.device)
        keep_pixels = grid.repeat_interleave(PATCH, dim=2).repeat_interleave(PATCH, dim=3)
        masked = torch.where(keep_pixels, pixels, torch.full_like(pixels, BACKGROUND_VALUE))
        return replace(batch, inputs=masked)


def build(trained: bool = True) -> ShapesViT:
    r"""The zoo model: shipped weights if ``trained``, else a random initialisation."""
    model = ViTForImageClassification(config())
    if trained:
        load_weights(model, NAME)
    return ShapesViT(model.eval())


def train(seed: int = 0, log: Callable[[str], None] = print) -> ShapesViT:
    r"""Train from scratch on freshly drawn pictures (CPU, one thread, about 2 minutes).

    The data stream is seeded with ``(seed, 1)`` and the progress check with ``(seed, 2)``, so
    training never sees the held-out seed ``12345`` of :meth:`ZooModel.accuracy`.
    """
    with single_thread():
        return _fit(seed, log)


def _fit(seed: int, log: Callable[[str], None]) -> ShapesViT:
    torch.manual_seed(seed)
    model = ViTForImageClassification(config())
    rng = np.random.default_rng([seed, 1])
    check_images, check_labels, _, _ = render(np.random.default_rng([seed, 2]), 500)
    check_pixels, check_labels_t = to_pixels(check_images), torch.from_numpy(check_labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.05)

    def batch_loss() -> Tensor:
        images, labels, _, _ = render(rng, BATCH_SIZE)
        logits = model(pixel_values=to_pixels(images)).logits
        return torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))

    def check_accuracy() -> float:
        predicted = model(pixel_values=check_pixels).logits.argmax(-1)
        return float((predicted == check_labels_t).float().mean())

    fit(model, optimizer, batch_loss, check_accuracy,
        steps=STEPS, warmup=WARMUP, check_every=250, clip=CLIP, log=log)
    return ShapesViT(model.eval())
