r"""What :func:`captum_hetattn.hf.explain` knows about HuggingFace models, as data.

A :class:`Task` says, for the model classes it covers: what the model reads (text, picture),
which output field holds the scores, how a score becomes a probability, and what kind of
answer is explained — one class per example, one per word, the answer to a question, the
matched text, one per detected box. :func:`task_of` finds a model's task by its class name;
a model class no task covers is a ``ValueError`` that lists the tasks known.

Adding a task is one entry in :data:`TASKS` (and, for a new kind of answer, one target
planner in :mod:`captum_hetattn.hf.targets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Task:
    r"""One kind of HuggingFace model head.

    Attributes:
        name: the task's name (as ``transformers.pipeline`` spells it where it has one).
        classes: model class names, or name endings starting with ``"For"``.
        reads: the inputs the model needs: ``"text"`` and / or ``"images"``, or ``"audio"``.
        output: the output field holding the scores.
        kind: the answer explained: ``"class"``, ``"token"``, ``"answer"``, ``"match"``,
            ``"box"``.
        probability: how scores become probabilities: ``"softmax"``, ``"sigmoid"``,
            ``"detection"`` (softmax or sigmoid by detector family) or ``"none"``.
        padding: how a batch of texts is padded: ``"longest"``, or ``"max_length"``: to the
            text model's positions and read without an attention mask, as SigLIP was trained
            (it pools the last position, a padding token for short texts; padding is still no
            word).
    """

    name: str
    classes: tuple[str, ...]
    reads: tuple[str, ...]
    output: str
    kind: str
    probability: str = "softmax"
    padding: str = "longest"

    def covers(self, model: nn.Module) -> bool:
        """Whether this task covers ``model``'s class and the model reads what the task gives
        it (a ``Wav2Vec2ForSequenceClassification`` reads audio, not text)."""
        name = type(model).__name__
        mains = MAIN_INPUTS["text" if "text" in self.reads else self.reads[0]]
        return getattr(model, "main_input_name", mains[0]) in mains and any(
            name == c or (c.startswith("For") and name.endswith(c)) for c in self.classes)


#: the model's ``main_input_name`` for what a task reads first
MAIN_INPUTS: dict[str, tuple[str, ...]] = {"text": ("input_ids",), "images": ("pixel_values",),
                                           "audio": ("input_values", "input_features")}


#: every task :func:`~captum_hetattn.hf.explain` covers; the first that covers a model wins
TASKS: tuple[Task, ...] = (
    Task("visual-question-answering", ("ViltForQuestionAnswering",), ("text", "images"),
         "logits", "answer", "sigmoid"),
    Task("image-text-matching", ("SiglipModel", "Siglip2Model"), ("text", "images"),
         "logits_per_image", "match", "none", padding="max_length"),
    Task("image-text-matching", ("CLIPModel", "ChineseCLIPModel", "AltCLIPModel"),
         ("text", "images"), "logits_per_image", "match", "none"),
    Task("text-classification", ("ForSequenceClassification",), ("text",), "logits", "class"),
    Task("token-classification", ("ForTokenClassification",), ("text",), "logits", "token"),
    Task("image-classification", ("ForImageClassification",
                                  "ForImageClassificationWithTeacher"), ("images",), "logits",
         "class"),
    Task("object-detection", ("ForObjectDetection",), ("images",), "logits", "box",
         "detection"),
    Task("audio-classification", ("ForSequenceClassification", "ForAudioClassification"),
         ("audio",), "logits", "class"),
)

#: detector families trained with a sigmoid (focal) loss and no "no object" class
SIGMOID_DETECTORS = frozenset({"conditional_detr", "deformable_detr", "dab_detr", "rt_detr",
                               "rt_detr_v2", "d_fine", "grounding-dino"})


def task_of(model: nn.Module) -> Task:
    r"""The task of ``model``, by its class.

    Raises:
        ValueError: no task covers the model's class (the known tasks are listed).
    """
    for task in TASKS:
        if task.covers(model):
            return task
    known = "; ".join(f"{t.name}: {', '.join(t.classes)}" for t in TASKS)
    raise ValueError(
        f"hf.explain does not know what {type(model).__name__} answers. Known tasks (model "
        f"classes): {known}. For another model, use HeterogenousAttentionAttribution with "
        "your own forward function and target"
    )


def probabilities(task: Task, model: nn.Module, scores: Tensor) -> Tensor:
    r"""The scores as probabilities (over the last dimension), as the task's head was trained.

    Detection: softmax without the last ("no object") class, or a sigmoid for the families in
    :data:`SIGMOID_DETECTORS`.
    """
    scores = scores.detach().float()
    rule = task.probability
    if rule == "detection":
        family = getattr(getattr(model, "config", None), "model_type", "")
        if family in SIGMOID_DETECTORS:
            return scores.sigmoid()
        return scores.softmax(-1)[..., :-1]
    if rule == "sigmoid":
        return scores.sigmoid()
    if rule == "softmax":
        return scores.softmax(-1)
    return scores


def label_name(model: nn.Module, index: int) -> str:
    """``config.id2label[index]`` (keys as ints or strings), else the index as text."""
    labels: Any = getattr(getattr(model, "config", None), "id2label", None) or {}
    return str(labels.get(index, labels.get(str(index), index)))


def label_index(model: nn.Module, label: Any) -> int:
    r"""A class given by name (``config.label2id``) or index, as an index.

    Raises:
        ValueError: a name the model's labels do not have.
    """
    if isinstance(label, str):
        names = {label_name(model, i): i for i in range(_label_count(model))}
        if label not in names:
            raise ValueError(f"{type(model).__name__} has no label {label!r}; its labels: "
                             f"{sorted(names)}")
        return names[label]
    if isinstance(label, Tensor):
        return int(label.item())
    return int(label)


def _label_count(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "num_labels", 0) or len(getattr(config, "id2label", {}) or {}))


def corners(boxes: Tensor, height: int, width: int) -> list[tuple[float, float, float, float]]:
    """DETR boxes ``(cx, cy, w, h)`` in ``[0, 1]`` → ``(x0, y0, x1, y1)`` in pixels."""
    cx, cy, w, h = boxes.detach().float().unbind(-1)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * scale
    return [tuple(float(v) for v in box) for box in xyxy.tolist()]


__all__ = ["SIGMOID_DETECTORS", "TASKS", "Task", "corners", "label_index", "label_name",
           "probabilities", "task_of"]
