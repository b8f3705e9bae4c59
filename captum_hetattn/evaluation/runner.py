r"""Evaluate attribution methods on a zoo model's held-out examples, all on the same examples.

For every method and every stream with evidence: pointing game (vs. its chance level),
relevance mass inside the evidence, evidence AUC, weakly supervised segmentation (IoU of the
tokens above Otsu's threshold, and above 0.3 × Otsu, with the evidence). For every stream the
model can perturb: positive and negative perturbation curves (accuracy — or the zoo model's own
score, e.g. the cosine similarity of ``minilm`` — after removing the most / least relevant
tokens first, at the GAE protocol's fractions) and their AUCs. And seconds per example.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from captum_hetattn.evaluation.methods import Method
from captum_hetattn.evaluation.scores import (
    IMAGE_FRACTIONS,
    TEXT_FRACTIONS,
    evidence_auc,
    perturbation_auc,
    pointing_chance,
    pointing_game,
    relevance_mass,
    segmentation_iou,
)
from captum_hetattn.zoo import Batch, ZooModel


@dataclass
class StreamScores:
    """Scores of one method on one stream (``nan`` where not measured)."""

    pointing_game: float = math.nan
    pointing_chance: float = math.nan
    relevance_mass: float = math.nan
    evidence_auc: float = math.nan
    segmentation_iou: float = math.nan  # threshold at Otsu's value (min-max scaled relevance)
    segmentation_iou_03: float = math.nan  # at 0.3 × Otsu (the paper's fix)
    positive_auc: float = math.nan
    negative_auc: float = math.nan
    positive_curve: list[float] = field(default_factory=list)
    negative_curve: list[float] = field(default_factory=list)
    fractions: list[float] = field(default_factory=list)


@dataclass
class MethodScores:
    """All scores of one method."""

    method: str
    seconds_per_example: float
    streams: dict[str, StreamScores]


@dataclass
class EvaluationResult:
    """The result table: one :class:`MethodScores` per method, plus the setting."""

    model: str
    n_examples: int
    seed: int
    model_score: float  # mean ZooModel.score on the examples: accuracy for the classifiers
    methods: list[MethodScores]

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table, one row per method and stream."""
        header = (
            f"{'method':<22}{'stream':<8}{'point':>7}{'chance':>8}{'mass':>7}{'AUC':>7}"
            f"{'IoU':>7}{'IoU.3':>7}{'pos↓':>8}{'neg↑':>8}{'s/ex':>9}"
        )
        lines = [
            f"{self.model}: {self.n_examples} held-out examples (seed {self.seed}), "
            f"model score {self.model_score:.3f} (accuracy; minilm: cosine similarity)",
            header,
            "-" * len(header),
        ]
        for entry in self.methods:
            for stream, s in entry.streams.items():
                if all(math.isnan(v) for v in (s.pointing_game, s.positive_auc)):
                    continue  # nothing measured on this stream (no evidence, not removable)
                lines.append(
                    f"{entry.method:<22}{stream:<8}{_fmt(s.pointing_game):>7}"
                    f"{_fmt(s.pointing_chance):>8}{_fmt(s.relevance_mass):>7}"
                    f"{_fmt(s.evidence_auc):>7}{_fmt(s.segmentation_iou):>7}"
                    f"{_fmt(s.segmentation_iou_03):>7}{_fmt(s.positive_auc, 1):>8}"
                    f"{_fmt(s.negative_auc, 1):>8}{entry.seconds_per_example:>9.4f}"
                )
        return "\n".join(lines)


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def _split(batch: Batch, size: int) -> list[Batch]:
    """Consecutive sub-batches of at most ``size`` examples."""
    def take(value, start, stop):
        if value is None:
            return None
        if isinstance(value, tuple):
            return tuple(take(v, start, stop) for v in value)
        if isinstance(value, Tensor):
            return value[start:stop]
        return value

    return [
        Batch(
            inputs=take(batch.inputs, i, i + size),
            additional_forward_args=take(batch.additional_forward_args, i, i + size),
            labels=batch.labels[i : i + size],
            targets=batch.targets[i : i + size],
            evidence={s: e[i : i + size] for s, e in batch.evidence.items()},
        )
        for i in range(0, len(batch), size)
    ]


def perturbation_curve(
    zoo: ZooModel,
    batch: Batch,
    relevance: Tensor,
    stream: str,
    *,
    positive: bool,
    fractions: Sequence[float],
) -> list[float]:
    r"""Mean score (accuracy, or the zoo model's own :meth:`ZooModel.score`) after removing a
    growing fraction of ``stream``'s tokens by relevance.

    Positive test: most relevant first (a faithful explanation makes the score drop fast: lower
    AUC is better); negative test: least relevant first (higher AUC is better). Protected and
    padding tokens are never removed; the fraction counts the removable tokens.
    """
    removable = zoo.token_mask(batch, stream)
    score = relevance.float().masked_fill(~removable, float("nan"))
    order_key = -score if positive else score
    order_key = order_key.nan_to_num(float("inf"))  # non-removable tokens sort last
    ranks = order_key.argsort(dim=1).argsort(dim=1)
    counts = removable.sum(dim=1)
    curve = []
    for fraction in fractions:
        remove = ranks < torch.round(counts.float() * fraction).long()[:, None]
        perturbed = zoo.remove(batch, stream, keep=~(remove & removable))
        curve.append(float(zoo.score(perturbed).mean()))
    return curve


