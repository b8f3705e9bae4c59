r"""The ``shapes_vqa`` zoo model: shipped weights, generator, evidence, removal, attribution."""

import re

import pytest
import torch
from safetensors.torch import load_file

import captum_hetattn.zoo as zoo_module
from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.zoo import load, weights_path
from captum_hetattn.zoo import shapes_vqa as sv

HELD_OUT_SEED = 12345


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo():
    return load("shapes_vqa")


@pytest.fixture(scope="module")
def with_evidence(zoo):
    r"""The first 100 held-out examples that have image evidence (not the "no" answers)."""
    examples = [e for e in zoo.make_examples(140, HELD_OUT_SEED) if e.evidence["image"].any()]
    assert len(examples) >= 100
    return zoo.collate(examples[:100])


def test_held_out_accuracy(zoo):
    accuracy = zoo.accuracy(n=500, seed=HELD_OUT_SEED)
    assert accuracy >= 0.90, accuracy


def test_generator_is_deterministic_and_seeded(zoo):
    first, again, other = (zoo.make_examples(20, seed) for seed in (7, 7, 8))
    for a, b in zip(first, again, strict=True):
        for x, y in zip(a.inputs + a.additional_forward_args,
                        b.inputs + b.additional_forward_args, strict=True):
            assert torch.equal(x, y)
        assert a.label == b.label and a.description == b.description and a.tokens == b.tokens
        assert all(torch.equal(a.evidence[s], b.evidence[s]) for s in ("text", "image"))
        assert (a.image == b.image).all()
    assert [e.description for e in first] != [e.description for e in other]


def test_examples_are_well_formed_and_evidence_holds_the_referenced_object(zoo):
    examples = zoo.make_examples(200, 3)
    kinds = set()
    for example in examples:
        ids, feats, boxes = example.inputs
        mask, visual_mask = example.additional_forward_args
        assert ids.shape == mask.shape == (1, sv.TEXT_LENGTH) and ids[0, 0] == sv.CLS
        assert feats.shape == (1, 16, sv.FEATURE_DIM) and boxes.shape == (1, 16, 4)
        assert visual_mask.shape == (1, 16) and example.image.shape == (64, 64, 3)
        assert torch.equal(mask[0].bool(), ids[0] != sv.PAD)
        words = example.tokens["text"]
        assert len(words) == sv.TEXT_LENGTH and len(example.tokens["image"]) == 16
        cells = [re.fullmatch(r"cell r(\d)c(\d): (.+)", name).groups()
                 for name in example.tokens["image"]]
        objects = [what for _, _, what in cells]
        assert 2 <= sum(what != "empty" for what in objects) <= 4
        answer = sv.ANSWERS[example.label]
        evidence = example.evidence["image"].tolist()
        question, given = example.description.split(" → ")
        assert given == answer

        def holds(word, what):
            return what != "empty" and word in what.split()

        if question.startswith("is there"):
            kinds.add("exists")
            color, shape = question.removesuffix("?").split()[-2:]
            wanted = [what == f"{color} {shape}" for what in objects]
            assert evidence == wanted and answer == ("yes" if any(wanted) else "no")
            content = {color, shape}
        elif question.startswith("what color"):
            kinds.add("color")
            shape = question.removesuffix("?").split()[-1]
            assert evidence == [holds(shape, what) for what in objects] and sum(evidence) == 1
            assert objects[evidence.index(True)] == f"{answer} {shape}"
            content = {shape}
        else:
            kinds.add("shape")
            color = question.split()[-2]
            assert evidence == [holds(color, what) for what in objects] and sum(evidence) == 1
            assert objects[evidence.index(True)] == f"{color} {answer}"
            content = {color}
        assert example.evidence["text"].tolist() == [w in content for w in words]
        # the picture agrees: every evidence cell's centre has the object's colour
        for cell in torch.nonzero(example.evidence["image"]).flatten().tolist():
            row, col = divmod(cell, 4)
            centre = example.image[row * 16 + 8, col * 16 + 8]
            assert tuple(centre) == sv.RGB[objects[cell].split()[0]]
    assert kinds == {"exists", "color", "shape"}


