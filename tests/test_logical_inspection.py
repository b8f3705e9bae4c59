"""Logical inspection measured on shapes_vqa (paper §5.2, Fig. 8): where the evidence for "yes"
and for "no" lies under the full correction, for a contrast and for single logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from captum_hetattn.evaluation.logical import (
    OBJECTIVES,
    format_logical,
    logical_scores,
    run_logical_inspection,
)
from captum_hetattn.zoo import shapes_vqa as sv

torch.set_num_threads(1)


def test_distractors_share_exactly_one_attribute():
    colors = np.full(sv.N_REGIONS, -1)
    shapes = np.full(sv.N_REGIONS, -1)
    red, blue = sv.COLORS.index("red"), sv.COLORS.index("blue")
    circle, square = sv.SHAPES.index("circle"), sv.SHAPES.index("square")
    for cell, colour, shape in ((0, red, circle), (1, red, square), (2, blue, circle),
                                (3, blue, square)):
        colors[cell], shapes[cell] = colour, shape
    scene = sv.Scene(colors, shapes)
    question = sv.Question(("is", "there", "a", "red", "circle", "?"), "yes",
                           (colors == red) & (shapes == circle), frozenset({"red", "circle"}))
    assert sv.named_object(question) == (red, circle)
    assert np.flatnonzero(sv.distractor_cells(scene, question)).tolist() == [1, 2]
    other = sv.Question(("what", "color", "is", "the", "square", "?"), "red",
                        shapes == square, frozenset({"square"}))
    assert sv.named_object(other) is None and not sv.distractor_cells(scene, other).any()


def test_examples_carry_scene_and_question():
    zoo = sv.build(trained=False)
    for example in zoo.make_examples(20, seed=3):
        assert isinstance(example, sv.SceneExample)
        named = sv.named_object(example.question)
        if named is not None:
            cells = (example.scene.colors == named[0]) & (example.scene.shapes == named[1])
            assert torch.equal(example.evidence["image"], torch.from_numpy(cells))


def test_scores_by_hand():
    relevance = torch.tensor([[3.0, -1.0, -4.0, 0.0], [-2.0, 1.0, 0.5, 0.0]])
    named = torch.tensor([[True, False, False, False], [False, False, False, False]])
    distractor = torch.tensor([[False, True, False, False], [True, False, False, False]])
    occupied = torch.tensor([[True, True, True, False], [True, True, True, False]])
    scores = logical_scores(relevance, named, distractor, occupied)
    assert scores["n_named"] == 1 and scores["n_distractor"] == 2
    assert scores["positive_point"] == 1.0 and scores["positive_mass"] == 1.0
    # example 0: most negative is cell 2 (not a distractor), share 1/5; example 1: cell 0, 2/2
    assert scores["negative_point"] == 0.5
    assert math.isclose(scores["negative_mass"], (1 / 5 + 1.0) / 2, rel_tol=1e-6)
    assert math.isclose(scores["positive_chance"], 1 / 3, rel_tol=1e-6)


@pytest.fixture(scope="module")
def measured():
    return run_logical_inspection(n=160, seed=7)


def test_logical_inspection_is_measured(measured):
    assert set(measured["rows"]) == set(OBJECTIVES)
    assert measured["n_questions"] > 30 and 0 < measured["n_yes"] < measured["n_questions"]
    for scores in measured["rows"].values():
        for key in ("positive_point", "positive_mass", "negative_point", "negative_mass"):
            assert 0.0 <= scores[key] <= 1.0
    contrast, single = measured["rows"]["Contrast(yes, no)"], measured["rows"]["target=yes"]
    # the paper's Fig. 8 claim on the "yes" side: the contrast puts the evidence for "yes" on
    # the named object, well above chance (and above the single "yes" logit)
    assert contrast["positive_point"] > contrast["positive_chance"] + 0.2
    assert contrast["positive_point"] > single["positive_point"]
    assert measured["figure_png"].startswith(b"\x89PNG")
    text = format_logical(measured)
    assert "Contrast(yes, no)" in text and "neg→distractor" in text
