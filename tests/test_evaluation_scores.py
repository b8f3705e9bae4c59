import math

import numpy as np
import pytest
import torch

from captum_hetattn.evaluation import (
    evidence_auc,
    otsu_threshold,
    perturbation_auc,
    pointing_chance,
    pointing_game,
    relevance_mass,
    segmentation_iou,
)

RELEVANCE = torch.tensor([[0.1, 0.7, 0.2, -0.4], [0.5, 0.1, 0.3, 0.1]])
EVIDENCE = torch.tensor([[False, True, False, False], [False, False, True, True]])


def test_pointing_game_and_chance_by_hand():
    assert pointing_game(RELEVANCE, EVIDENCE).tolist() == [True, False]
    not_first = torch.tensor([[True] * 4, [False, True, True, True]])
    assert pointing_game(RELEVANCE, EVIDENCE, not_first).tolist() == [True, True]
    assert pointing_chance(EVIDENCE).tolist() == [0.25, 0.5]
    assert pointing_chance(EVIDENCE, not_first).tolist() == pytest.approx([0.25, 2 / 3])


def test_relevance_mass_counts_positive_relevance_only():
    assert relevance_mass(RELEVANCE, EVIDENCE).tolist() == pytest.approx([0.7, 0.4])
    assert relevance_mass(torch.zeros(1, 3), torch.tensor([[True, False, False]])).item() == 0


def test_evidence_auc_by_hand():
    auc = evidence_auc(RELEVANCE, EVIDENCE)
    assert auc[0].item() == 1.0  # the evidence token beats all others
    # example 2: evidence {0.3, 0.1} vs others {0.5, 0.1}: wins 1, ties 1 (½), losses 2 → 1.5/4
    assert auc[1].item() == pytest.approx(0.375)
    assert math.isnan(evidence_auc(RELEVANCE[:1], torch.ones(1, 4, dtype=torch.bool))[0].item())


def test_perturbation_auc_is_trapezoid_times_100():
    assert perturbation_auc([1.0, 1.0], [0.0, 1.0]) == pytest.approx(100.0)
    assert perturbation_auc([1.0, 0.5, 0.0], [0.0, 0.5, 1.0]) == pytest.approx(50.0)
    fractions = [0, 0.25, 0.5, 0.75, 1.0]
    scores = [0.9, 0.6, 0.4, 0.3, 0.1]
    expected = np.trapezoid(scores, fractions) * 100
    assert perturbation_auc(scores, fractions) == pytest.approx(expected)


def test_otsu_separates_two_clusters_and_segmentation_iou():
    values = np.concatenate([np.full(50, 0.1), np.full(50, 0.9)])
    threshold = otsu_threshold(values)
    assert 0.1 < threshold < 0.9
    relevance_map = torch.zeros(4, 4)
    relevance_map[:2, :2] = 1.0
    relevance_map[3, 3] = 0.2  # faint noise: kept only by the 0.3 × Otsu threshold
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True
    assert segmentation_iou(relevance_map, mask) == 1.0
    assert segmentation_iou(relevance_map, mask, k=0.3) == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="map"):
        segmentation_iou(relevance_map, mask[:2])
