r"""Scores of token relevance against known evidence (pure torch / numpy).

- :func:`pointing_game`: is the most relevant token inside the evidence?
- :func:`relevance_mass`: share of the (positive) relevance that falls inside the evidence;
- :func:`evidence_auc`: ROC AUC of relevance as a detector of evidence tokens;
- :func:`otsu_threshold` / :func:`segmentation_iou`: weakly supervised segmentation as in the GAE
  DETR protocol (min-max scale, threshold at Otsu's value or ``k ×`` Otsu's, IoU with the mask);
- :func:`perturbation_auc`: ``np.trapz(score, fractions) * 100``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

TEXT_FRACTIONS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
IMAGE_FRACTIONS: tuple[float, ...] = (0.0, 0.5, 0.75, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)


def _check(relevance: Tensor, evidence: Tensor) -> None:
    if relevance.shape != evidence.shape or relevance.dim() != 2:
        raise ValueError(
            f"relevance {tuple(relevance.shape)} and evidence {tuple(evidence.shape)} must both "
            "be (batch, tokens)"
        )
    bad = ~torch.isfinite(relevance.float())
    if bool(bad.any()):
        example, token = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"relevance holds {int(bad.sum())} NaN or infinite value(s) (first: example "
            f"{example}, token {token}); a score of it would be meaningless"
        )


def _masked(relevance: Tensor, candidates: Tensor | None) -> Tensor:
    if candidates is None:
        return relevance.float()
    return relevance.float().masked_fill(~candidates, float("-inf"))


def pointing_game(
    relevance: Tensor, evidence: Tensor, candidates: Tensor | None = None
) -> Tensor:
    r"""Per example, whether the top token (among ``candidates``) is an evidence token.

    Args:
        relevance: ``(B, n)`` token relevance.
        evidence: ``(B, n)`` booleans.
        candidates: ``(B, n)`` booleans: tokens that may be pointed at (e.g. not ``[CLS]``).

    Returns:
        ``(B,)`` floats: 1 or 0 for one top token; tokens tied at the top share the point
        (the share of them that are evidence: a random tie-break's expected score), so a
        constant relevance scores chance, not the first token's luck.
    """
    _check(relevance, evidence)
    masked = _masked(relevance, candidates)
    top = masked == masked.amax(dim=1, keepdim=True)
    if candidates is not None:
        top &= candidates
    return (top & evidence).sum(1).float() / top.sum(1).clamp(min=1).float()


def pointing_chance(evidence: Tensor, candidates: Tensor | None = None) -> Tensor:
    """Per example, the pointing-game score of a uniformly random token."""
    pool = torch.ones_like(evidence) if candidates is None else candidates
    return (evidence & pool).sum(1).float() / pool.sum(1).clamp(min=1).float()


def relevance_mass(
    relevance: Tensor, evidence: Tensor, candidates: Tensor | None = None
) -> Tensor:
    """Per example, positive relevance inside the evidence / positive relevance overall."""
    _check(relevance, evidence)
    positive = relevance.float().clamp(min=0)
    if candidates is not None:
        positive = positive * candidates
    total = positive.sum(1)
    inside = (positive * evidence).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total))


def evidence_auc(relevance: Tensor, evidence: Tensor, candidates: Tensor | None = None) -> Tensor:
    """Per example, ROC AUC of relevance separating evidence from other tokens (ties count ½)."""
    _check(relevance, evidence)
    scores = []
    for row, truth, pool in zip(
        relevance.float(), evidence, candidates if candidates is not None else evidence | True,
        strict=True,
    ):
        positives, negatives = row[truth & pool], row[~truth & pool]
        if positives.numel() == 0 or negatives.numel() == 0:
            scores.append(float("nan"))
            continue
        greater = (positives[:, None] > negatives[None, :]).float().mean()
        ties = (positives[:, None] == negatives[None, :]).float().mean()
        scores.append(float(greater + 0.5 * ties))
    return torch.tensor(scores)


def perturbation_auc(scores: Sequence[float], fractions: Sequence[float]) -> float:
    """Area under the perturbation curve × 100 (the GAE protocol)."""
    scores_array, fractions_array = np.asarray(scores, float), np.asarray(fractions, float)
    widths = np.diff(fractions_array)
    return float(np.sum(widths * (scores_array[1:] + scores_array[:-1]) / 2) * 100)


def otsu_threshold(values: np.ndarray | Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a set of values (maximises the between-class variance)."""
    data = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, float)
    data = data.ravel()
    if data.size == 0 or data.min() == data.max():
        return float(data.max()) if data.size else 0.0
    hist, edges = np.histogram(data, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centers) / np.maximum(weight_low, 1)
    total_mean = (hist * centers).sum()
    mean_high = (total_mean - np.cumsum(hist * centers)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centers[int(np.argmax(between))])


def segmentation_iou(relevance_map: Tensor, mask: Tensor, k: float = 1.0) -> float:
    r"""IoU of ``relevance ≥ k × Otsu`` (after min-max scaling) with a ground-truth ``mask``.

    ``k = 0.3`` is the paper's fix for maps whose Otsu threshold is too strict.
    """
    if relevance_map.shape != mask.shape:
        raise ValueError(f"map {tuple(relevance_map.shape)} vs mask {tuple(mask.shape)}")
    values = relevance_map.detach().float()
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else torch.zeros_like(values)
    predicted = scaled >= k * otsu_threshold(scaled)
    truth = mask.bool()
    union = (predicted | truth).sum()
    return float((predicted & truth).sum() / union) if union > 0 else 1.0