def test_removing_the_evidence_regions_changes_the_answer(zoo, with_evidence):
    batch = with_evidence
    before = zoo.predict(batch)
    evidence = batch.evidence["image"]
    removed = zoo.remove(batch, "image", ~evidence)
    _, feats, _ = removed.inputs
    _, visual_mask = removed.additional_forward_args
    assert (visual_mask[evidence] == 0).all() and (feats[evidence] == 0).all()
    assert (visual_mask[~evidence] == 1).all()
    changed = (zoo.predict(removed) != before).float().mean().item()
    # the control: as many random non-evidence cells (mostly empty) removed
    generator = torch.Generator().manual_seed(0)
    keep = torch.ones_like(evidence)
    for i in range(len(batch)):
        others = torch.nonzero(~evidence[i]).flatten()
        pick = torch.randperm(len(others), generator=generator)[: int(evidence[i].sum())]
        keep[i, others[pick]] = False
    changed_control = (zoo.predict(zoo.remove(batch, "image", keep)) != before).float().mean()
    # measured with the shipped weights: 0.74 vs 0.00
    assert changed >= 0.5 and changed_control <= 0.1, (changed, changed_control)


def test_removing_words_keeps_cls_sep_and_padding(zoo, with_evidence):
    batch = with_evidence
    ids, _, _ = batch.inputs
    removed = zoo.remove(batch, "text", torch.zeros_like(ids, dtype=torch.bool))
    new_ids, _, _ = removed.inputs
    mask, visual_mask = removed.additional_forward_args
    structural = (ids == sv.CLS) | (ids == sv.SEP)
    assert torch.equal(new_ids[structural], ids[structural])
    assert torch.equal(mask.bool(), structural)
    assert ((new_ids == sv.PAD) == ~structural).all() and (visual_mask == 1).all()
    assert zoo.protected_tokens == {"text": (0,)}
    with pytest.raises(ValueError, match="cannot be removed"):
        zoo.remove(batch, "audio", torch.ones(len(batch), 3, dtype=torch.bool))


def test_weight_file_is_small_and_plain_safetensors(zoo):
    path = weights_path("shapes_vqa")
    assert path.stat().st_size <= 2 * 1024 * 1024
    state = load_file(str(path))
    assert set(state) == set(zoo.model.state_dict())


def test_corrupted_or_missing_weights_say_how_to_retrain(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_module, "WEIGHTS_DIR", tmp_path)
    retrain = re.escape("python -m captum_hetattn.zoo.train shapes_vqa")
    with pytest.raises(FileNotFoundError, match=retrain):
        sv.build()
    (tmp_path / "shapes_vqa.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match=retrain):
        sv.build()
    assert isinstance(sv.build(trained=False), sv.ShapesVQA)


def test_attribution_runs_and_points_at_the_evidence(zoo, with_evidence):
    explainer = HeterogenousAttentionAttribution(
        zoo.forward_func, model=zoo.model, graph=zoo.graph, input_mappings=zoo.input_mappings
    )
    four = zoo.collate(zoo.make_examples(4, HELD_OUT_SEED))
    explanation = explainer.explain(
        four.inputs, target=four.targets, additional_forward_args=four.additional_forward_args
    )
    assert explanation.relevance["text"].shape == (4, sv.TEXT_LENGTH)
    assert explanation.relevance["image"].shape == (4, 16)
    attributions = explainer.attribute(
        four.inputs, target=four.targets, additional_forward_args=four.additional_forward_args
    )
    assert [a.shape for a in attributions] == [t.shape for t in four.inputs]

    # pointing game: does the most relevant region hold the referenced object?
    batch = with_evidence
    relevance = explainer.explain(
        batch.inputs, target=batch.targets, additional_forward_args=batch.additional_forward_args,
        correction="pos",
    ).relevance["image"]
    evidence = batch.evidence["image"]
    hits = evidence[torch.arange(len(batch)), relevance.argmax(dim=1)].float().mean().item()
    chance = (evidence.float().sum(dim=1) / 16).mean().item()
    # measured with the shipped weights: 0.64 vs chance 0.064
    assert hits > 3 * chance, (hits, chance)
