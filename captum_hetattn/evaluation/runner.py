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
from typing import Any

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

    @classmethod
    def from_dict(cls, data: Mapping) -> EvaluationResult:
        """The result that :meth:`to_dict` wrote (e.g. read back from JSON)."""
        methods = [
            MethodScores(
                entry["method"], float(entry["seconds_per_example"]),
                {stream: StreamScores(**scores) for stream, scores in entry["streams"].items()},
            )
            for entry in data["methods"]
        ]
        return cls(data["model"], int(data["n_examples"]), int(data["seed"]),
                   float(data["model_score"]), methods)

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
    matrix = _perturbation_scores(
        zoo, batch, relevance, stream, positive=positive, fractions=fractions
    )
    return [float(row.mean()) for row in matrix]


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


@dataclass
class StreamPart:
    r"""Per-example scores of one method on one stream, for a slice of ``B`` examples.

    Everything :class:`StreamScores` holds is a mean over examples (the pointing game, mass,
    evidence AUC and IoUs over the examples with evidence in the stream; each point of a
    perturbation curve over all examples; the curve's AUC is taken of the mean curve), so slices
    computed apart — in other processes, or in an earlier run — aggregate to the same table.
    ``nan`` where an example has no evidence; empty curves where not measured.
    """

    has_evidence: Tensor  # (B,) bool
    pointing_game: Tensor  # (B,) float32
    pointing_chance: Tensor  # (B,) float32
    relevance_mass: Tensor  # (B,) float32
    evidence_auc: Tensor  # (B,) float32, nan where undefined
    segmentation_iou: Tensor  # (B,) float64
    segmentation_iou_03: Tensor  # (B,) float64
    fractions: list[float] = field(default_factory=list)
    positive_scores: Tensor | None = None  # (F, B) score of each example at each fraction
    negative_scores: Tensor | None = None


@dataclass
class MethodPart:
    """Per-example scores of one method on a slice, and its attribution seconds on the slice."""

    seconds: float
    streams: dict[str, StreamPart]


