"""A batch gives each example what it gets alone (sweep finding: GLPN). GLPN's last stage has a
single token; the sweep's score (the channel mean of its layer-normed feature) is constant, so
one example's gradient at the final tokens was exactly zero (refused alone) while the batch was
explained with relevance exactly 0 and no warning. Now the batch refuses naming the example, and
an explanation that is all zero for an example warns naming it and the sources."""

import warnings

import pytest
import torch
from transformers import GLPNConfig, GLPNModel, ViTConfig, ViTForImageClassification

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.engine.zero_examples import zero_examples


def _vit():
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       num_labels=3)
    return ViTForImageClassification(config).eval(), torch.randn(3, 3, 8, 8)


def _glpn():
    torch.manual_seed(0)
    config = GLPNConfig(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1],
                        sr_ratios=[8, 4, 2, 1], hidden_sizes=[16, 32, 32, 32],
                        patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
                        num_attention_heads=[1, 2, 2, 2], mlp_ratios=[4, 4, 4, 4],
                        decoder_hidden_size=32, drop_path_rate=0.0)
    return GLPNModel(config).eval(), torch.randn(2, 3, 32, 32)


def _caught(explainer, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = explainer.attribute(*args, **kwargs)
    return result, [str(w.message) for w in caught]


def test_an_example_with_no_gradient_is_refused_in_a_batch_as_alone():
    model, pixels = _vit()
    silence = torch.tensor([[1.0], [0.0], [1.0]])  # example 1's score is constant
    explainer = HeterogenousAttentionAttribution(
        lambda x: model(pixel_values=x).logits * silence[: x.shape[0]].to(x), model=model)
    alone = HeterogenousAttentionAttribution(
        lambda x: model(pixel_values=x).logits * 0, model=model)
    with pytest.raises(ValueError, match="gradient is zero at the final tokens"):
        alone.attribute(pixels[1:2], target=0)
    with pytest.raises(ValueError, match=r"for example\(s\) \[1\] of the batch"):
        explainer.attribute(pixels, target=0)
    explainer.attribute(pixels[:1], target=0)  # the others are explained alone


def test_glpn_channel_mean_score_is_never_explained_silently():
    model, pixels = _glpn()
    explainer = HeterogenousAttentionAttribution(
        lambda x: model(pixel_values=x).last_hidden_state.flatten(1, -2).mean(1), model=model)
    try:
        relevance, caught = _caught(explainer, pixels, target=0)
    except ValueError as err:  # an example whose gradient is exactly zero: named
        assert "gradient is zero at the final tokens" in str(err)
        return
    zero = zero_examples({"image": relevance})
    assert zero, "a constant score cannot be explained by non-zero relevance"
    assert any(f"example(s) {zero}" in m and "'image'" in m for m in caught), caught


def test_glpn_zero_explanation_warns_naming_example_and_source():
    model, pixels = _glpn()  # one token at the readout: its row is its own share only
    explainer = HeterogenousAttentionAttribution(
        lambda x: model(pixel_values=x).last_hidden_state.flatten(2).mean(-1)[:, :4],
        model=model)
    relevance, caught = _caught(explainer, pixels, target=0)
    assert bool((relevance == 0).all())
    named = [m for m in caught if "exactly zero in every source" in m]
    assert len(named) == 1 and "example(s) [0, 1]" in named[0] and "['image']" in named[0]
    assert "include_own=True" in named[0]


def test_only_the_all_zero_example_is_named():
    ones, zeros = torch.ones(3, 4), torch.zeros(3, 4)
    ones[1] = 0
    assert zero_examples({"a": ones, "b": zeros}) == [1]
    assert zero_examples({"a": torch.ones(3, 4)}) == []
    assert zero_examples({}) == []


def test_the_warning_names_only_the_all_zero_examples_once():
    from captum_hetattn.engine.report import Report
    from captum_hetattn.engine.zero_examples import warn_zero_examples

    relevance = {"text": torch.ones(3, 5), "image": torch.ones(3, 4)}
    relevance["text"][2] = 0
    relevance["image"][2] = 0
    relevance["image"][0] = 0  # example 0 keeps its text relevance: not named
    report = Report()
    with pytest.warns(UserWarning, match=r"example\(s\) \[2\] is exactly zero in every source "
                                         r"\(\['image', 'text'\]\)") as caught:
        warn_zero_examples(relevance, report, include_own=True)
    assert len(caught) == 1 and "include_own" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_zero_examples(relevance, report, include_own=True)  # once per explainer
