"""The ``shapes_detr`` zoo model: scenes with instance masks, a trained Conditional DETR that
meets its detection bar (pycocotools box AP@0.5) with the shipped weights, deterministic
retraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.zoo import load
from captum_hetattn.zoo import shapes_detr as sd

torch.set_num_threads(1)

#: box AP@0.5 the shipped weights must reach on held-out scenes (the issue's bar)
DETECTION_BAR = 0.5


def test_scenes_are_seeded_and_their_truth_fits_the_picture():
    first = sd.render(np.random.default_rng(5), 30)
    again = sd.render(np.random.default_rng(5), 30)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
               for a, b in zip(first, again, strict=True))
    counts = [len(s.classes) for s in first]
    assert min(counts) >= sd.MIN_OBJECTS and max(counts) <= sd.MAX_OBJECTS
    assert len({int(k) for s in first for k in s.classes}) == len(sd.CLASSES)
    touching = 0
    for scene in first:
        assert scene.image.shape == (sd.IMAGE_SIZE, sd.IMAGE_SIZE, 3)
        assert scene.image.dtype == np.uint8
        assert not (scene.masks.sum(axis=0) > 1).any()  # visible masks never overlap
        for mask, box in zip(scene.masks, scene.boxes, strict=True):
            assert mask.any()
            x, y, w, h = box.astype(int)
            assert mask[y : y + h, x : x + w].sum() == mask.sum()  # the box holds the mask
            assert mask[y, x : x + w].any() and mask[y + h - 1, x : x + w].any()
        if len(scene.masks) > 1:  # two objects that touch or overlap (4-neighbours)
            grown = [m | np.roll(m, 1, 0) | np.roll(m, -1, 0) | np.roll(m, 1, 1)
                     | np.roll(m, -1, 1) for m in scene.masks]
            touching += any((grown[i] & scene.masks[j]).any()
                            for i in range(len(grown)) for j in range(len(grown)) if i != j)
        background = scene.image[~scene.masks.any(axis=0)].astype(float)
        assert background.std(axis=0).mean() > 5  # textured, not flat
    assert touching >= 3
    areas = np.concatenate([s.areas for s in first])
    assert areas.min() < sd.AREA_RANGES["small"][1] < sd.AREA_RANGES["large"][0] < areas.max()


def test_training_labels_are_normalised_centre_boxes():
    scene = sd.render(np.random.default_rng(0), 1)[0]
    labels = sd.detr_labels(scene)
    assert labels["class_labels"].tolist() == scene.classes.tolist()
    x, y, w, h = scene.boxes[0]
    expected = torch.tensor([x + w / 2, y + h / 2, w, h]) / sd.IMAGE_SIZE
    torch.testing.assert_close(labels["boxes"][0], expected.float())


@pytest.fixture(scope="module")
def zoo():
    return load("shapes_detr")


def test_shipped_weights_meet_the_detection_bar(zoo):
    scores = zoo.detection_ap(n=300, seed=12345)  # the held-out seed training never draws
    assert scores["AP50"] >= DETECTION_BAR, scores
    assert scores["AP"] <= scores["AP50"]


def test_examples_explain_their_most_confident_detection(zoo):
    examples = zoo.make_examples(4, seed=99)
    pixels = torch.cat([e.inputs for e in examples])
    probs = zoo.probabilities(zoo.forward_func(pixels)).detach()
    for i, example in enumerate(examples):
        query, label = example.target
        assert probs[i, query, label] == probs[i].max()
        assert example.label == label and example.evidence["queries"][query]
        assert example.evidence["image"].shape == (sd.GRID * sd.GRID,)
    explainer = HeterogenousAttentionAttribution(
        zoo.forward_func, model=zoo.model, graph=zoo.graph, input_mappings=zoo.input_mappings)
    explanation = explainer.explain(pixels, target=[e.target for e in examples])
    assert explanation.readout_stream == "queries"
    assert explanation.readout_token.tolist() == [e.target[0] for e in examples]
    image = explanation.relevance["image"]
    assert image.shape == (4, sd.GRID * sd.GRID) and (image > 0).any(dim=1).all()
    heat = explainer.attribute(pixels, target=[e.target for e in examples])
    assert heat.shape == pixels.shape


def test_retraining_is_deterministic():
    first = sd.train(seed=3, steps=6, log=lambda _: None).model.state_dict()
    second = sd.train(seed=3, steps=6, log=lambda _: None).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    untrained = sd.build(trained=False).model.state_dict()
    assert any(not torch.equal(first[k], untrained[k]) for k in first)