@dataclass
class ExampleScores:
    r"""Everything :func:`aggregate` needs of a slice of examples ``[start, start + size)``:
    per-example scores of each method, the model's own per-example score, and seconds.

    ``to_dict`` / ``from_dict`` round-trip through JSON exactly (float32 and float64 values
    survive as JSON numbers).
    """

    start: int
    model_score: Tensor  # (B,) float32: ZooModel.score per example
    methods: dict[str, MethodPart]

    def __len__(self) -> int:
        return int(self.model_score.shape[0])

    def to_dict(self) -> dict:
        def tensor(value: Tensor | None) -> dict | None:
            if value is None:
                return None
            return {"dtype": str(value.dtype).removeprefix("torch."),
                    "shape": list(value.shape), "values": value.flatten().tolist()}

        return {
            "start": self.start,
            "model_score": tensor(self.model_score),
            "methods": {
                name: {
                    "seconds": part.seconds,
                    "streams": {
                        stream: {
                            key: (value if key == "fractions" else tensor(value))
                            for key, value in vars(sp).items()
                        }
                        for stream, sp in part.streams.items()
                    },
                }
                for name, part in self.methods.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ExampleScores:
        def tensor(value: Mapping | None) -> Tensor | None:
            if value is None:
                return None
            dtype = getattr(torch, value["dtype"])
            return torch.tensor(value["values"], dtype=dtype).reshape(value["shape"])

        methods = {}
        for name, part in data["methods"].items():
            streams = {
                stream: StreamPart(**{
                    key: (list(value) if key == "fractions" else tensor(value))
                    for key, value in fields.items()
                })
                for stream, fields in part["streams"].items()
            }
            methods[name] = MethodPart(float(part["seconds"]), streams)
        model_score = tensor(data["model_score"])
        assert model_score is not None
        return cls(int(data["start"]), model_score, methods)


def _perturbation_scores(
    zoo: ZooModel,
    batch: Batch,
    relevance: Tensor,
    stream: str,
    *,
    positive: bool,
    fractions: Sequence[float],
) -> Tensor:
    """``(F, B)``: each example's score after removing each fraction (see
    :func:`perturbation_curve`)."""
    removable = zoo.token_mask(batch, stream)
    score = relevance.float().masked_fill(~removable, float("nan"))
    order_key = -score if positive else score
    order_key = order_key.nan_to_num(float("inf"))  # non-removable tokens sort last
    ranks = order_key.argsort(dim=1).argsort(dim=1)
    counts = removable.sum(dim=1)
    rows = []
    for fraction in fractions:
        remove = ranks < torch.round(counts.float() * fraction).long()[:, None]
        perturbed = zoo.remove(batch, stream, keep=~(remove & removable))
        rows.append(zoo.score(perturbed).float())
    return torch.stack(rows)


def score_examples(
    zoo: ZooModel,
    methods: Mapping[str, Method],
    batch: Batch,
    *,
    start: int = 0,
    batch_size: int = 100,
    perturbation: bool = True,
    progress: bool = False,
) -> ExampleScores:
    r"""Per-example scores of every method on ``batch`` (a slice of the held-out examples that
    begins at example ``start``), to be combined with other slices by :func:`aggregate`.

    Args:
        zoo: a zoo model.
        methods: display name → method.
        batch: the examples (:meth:`ZooModel.collate`).
        start: index of the batch's first example among all examples (kept for ordering).
        batch_size: examples per attribution call.
        perturbation: also run the perturbation tests.
        progress: show a tqdm progress bar.
    """
    _check_counts(batch_size=batch_size)
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int ≥ 0, got {start!r}")
    if not methods:
        raise ValueError("no method to evaluate")
    batches = _split(batch, batch_size)
    model_score = zoo.score(batch).float()
    parts: dict[str, MethodPart] = {}
    bar = tqdm(total=len(methods) * len(batches), desc=f"evaluate {zoo.name}", disable=not progress)
    for name, method in methods.items():
        begin = time.perf_counter()
        chunks: dict[str, list[Tensor]] = {}
        for part in batches:
            produced = method(zoo, part)
            _check_relevance(name, produced, batch, part)
            for stream, relevance in produced.items():
                chunks.setdefault(stream, []).append(relevance.float().cpu())
            bar.update(1)
        seconds = time.perf_counter() - begin
        streams = {}
        for stream, pieces in chunks.items():
            streams[stream] = _stream_part(
                zoo, batch, torch.cat(pieces), stream, perturbation=perturbation
            )
        parts[name] = MethodPart(seconds, streams)
    bar.close()
    return ExampleScores(start, model_score, parts)


def _stream_part(
    zoo: ZooModel, batch: Batch, values: Tensor, stream: str, *, perturbation: bool
) -> StreamPart:
    evidence = batch.evidence[stream]
    candidates = zoo.token_mask(batch, stream)
    has = (evidence & candidates).any(dim=1)
    size = len(batch)
    nan32 = torch.full((size,), math.nan)
    part = StreamPart(
        has_evidence=has, pointing_game=nan32.clone(), pointing_chance=nan32.clone(),
        relevance_mass=nan32.clone(), evidence_auc=nan32.clone(),
        segmentation_iou=torch.full((size,), math.nan, dtype=torch.float64),
        segmentation_iou_03=torch.full((size,), math.nan, dtype=torch.float64),
    )
    if has.any():
        ev, rel, cand = evidence[has], values[has], candidates[has]
        part.pointing_game[has] = pointing_game(rel, ev, cand).float()
        part.pointing_chance[has] = pointing_chance(ev, cand).float()
        part.relevance_mass[has] = relevance_mass(rel, ev, cand).float()
        part.evidence_auc[has] = evidence_auc(rel, ev, cand).float()
        for field_name, k in (("segmentation_iou", 1.0), ("segmentation_iou_03", 0.3)):
            ious = [
                segmentation_iou(r[c], e[c], k=k) for r, e, c in zip(rel, ev, cand, strict=True)
            ]
            getattr(part, field_name)[has] = torch.tensor(ious, dtype=torch.float64)
    if perturbation and stream in zoo.removable_streams:
        part.fractions = list(IMAGE_FRACTIONS if stream == "image" else TEXT_FRACTIONS)
        part.positive_scores = _perturbation_scores(
            zoo, batch, values, stream, positive=True, fractions=part.fractions
        )
        part.negative_scores = _perturbation_scores(
            zoo, batch, values, stream, positive=False, fractions=part.fractions
        )
    return part


def aggregate(model: str, seed: int, parts: Sequence[ExampleScores]) -> EvaluationResult:
    r"""The result table of slices computed apart (:func:`score_examples`), in example order.

    Means are taken once, over the concatenated per-example scores, so slices give the table of
    one run over all their examples (up to the float summation order of the attributions'
    batches); seconds per example = the methods' attribution seconds summed over the slices,
    divided by the number of examples (process-seconds, not wall-clock).

    Raises:
        ValueError: no slice, slices that overlap or leave gaps, or that hold different methods.
    """
    if not parts:
        raise ValueError("no slice of examples to aggregate")
    parts = sorted(parts, key=lambda p: p.start)
    expected = parts[0].start
    for part in parts:
        if part.start != expected:
            raise ValueError(
                f"slices must cover consecutive examples: one starts at {part.start}, "
                f"expected {expected}"
            )
        expected += len(part)
        if list(part.methods) != list(parts[0].methods):
            raise ValueError(
                f"slices hold different methods: {list(part.methods)} vs {list(parts[0].methods)}"
            )
    n_examples = expected - parts[0].start
    model_score = float(torch.cat([p.model_score for p in parts]).mean())
    results = []
    for name, first in parts[0].methods.items():
        seconds = sum(p.methods[name].seconds for p in parts) / n_examples
        streams = {}
        for stream in first.streams:
            pieces = [p.methods[name].streams[stream] for p in parts]

            def cat(key: str, pieces: list[StreamPart] = pieces) -> Tensor:
                return torch.cat([getattr(piece, key) for piece in pieces])

            scores = StreamScores()
            has = cat("has_evidence")
            if has.any():
                scores.pointing_game = float(cat("pointing_game")[has].mean())
                scores.pointing_chance = float(cat("pointing_chance")[has].mean())
                scores.relevance_mass = float(cat("relevance_mass")[has].mean())
                scores.evidence_auc = float(cat("evidence_auc")[has].nanmean())
                for key in ("segmentation_iou", "segmentation_iou_03"):
                    ious = cat(key)[has].tolist()
                    setattr(scores, key, sum(ious) / len(ious))
            if first.streams[stream].positive_scores is not None:
                scores.fractions = list(first.streams[stream].fractions)
                for positive, key in ((True, "positive_scores"), (False, "negative_scores")):
                    matrix = torch.cat([getattr(piece, key) for piece in pieces], dim=1)
                    curve = [float(row.mean()) for row in matrix]
                    auc = perturbation_auc(curve, scores.fractions)
                    if positive:
                        scores.positive_curve, scores.positive_auc = curve, auc
                    else:
                        scores.negative_curve, scores.negative_auc = curve, auc
            streams[stream] = scores
        results.append(MethodScores(name, seconds, streams))
    return EvaluationResult(model, n_examples, seed, model_score, results)


def check_methods(methods: Any) -> None:
    r"""``methods`` maps display names to callables ``(zoo, batch) -> attributions``: checked
    before any example is made (a method given by its name is told where the callables are)."""
    if not isinstance(methods, Mapping):
        raise TypeError(f"methods must be a dict of name -> method, got {type(methods).__name__}")
    if not methods:
        raise ValueError("no method to evaluate")
    for name, method in methods.items():
        if callable(method):
            continue
        hint = ""
        if isinstance(method, str):
            hint = (f" (a name: use standard_methods()[{method!r}], from "
                    "captum_hetattn.evaluation)")
        raise TypeError(
            f"methods[{name!r}] is a {type(method).__name__} {method!r}, not a method: give a "
            f"callable (zoo, batch) -> attributions{hint}"
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

    Over several processes, resumable, with the same table for the same seed:
    :func:`captum_hetattn.evaluation.distributed.evaluate_distributed`.
    """
    _check_counts(n=n, batch_size=batch_size, seed=seed)
    check_methods(methods)
    full = zoo.collate(zoo.make_examples(n, seed))
    part = score_examples(
        zoo, methods, full, batch_size=batch_size, perturbation=perturbation, progress=progress
    )
    return aggregate(zoo.name, seed, [part])
