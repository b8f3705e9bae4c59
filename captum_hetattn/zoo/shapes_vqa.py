r"""``shapes_vqa``: a two-stream VQA task (LXMERT) whose evidence is known.

Scenes are 64×64 images with 2–4 coloured shapes on a 4×4 grid of 16×16 cells. The model sees
what a detector would give it, one region per cell (16 regions, empty cells included): a noisy
encoding of the cell's object (one-hot colour, one-hot shape, an "empty" flag, plus Gaussian
noise) as ``visual_feats`` and the cell's box (normalised ``x1, y1, x2, y2``) as ``visual_pos``.

Questions come from three templates, each with an unambiguous answer:

- ``is there a red circle ?`` → yes / no (half of them yes; the "no" ones are often near misses,
  a red square beside a blue circle, so that colour and shape must be bound);
- ``what color is the square ?`` → the colour (the shape occurs exactly once);
- ``what shape is the blue object ?`` → the shape (the colour occurs exactly once).

Evidence (``Example.evidence``):

- ``"image"``: the cells holding the referenced object (every red circle for a "yes"). A "no"
  has no object to point at, so its image evidence is all False; localisation metrics should
  skip examples without image evidence.
- ``"text"``: the content words of the question (the colour and / or shape words).

Each example is a :class:`SceneExample` that also carries its ``scene`` and ``question``;
:func:`named_object` and :func:`distractor_cells` read, for an ``is there a … ?`` question, the
cells of the object it names and of the objects that share exactly one of its colour and shape
(the logical inspection of the paper's §5.2 scores where the evidence for "yes" and for "no"
lies).

The model is a small ``transformers.LxmertForQuestionAnswering`` (hidden 64, 4 heads, 2 language,
1 region, 2 cross layers) trained from scratch by :func:`train`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_hetattn.graph.presets import preset
from captum_hetattn.mapping import Tokens
from captum_hetattn.zoo import (
    Batch,
    Example,
    ZooModel,
    fit,
    load_weights,
    single_thread,
)

NAME = "shapes_vqa"

GRID = 4  # cells per side
CELL = 16  # pixels per cell side
IMAGE_SIZE = GRID * CELL
N_REGIONS = GRID * GRID
MIN_OBJECTS, MAX_OBJECTS = 2, 4

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
RGB = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
}
BACKGROUND, GRID_LINE = 240, 205

ANSWERS = ("yes", "no", *COLORS, *SHAPES)
ANSWER_ID = {answer: i for i, answer in enumerate(ANSWERS)}

SPECIAL = ("[PAD]", "[CLS]", "[SEP]")
VOCAB = (*SPECIAL, "is", "there", "a", "what", "color", "shape", "the", "object", "?", *COLORS,
         *SHAPES)
WORD_ID = {word: i for i, word in enumerate(VOCAB)}
PAD, CLS, SEP = (WORD_ID[s] for s in SPECIAL)
TEXT_LENGTH = 10  # the longest question, [CLS] what shape is the blue object ? [SEP], is 9

#: region features: one-hot colour, one-hot shape, empty flag
FEATURE_DIM = len(COLORS) + len(SHAPES) + 1
FEATURE_NOISE = 0.2  # std of the Gaussian noise on every feature (a "detector" that is not exact)

QUESTION_TYPES = ("exists", "color", "shape")


@dataclass(frozen=True)
class Scene:
    """Objects per cell: ``colors[i]``/``shapes[i]`` index COLORS/SHAPES, -1 for an empty cell."""

    colors: np.ndarray  # (16,) int
    shapes: np.ndarray  # (16,) int


@dataclass(frozen=True)
class Question:
    words: tuple[str, ...]  # without [CLS]/[SEP]
    answer: str
    evidence_cells: np.ndarray  # (16,) bool
    content_words: frozenset[str]


@dataclass
class SceneExample(Example):
    r"""An :class:`~captum_hetattn.zoo.Example` that also carries the ``scene`` it shows and the
    ``question`` it asks (``None`` only when built by hand)."""

    scene: Scene | None = None
    question: Question | None = None


def named_object(question: Question) -> tuple[int, int] | None:
    r"""``(colour, shape)`` indices of the object an ``is there a <colour> <shape> ?`` question
    names; ``None`` for the other templates."""
    if question.words[:3] != ("is", "there", "a"):
        return None
    return COLORS.index(question.words[3]), SHAPES.index(question.words[4])


def distractor_cells(scene: Scene, question: Question) -> np.ndarray:
    r"""``(16,)`` bool: the cells whose object shares exactly one of the colour and the shape an
    ``is there a … ?`` question names (a red square or a blue circle for "a red circle"); all
    False for the other templates."""
    named = named_object(question)
    if named is None:
        return np.zeros(N_REGIONS, dtype=bool)
    same_colour, same_shape = scene.colors == named[0], scene.shapes == named[1]
    return (same_colour ^ same_shape) & (scene.colors >= 0)


def _sample_scene(rng: np.random.Generator) -> Scene:
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    cells = rng.choice(N_REGIONS, size=count, replace=False)
    colors = np.full(N_REGIONS, -1)
    shapes = np.full(N_REGIONS, -1)
    colors[cells] = rng.integers(0, len(COLORS), size=count)
    shapes[cells] = rng.integers(0, len(SHAPES), size=count)
    return Scene(colors, shapes)


def _ask(scene: Scene, kind: str, rng: np.random.Generator) -> Question | None:
    """A question of ``kind`` about ``scene`` with an unambiguous answer (``None``: none fits)."""
    present = scene.colors >= 0
    if kind == "exists":
        pairs = {(int(c), int(s)) for c, s in zip(scene.colors[present], scene.shapes[present],
                                                  strict=True)}
        if rng.random() < 0.5:
            color, shape = sorted(pairs)[rng.integers(len(pairs))]
            answer = "yes"
        else:
            absent = [(c, s) for c in range(len(COLORS)) for s in range(len(SHAPES))
                      if (c, s) not in pairs]
            # near misses (colour and shape both in the scene, not together) force binding
            near = [(c, s) for c, s in absent
                    if (scene.colors == c).any() and (scene.shapes == s).any()]
            pool = near if near and rng.random() < 0.5 else absent
            color, shape = pool[rng.integers(len(pool))]
            answer = "no"
        cells = (scene.colors == color) & (scene.shapes == shape)
        words = ("is", "there", "a", COLORS[color], SHAPES[shape], "?")
        return Question(words, answer, cells, frozenset({COLORS[color], SHAPES[shape]}))
    if kind == "color":
        unique = [s for s in range(len(SHAPES)) if (scene.shapes == s).sum() == 1]
        if not unique:
            return None
        shape = unique[rng.integers(len(unique))]
        cells = scene.shapes == shape
        answer = COLORS[int(scene.colors[cells][0])]
        words = ("what", "color", "is", "the", SHAPES[shape], "?")
        return Question(words, answer, cells, frozenset({SHAPES[shape]}))
    unique = [c for c in range(len(COLORS)) if (scene.colors == c).sum() == 1]
    if not unique:
        return None
    color = unique[rng.integers(len(unique))]
    cells = scene.colors == color
    answer = SHAPES[int(scene.shapes[cells][0])]
    words = ("what", "shape", "is", "the", COLORS[color], "object", "?")
    return Question(words, answer, cells, frozenset({COLORS[color]}))


def _sample(rng: np.random.Generator) -> tuple[Scene, Question]:
    while True:
        scene = _sample_scene(rng)
        question = _ask(scene, QUESTION_TYPES[rng.integers(len(QUESTION_TYPES))], rng)
        if question is not None:
            return scene, question


def _features(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    features = np.zeros((N_REGIONS, FEATURE_DIM), dtype=np.float32)
    present = scene.colors >= 0
    rows = np.flatnonzero(present)
    features[rows, scene.colors[present]] = 1.0
    features[rows, len(COLORS) + scene.shapes[present]] = 1.0
    features[~present, -1] = 1.0
    features += rng.normal(0.0, FEATURE_NOISE, size=features.shape).astype(np.float32)
    return features


def _boxes() -> np.ndarray:
    cells = np.arange(N_REGIONS)
    row, col = cells // GRID, cells % GRID
    return (np.stack([col, row, col + 1, row + 1], axis=1) / GRID).astype(np.float32)


BOXES = _boxes()


def _token_ids(words: Sequence[str]) -> np.ndarray:
    ids = np.full(TEXT_LENGTH, PAD, dtype=np.int64)
    sequence = [CLS, *(WORD_ID[w] for w in words), SEP]
    ids[: len(sequence)] = sequence
    return ids


def _encode(
    samples: Sequence[tuple[Scene, Question]], rng: np.random.Generator
) -> dict[str, Tensor]:
    """Model inputs and labels for a list of samples (features drawn with ``rng``)."""
    ids = np.stack([_token_ids(q.words) for _, q in samples])
    feats = np.stack([_features(s, rng) for s, _ in samples])
    return {
        "input_ids": torch.from_numpy(ids),
        "visual_feats": torch.from_numpy(feats),
        "visual_pos": torch.from_numpy(BOXES).expand(len(samples), -1, -1).contiguous(),
        "attention_mask": torch.from_numpy((ids != PAD).astype(np.int64)),
        "visual_attention_mask": torch.ones(len(samples), N_REGIONS),
        "labels": torch.tensor([ANSWER_ID[q.answer] for _, q in samples]),
    }


def render(scene: Scene) -> np.ndarray:
    r"""The scene as an ``(64, 64, 3)`` uint8 picture (light grid lines at the cell borders)."""
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, dtype=np.uint8)
    image[::CELL, :] = GRID_LINE
    image[:, ::CELL] = GRID_LINE
    y, x = np.mgrid[0:CELL, 0:CELL].astype(np.float32) + 0.5
    center = CELL / 2
    masks = {
        "circle": (x - center) ** 2 + (y - center) ** 2 <= 6.0**2,
        "square": (np.abs(x - center) <= 5.5) & (np.abs(y - center) <= 5.5),
        # apex at the top, base at the bottom
        "triangle": (y >= 2.0) & (y <= 14.0) & (np.abs(x - center) <= (y - 2.0) * 6.0 / 12.0),
    }
    for cell in np.flatnonzero(scene.colors >= 0):
        row, col = divmod(int(cell), GRID)
        patch = image[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
        patch[masks[SHAPES[scene.shapes[cell]]]] = RGB[COLORS[scene.colors[cell]]]
    return image


def _cell_names(scene: Scene) -> list[str]:
    names = []
    for cell in range(N_REGIONS):
        row, col = divmod(cell, GRID)
        what = ("empty" if scene.colors[cell] < 0
                else f"{COLORS[scene.colors[cell]]} {SHAPES[scene.shapes[cell]]}")
        names.append(f"cell r{row}c{col}: {what}")
    return names


def config() -> Any:
    """The small ``LxmertConfig`` of the zoo model (no dropout: the task is noise-free enough)."""
    from transformers import LxmertConfig

    return LxmertConfig(
        vocab_size=len(VOCAB), hidden_size=64, num_attention_heads=4, intermediate_size=128,
        l_layers=2, r_layers=1, x_layers=2, visual_feat_dim=FEATURE_DIM, visual_pos_dim=4,
        num_qa_labels=len(ANSWERS), max_position_embeddings=16, type_vocab_size=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


class ShapesVQA(ZooModel):
    r"""LXMERT on shapes-on-a-grid VQA.

    ``forward_func(input_ids, visual_feats, visual_pos, attention_mask, visual_attention_mask)``
    returns the answer logits ``(B, 9)`` over :data:`ANSWERS`; the first three are
    ``Example.inputs``, the masks ``additional_forward_args``.

    ``remove``: for ``"text"`` the removed words become [PAD] with attention mask 0; [CLS], [SEP]
    and padding are never removed ([SEP]'s position varies, so ``protected_tokens`` names only
    [CLS] and ``remove`` keeps the rest itself). For ``"image"`` removed regions get visual
    attention mask 0 and zero features (their boxes stay).
    """

    name = NAME
    removable_streams = ("text", "image")
    protected_tokens = {"text": (0,)}

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.graph = preset("lxmert")
        self.input_mappings = (Tokens("text"), Tokens("image"), Tokens("image"))

    def forward_func(
        self,
        input_ids: Tensor,
        visual_feats: Tensor,
        visual_pos: Tensor,
        attention_mask: Tensor | None = None,
        visual_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Answer logits ``(B, len(ANSWERS))``."""
        return self.model(
            input_ids=input_ids, visual_feats=visual_feats, visual_pos=visual_pos,
            attention_mask=attention_mask, visual_attention_mask=visual_attention_mask,
        ).question_answering_score

    def make_examples(self, n: int, seed: int) -> list[Example]:
        r"""``n`` examples drawn with ``seed`` (scenes, questions and feature noise)."""
        rng = np.random.default_rng(seed)
        examples = []
        for _ in range(n):
            scene, question = _sample(rng)
            enc = _encode([(scene, question)], rng)
            ids = enc["input_ids"][0].tolist()
            text_evidence = torch.tensor([VOCAB[i] in question.content_words for i in ids])
            examples.append(SceneExample(
                inputs=(enc["input_ids"], enc["visual_feats"], enc["visual_pos"]),
                additional_forward_args=(enc["attention_mask"], enc["visual_attention_mask"]),
                label=int(enc["labels"][0]),
                evidence={"text": text_evidence,
                          "image": torch.from_numpy(question.evidence_cells.copy())},
                image=render(scene),
                tokens={"text": [VOCAB[i] for i in ids], "image": _cell_names(scene)},
                description=f"{' '.join(question.words[:-1])}? → {question.answer}",
                scene=scene,
                question=question,
            ))
        return examples

    def remove(self, batch: Batch, stream: str, keep: Tensor) -> Batch:
        r"""The batch with the tokens of ``stream`` where ``keep`` (``(B, n)`` bool) is False
        masked out; see the class docstring for what is never removed."""
        if stream not in self.removable_streams:
            return super().remove(batch, stream, keep)
        ids, feats, boxes = batch.inputs
        assert batch.additional_forward_args is not None
        mask, visual_mask = batch.additional_forward_args
        n_tokens = ids.shape[1] if stream == "text" else feats.shape[1]
        keep = torch.as_tensor(keep, dtype=torch.bool).expand(len(batch), n_tokens)
        if stream == "text":
            keep = keep | (ids == CLS) | (ids == SEP) | (ids == PAD)
            ids = torch.where(keep, ids, torch.full_like(ids, PAD))
            mask = mask * keep.to(mask.dtype)
        else:
            feats = feats * keep[..., None].to(feats.dtype)
            visual_mask = visual_mask * keep.to(visual_mask.dtype)
        return replace(batch, inputs=(ids, feats, boxes),
                       additional_forward_args=(mask, visual_mask))


