r"""What :func:`captum_hetattn.hf.explain` explains: one planner per kind of answer.

Each planner reads the model's output on the batch (one forward without gradient) and the
user's ``target`` (``None``: the model's own answer) and returns a :class:`Plan`: the batch the
engine explains, its ``target`` (one per example) or ``targets`` (several from one forward), and
one :class:`~captum_hetattn.hf.result.ExplainedTarget` per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from captum_hetattn.hf.inputs import Encoded, Processors
from captum_hetattn.hf.result import ExplainedTarget
from captum_hetattn.hf.tasks import Task, corners, label_index, label_name, probabilities
from captum_hetattn.hf.words import words_of


@dataclass
class Plan:
    r"""What one engine call explains.

    Attributes:
        encoded: the batch (for image–text matching, a batch of text–picture pairs).
        target: per example, the engine's target (or None when ``targets`` is used).
        targets: ``K`` per-example target lists explained from one forward, or None.
        rows: ``(example in the batch, target slot or None, what it explains)``.
        pairs: the batch holds text–picture pairs (the forward scores each pair).
    """

    encoded: Encoded
    target: Any = None
    targets: list[list[Any]] | None = None
    rows: list[tuple[int, int | None, ExplainedTarget]] = field(default_factory=list)
    pairs: bool = False


@dataclass
class Context:
    """What a planner reads: the model, its task, the batch, its output, the processors."""

    model: nn.Module
    task: Task
    encoded: Encoded
    output: Any
    processors: Processors


def _per_example(value: Any, count: int, what: str) -> list[Any]:
    """``value`` for every example: one value for all, or a list (tensor, array) with one per
    example."""
    if isinstance(value, (Tensor, np.ndarray)):
        value = value.tolist()
    if isinstance(value, (list, tuple)) and not (isinstance(value, tuple) and len(value) == 2
                                                 and all(isinstance(v, int) for v in value)):
        if len(value) != count:
            raise ValueError(f"{what}: {len(value)} values for {count} examples")
        return list(value)
    return [value] * count


def _stack(slots: list[list[Any]]) -> list[list[Any]]:
    """Per example target lists of unequal length → ``K`` per-example lists (an example with
    fewer repeats its last target; those rows are not reported)."""
    count = max(len(each) for each in slots)
    return [[each[min(k, len(each) - 1)] for each in slots] for k in range(count)]


def plan_class(context: Context, target: Any) -> Plan:
    """One class (or answer) per example: the argmax, or the given class index / label."""
    scores = getattr(context.output, context.task.output)
    probs = probabilities(context.task, context.model, scores)
    chosen = _per_example(target, scores.shape[0], "target")
    rows, indices = [], []
    for example, given in enumerate(chosen):
        index = (int(probs[example].argmax()) if given is None
                 else label_index(context.model, given))
        indices.append(index)
        rows.append((example, None, ExplainedTarget(
            example, index, label_name(context.model, index), context.task.kind,
            float(probs[example, index]))))
    return Plan(context.encoded, target=indices, rows=rows)


def plan_token(context: Context, target: Any, token: int | Sequence[int] | None = None) -> Plan:
    """One row per word (its first piece's prediction), or the words ``token`` names."""
    probs = probabilities(context.task, context.model, getattr(context.output,
                                                               context.task.output))
    ids, mask = context.encoded.get("input_ids"), context.encoded.get("attention_mask")
    assert ids is not None
    chosen = _per_example(target, ids.shape[0], "target")
    slots, rows = [], []
    for example in range(ids.shape[0]):
        words = words_of(context.processors.tokenizer, ids[example],
                         text=context.encoded.texts[example],
                         mask=None if mask is None else mask[example])
        picked = range(len(words)) if token is None else (
            [token] if isinstance(token, int) else list(token))
        each = []
        for slot, word_index in enumerate(picked):
            if not -len(words) <= word_index < len(words):
                raise ValueError(f"token={word_index}: example {example} has {len(words)} "
                                 f"words")
            word = words[word_index]
            position = word.tokens[0]
            given = chosen[example]
            index = (int(probs[example, position].argmax()) if given is None
                     else label_index(context.model, given))
            each.append((position, index))
            rows.append((example, slot, ExplainedTarget(
                example, (position, index), label_name(context.model, index), "token",
                float(probs[example, position, index]), word=word.text, position=position)))
        if not each:
            raise ValueError(f"example {example} has no word to explain")
        slots.append(each)
    return Plan(context.encoded, targets=_stack(slots), rows=rows)


def plan_match(context: Context, target: Any) -> Plan:
    """Text ``i`` against picture ``j``: by default each picture's best text; ``target=i``
    scores text ``i`` against every picture; a list of ``(i, j)`` names the pairs."""
    logits = getattr(context.output, context.task.output).detach().float()  # (images, texts)
    n_images, n_texts = logits.shape
    if isinstance(target, (Tensor, np.ndarray)):
        target = target.tolist()
    if target is None:
        pairs = [(int(logits[j].argmax()), j) for j in range(n_images)]
    elif isinstance(target, (int, np.integer)):
        pairs = [(int(target), j) for j in range(n_images)]
    elif isinstance(target, tuple) and len(target) == 2 and all(
            isinstance(v, (int, np.integer)) for v in target):
        pairs = [(int(target[0]), int(target[1]))]
    else:
        pairs = [(int(i), int(j)) for i, j in target]
    for i, j in pairs:
        if not (0 <= i < n_texts and 0 <= j < n_images):
            raise ValueError(f"target pair (text {i}, image {j}) is out of range: {n_texts} "
                             f"texts, {n_images} images")
    encoded = context.encoded.select([i for i, _ in pairs], [j for _, j in pairs])
    rows = [(b, None, ExplainedTarget(j, (i, j), context.encoded.texts[i], "match",
                                      float(logits[j, i])))
            for b, (i, j) in enumerate(pairs)]
    return Plan(encoded, target=0, rows=rows, pairs=True)


def _detections(probs: Tensor, target: Any, threshold: float) -> list[tuple[int, int]]:
    """``(query, class)`` of one example: above ``threshold`` (best first) or as given."""
    if target is None:
        score, label = probs.max(-1)
        order = score.argsort(descending=True)
        return [(int(q), int(label[q])) for q in order if score[q] > threshold]
    given = [target] if isinstance(target, (int, tuple)) else list(target)
    out = []
    for each in given:
        query, label = (each, None) if isinstance(each, int) else each
        label = int(probs[query].argmax()) if label is None else int(label)
        out.append((int(query), label))
    return out


def plan_box(context: Context, target: Any, threshold: float = 0.5) -> Plan:
    """One row per detected box: each query whose class probability passes ``threshold``
    (target = that query's class logit), or the ``(query, class)`` / query indices given."""
    probs = probabilities(context.task, context.model, context.output.logits)
    boxes = context.output.pred_boxes
    slots, rows = [], []
    for example in range(probs.shape[0]):
        found = _detections(probs[example], target, threshold)
        height, width = context.encoded.geometries[example].original
        for slot, (query, label) in enumerate(found):
            box = corners(boxes[example, query][None], height, width)[0]
            rows.append((example, slot, ExplainedTarget(
                example, (query, label), label_name(context.model, label), "box",
                float(probs[example, query, label]), box=box)))
        slots.append(found)
    if not rows:
        raise ValueError(f"no box has a class probability above threshold={threshold}: lower "
                         "threshold= or give target=(query, class)")
    for example, each in enumerate(slots):  # examples with no box: any target, no row
        slots[example] = each or [(0, 0)]
    return Plan(context.encoded, targets=_stack(slots), rows=rows)


#: the planner of each kind of answer (see :class:`~captum_hetattn.hf.tasks.Task`)
PLANNERS: dict[str, Callable[..., Plan]] = {
    "class": plan_class,
    "answer": plan_class,
    "token": plan_token,
    "match": plan_match,
    "box": plan_box,
}

#: the options each planner takes beyond ``target``
PLANNER_OPTIONS: dict[str, tuple[str, ...]] = {"token": ("token",), "box": ("threshold",)}


__all__ = ["PLANNERS", "PLANNER_OPTIONS", "Context", "Plan", "plan_box", "plan_class",
           "plan_match", "plan_token"]
