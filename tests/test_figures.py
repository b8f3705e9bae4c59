"""Figures of token relevance (captum_hetattn.visualization): image + text, red/blue contrast maps,
and the readout token left out of every colour scale."""

import numpy as np
import pytest
import torch
from matplotlib import image as mimage
from matplotlib import pyplot as plt
from matplotlib.colors import to_rgba

from captum_hetattn.visualization import (
    MAGNITUDE_CMAP,
    READOUT_FACE,
    SIGNED_CMAP,
    explanation_readout_token,
    figure_png,
    plot_contrast,
    plot_explanation,
    plot_image_text,
    relevance_scale,
    text_html,
    token_colors,
)

TOKENS = ["[CLS]", "is", "there", "a", "red", "circle", "?", "[SEP]"]


pytestmark = pytest.mark.usefixtures("one_thread")


def scene() -> np.ndarray:
    """A 64 × 64 picture: grey background, a red and a blue square."""
    image = np.full((64, 64, 3), 235, dtype=np.uint8)
    image[8:24, 8:24] = (220, 40, 40)
    image[40:56, 36:52] = (40, 80, 220)
    return image


def maps(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (16,), text (8,))`` relevance of one kind."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(16, generator=generator) - 0.4
    text = torch.rand(8, generator=generator) - 0.4
    if kind == "zero":
        return torch.zeros(16), torch.zeros(8)
    if kind == "positive":
        return image.abs(), text.abs()
    if kind == "negative":
        return -image.abs(), -text.abs()
    return image, text


def panel(figure, name: str):
    return next(a for a in figure.axes if a.get_label() == f"hetattn-{name}")


def assert_not_blank(path) -> None:
    pixels = mimage.imread(path)[..., :3]
    assert np.isfinite(pixels).all()
    quantised = (pixels.reshape(-1, 3) * 255).astype(int) // 8
    colours = len(np.unique(quantised, axis=0))
    ink = float((quantised.min(axis=1) < 30).mean())  # darker than near-white
    assert colours >= 20, f"{path}: only {colours} colours"
    assert ink > 0.05, f"{path}: almost all white"


@pytest.mark.parametrize("kind", ["normal", "zero", "positive", "negative"])
@pytest.mark.parametrize("draw", [plot_image_text, plot_contrast])
def test_figures_draw_every_kind_of_map(draw, kind, tmp_path):
    image, text = maps(kind)
    figure = draw(scene(), image, TOKENS, text, grid=(4, 4), readout_token=0, title=kind)
    path = tmp_path / f"{draw.__name__}_{kind}.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    assert_not_blank(path)
    if kind == "zero":  # the plain image, said so, rather than an exception or a NaN scale
        texts = [t.get_text() for a in figure.axes for t in a.texts]
        assert any("all zero" in t for t in texts), texts


def test_figures_take_tensor_images_grayscale_and_full_size_maps(tmp_path):
    chw = torch.from_numpy(scene()).permute(2, 0, 1).float() / 255
    heat = torch.zeros(64, 64)
    heat[8:24, 8:24] = 1.0
    figure = plot_image_text(chw, heat, TOKENS[:3], [0.2, 0.5, -0.1], show_input=False)
    assert len(figure.axes) == 2 + 2  # two panels and their colour bars
    gray = scene().mean(axis=2)
    path = tmp_path / "gray.png"
    plot_contrast(gray, np.ones((4, 4)), TOKENS, torch.ones(10)).savefig(path)
    assert_not_blank(path)
    with pytest.raises(ValueError, match="8 tokens but relevance for 3"):
        plot_image_text(scene(), None, TOKENS, torch.ones(3))


def test_nan_and_inf_relevance_count_as_zero():
    values = torch.tensor([1.0, float("nan"), 0.5, float("inf"), -float("inf")])
    assert relevance_scale(values) == 1.0
    for signed in (False, True):
        assert np.isfinite(token_colors(values, signed=signed)).all()
    figure = plot_contrast(scene(), torch.full((16,), float("nan")), TOKENS[:5], values)
    assert figure_png(figure).startswith(b"\x89PNG")


@pytest.mark.parametrize("signed", [False, True])
def test_the_readout_token_does_not_set_the_colour_scale(signed):
    others = torch.tensor([0.1, -0.3, 0.6, 0.2, 0.0, 0.45, -0.05])
    swamped = torch.cat([torch.tensor([1000.0]), others])  # the readout's own identity share
    assert relevance_scale(swamped, readout_token=0) == pytest.approx(0.6)
    colours = token_colors(swamped, readout_token=0, signed=signed)
    alone = token_colors(others, signed=signed)
    np.testing.assert_allclose(colours[1:], alone)  # as if the readout token were not there
    np.testing.assert_allclose(colours[0], to_rgba(READOUT_FACE))
    cmap = plt.get_cmap(SIGNED_CMAP if signed else MAGNITUDE_CMAP)
    np.testing.assert_allclose(colours[3], cmap(1.0))  # the largest other token: full colour
    # without leaving it out every other token would be washed out to the colour of 0
    washed = token_colors(swamped, signed=signed)
    assert np.abs(washed[1:] - np.asarray(cmap(0.5 if signed else 0.0))).max() < 0.02

    draw = plot_contrast if signed else plot_image_text
    figure = draw(scene(), torch.rand(16), TOKENS, swamped, readout_token=0)
    boxes = {t.get_text(): t.get_bbox_patch().get_facecolor() for t in panel(figure, "text").texts
             if t.get_bbox_patch() is not None}
    plt.close(figure)
    for token, colour in zip(TOKENS, colours, strict=True):
        np.testing.assert_allclose(boxes[token], colour)