def _new_model(seed: int = 0) -> nn.Module:
    from transformers import LxmertForQuestionAnswering

    with torch.random.fork_rng():  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        return LxmertForQuestionAnswering(config())


def build(trained: bool = True) -> ShapesVQA:
    r"""The zoo model: trained weights from ``weights/shapes_vqa.safetensors``, or a random init.

    Raises:
        FileNotFoundError / ValueError: missing or corrupted weights (with the retrain command).
    """
    model = _new_model()
    if trained:
        load_weights(model, NAME)
    return ShapesVQA(model.eval())


def train(
    seed: int = 0,
    log: Callable[[str], None] = print,
    max_steps: int = 4000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 200,
    target_accuracy: float = 0.985,
) -> ShapesVQA:
    r"""Train from scratch on fresh examples drawn from ``seed`` (never the evaluation seed).

    Adam with linear warmup and cosine decay; every 250 steps the accuracy on 1000 validation
    examples (a seed of their own) is checked and training stops once it reaches
    ``target_accuracy``. Runs on one thread: the matrices are tiny, so a second thread costs more
    than it gives (twice slower on a busy 2-core machine), and one thread makes the float sums,
    hence the weights, the same on every machine for a given ``seed``.
    """
    with single_thread():
        return _train(seed, log, max_steps, batch_size, lr, warmup, target_accuracy)


def _train(
    seed: int,
    log: Callable[[str], None],
    max_steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    target_accuracy: float,
) -> ShapesVQA:
    model = _new_model(seed)
    zoo = ShapesVQA(model)
    train_rng = np.random.default_rng([seed, 1])  # seed sequences: disjoint from the held-out seed
    val_rng = np.random.default_rng([seed, 2])
    val = _encode([_sample(val_rng) for _ in range(1000)], val_rng)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    val_inputs = {k: t for k, t in val.items() if k != "labels"}

    def batch_loss() -> Tensor:
        batch = _encode([_sample(train_rng) for _ in range(batch_size)], train_rng)
        labels = batch.pop("labels")
        return F.cross_entropy(zoo.forward_func(**batch), labels)

    def check_accuracy() -> float:
        predicted = zoo.forward_func(**val_inputs).argmax(-1)
        return float((predicted == val["labels"]).float().mean())

    fit(model, optimizer, batch_loss, check_accuracy, steps=max_steps, warmup=warmup,
        check_every=250, clip=1.0, stop_at=target_accuracy, log=log)
    return ShapesVQA(model.eval())