def _check_counts(**counts: int) -> None:
    """Counts a run needs, checked before any work (a failure after minutes loses it)."""
    for key, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{key} must be an int, got {type(value).__name__}")
        if value < (0 if key == "seed" else 1):
            raise ValueError(f"{key} must be {'≥ 0' if key == 'seed' else '≥ 1'}, got {value}")


def _check_relevance(
    method: str, relevance: Mapping[str, Tensor], full: Batch, part: Batch
) -> None:
    """A method's output: known streams, one row per example, the stream's token count, finite."""
    if not relevance:
        raise ValueError(f"method '{method}' produced no relevance")
    batch = len(part)
    for stream, values in relevance.items():
        if stream not in full.evidence:
            raise ValueError(
                f"method '{method}' returned relevance for stream '{stream}', which the model "
                f"does not have (its streams: {sorted(full.evidence)})"
            )
        expected = (batch, full.evidence[stream].shape[1])
        if not isinstance(values, Tensor) or tuple(values.shape) != expected:
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"method '{method}' returned relevance of shape {shape} for stream "
                f"'{stream}'; expected {expected} (examples, tokens)"
            )
        if not bool(torch.isfinite(values).all()):
            raise ValueError(
                f"method '{method}' returned NaN or infinite relevance for stream '{stream}'"
            )


def evaluate(
    zoo: ZooModel,
    methods: Mapping[str, Method],
    *,
    n: int = 200,
    seed: int = 12345,
    batch_size: int = 100,
    perturbation: bool = True,
    progress: bool = True,
) -> EvaluationResult:
    r"""Score every method on the same ``n`` held-out examples of ``zoo``.

    Args:
        zoo: a zoo model (:func:`captum_hetattn.zoo.load`).
        methods: display name → method (see :func:`~captum_hetattn.evaluation.standard_methods`).
        n: number of examples; seed: their generator seed.
        batch_size: examples per attribution call.
        perturbation: also run the perturbation tests.
        progress: show a tqdm progress bar.

    Returns:
        An :class:`EvaluationResult` (``.table()`` for humans, ``.to_dict()`` for JSON).
    """
    _check_counts(n=n, batch_size=batch_size, seed=seed)
    if not methods:
        raise ValueError("no method to evaluate")
    examples = zoo.make_examples(n, seed)
    full = zoo.collate(examples)
    batches = _split(full, batch_size)
    model_score = float(zoo.score(full).mean())
    results = []
    bar = tqdm(total=len(methods) * len(batches), desc=f"evaluate {zoo.name}", disable=not progress)
    for name, method in methods.items():
        start = time.perf_counter()
        parts: dict[str, list[Tensor]] = {}
        for part in batches:
            produced = method(zoo, part)
            _check_relevance(name, produced, full, part)
            for stream, relevance in produced.items():
                parts.setdefault(stream, []).append(relevance.float().cpu())
            bar.update(1)
        seconds = (time.perf_counter() - start) / len(full)
        relevance = {s: torch.cat(chunks) for s, chunks in parts.items()}
        streams = {}
        for stream, values in relevance.items():
            scores = StreamScores()
            evidence = full.evidence[stream]
            candidates = zoo.token_mask(full, stream)
            has = (evidence & candidates).any(dim=1)
            if has.any():
                ev, rel, cand = evidence[has], values[has], candidates[has]
                scores.pointing_game = float(pointing_game(rel, ev, cand).float().mean())
                scores.pointing_chance = float(pointing_chance(ev, cand).mean())
                scores.relevance_mass = float(relevance_mass(rel, ev, cand).mean())
                scores.evidence_auc = float(evidence_auc(rel, ev, cand).nanmean())
                for field_name, k in (("segmentation_iou", 1.0), ("segmentation_iou_03", 0.3)):
                    ious = [
                        segmentation_iou(r[c], e[c], k=k)
                        for r, e, c in zip(rel, ev, cand, strict=True)
                    ]
                    setattr(scores, field_name, sum(ious) / len(ious))
            if perturbation and stream in zoo.removable_streams:
                fractions = list(IMAGE_FRACTIONS if stream == "image" else TEXT_FRACTIONS)
                scores.fractions = fractions
                for positive in (True, False):
                    curve = perturbation_curve(
                        zoo, full, values, stream, positive=positive, fractions=fractions
                    )
                    auc = perturbation_auc(curve, fractions)
                    if positive:
                        scores.positive_curve, scores.positive_auc = curve, auc
                    else:
                        scores.negative_curve, scores.negative_auc = curve, auc
            streams[stream] = scores
        results.append(MethodScores(name, seconds, streams))
    bar.close()
    return EvaluationResult(zoo.name, len(full), seed, model_score, results)