def test_an_image_readout_token_is_left_out_of_the_image_scale():
    image = torch.full((16,), 0.01)
    image[5] = 1.0
    figure = plot_image_text(scene(), image, TOKENS, torch.rand(8), image_readout_token=5,
                             show_input=False)
    overlay = panel(figure, "image").images[-1].get_array()  # Captum's normalised heat map
    plt.close(figure)
    assert float(np.abs(overlay).max()) == pytest.approx(1.0)
    assert float(overlay[24, 24]) == 0.0  # the readout's cell (row 1, column 1) is neutral


def test_text_html_greys_the_readout_token_and_scales_without_it():
    relevance = torch.tensor([1000.0, 0.5, 0.25, -0.5])
    page = text_html(["[CLS]", "a", "b", "c"], relevance, readout_token=0)
    assert page.count('class="readout"') == 1 and READOUT_FACE in page
    assert "rgba(0,160,60,1.00)" in page and "rgba(0,160,60,0.50)" in page
    assert "rgba(220,40,40,1.00)" in page
    assert "nan" not in text_html(["a", "b"], torch.zeros(2))  # all zero: no division by zero


@pytest.fixture(scope="module")
def vqa():
    from captum_hetattn import HeterogenousAttentionAttribution
    from captum_hetattn.objectives import Contrast
    from captum_hetattn.zoo import load
    from captum_hetattn.zoo.shapes_vqa import ANSWER_ID

    zoo = load("shapes_vqa")
    examples = zoo.make_examples(2, seed=2024)
    batch = zoo.collate(examples)
    explainer = HeterogenousAttentionAttribution(
        zoo.forward_func, model=zoo.model, graph=zoo.graph, input_mappings=zoo.input_mappings)
    plain = explainer.explain(batch.inputs, target=batch.targets,
                              additional_forward_args=batch.additional_forward_args)
    contrast = explainer.explain(
        batch.inputs, objective=Contrast(ANSWER_ID["yes"], ANSWER_ID["no"]), correction="full",
        additional_forward_args=batch.additional_forward_args)
    return examples, plain, contrast


def test_plot_explanation_finds_the_readout_token(vqa, tmp_path):
    examples, plain, contrast = vqa
    assert explanation_readout_token(plain, "text", 1) == 0  # [CLS] of the text stream
    assert explanation_readout_token(plain, "image", 1) is None
    example = examples[1]
    for name, explanation, options in (("plain", plain, {}),
                                       ("contrast", contrast, {"answers": ("yes", "no")})):
        figure = plot_explanation(explanation, 1, example.image, example.tokens["text"],
                                  signed=bool(options), title=name, **options)
        grey = [t for t in panel(figure, "text").texts if t.get_text() == "[CLS]"]
        assert np.allclose(grey[0].get_bbox_patch().get_facecolor(), to_rgba(READOUT_FACE))
        path = tmp_path / f"{name}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        assert_not_blank(path)
    assert (contrast.relevance["text"][1, 1:] < 0).any()  # signed: something speaks for "no"
    with pytest.raises(ValueError, match="no source 'audio'"):
        plot_explanation(plain, 0, example.image, example.tokens["text"], text_source="audio")


def test_a_readout_token_outside_the_drawn_tokens_is_ignored():
    values = torch.tensor([0.2, 0.4, 0.8])
    np.testing.assert_allclose(token_colors(values, readout_token=5), token_colors(values))
    np.testing.assert_allclose(token_colors(values, readout_token=-1)[2], to_rgba(READOUT_FACE))
    assert relevance_scale(values, readout_token=-1) == pytest.approx(0.4)
    assert 'class="readout"' not in text_html(["a", "b"], values, readout_token=2)
    figure = plot_image_text(scene(), None, ["a", "b"], values, readout_token=2)
    notes = [t.get_text() for t in panel(figure, "text").texts if "readout" in t.get_text()]
    plt.close(figure)
    assert notes == []


def test_method_thumbnails_keep_readable_titles():
    """The report's row of method thumbnails (eleven methods): wrapped into rows, so the report
    (at most 1200 px wide) shows the titles at ≥ 10 px instead of shrinking one long row."""
    from captum_hetattn.visualization.report import example_figure
    from captum_hetattn.zoo import load

    zoo = load("shapes_vit")
    example = zoo.make_examples(1, 3)[0]
    generator = torch.Generator().manual_seed(0)
    relevance = {f"method {i}": {"image": torch.rand(1, 37, generator=generator)}
                 for i in range(11)}
    png = example_figure(zoo, example, 0, relevance)
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    title_px = 8 / 72 * 110 * min(1.0, 1200 / width)  # 8 pt titles at the PNG's 110 dpi
    assert title_px >= 10, (width, height)
    assert height > 1.5 * 2.3 * 110  # two rows
