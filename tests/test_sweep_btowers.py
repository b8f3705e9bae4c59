r"""SigLIP2 (NaFlex patch rows, a padded image): the readout follows what the output really
reads — the classifier's mean over real patches, never the attention-pooling head that runs
beside it — and the vision tower alone, scored on that head, is read at the head's probe."""

from __future__ import annotations

import warnings

import torch
from model_types.build import build
from model_types.builders.towers import _siglip2, _siglip2_vision

from captum_hetattn import HeterogenousAttentionAttribution


def _explain(case):
    explainer = HeterogenousAttentionAttribution(case.forward_func, model=case.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = explainer.explain(case.inputs, target=case.target,
                                        additional_forward_args=case.additional_forward_args)
    return explanation, [str(w.message) for w in caught]


def test_siglip2_classifier_is_read_on_the_patches_it_mean_pools_not_the_pooling_head():
    case = _siglip2()
    explanation, messages = _explain(case)
    assert any("vision_model.head.attention" in m and "no gradient" in m for m in messages)
    assert set(explanation.readout) == {explanation.readout_stream}
    readout = explanation.readout[explanation.readout_stream]
    real = case.mask.bool()
    assert readout.shape == real.shape  # read over the patch tokens, not the probe
    assert bool((readout[real] > 0).all()) and bool((readout[~real] == 0).all())
    relevance = explanation.relevance[explanation.readout_stream]
    assert bool((relevance[~real] == 0).all())
    assert bool((relevance.abs().sum(-1) > 0).all())


def test_siglip2_vision_tower_scored_on_its_head_is_read_at_the_probe():
    case = _siglip2_vision()
    explanation, _ = _explain(case)
    assert explanation.readout_stream == "pooling"
    assert torch.equal(explanation.readout["pooling"], torch.ones(2, 1))
    relevance = explanation.relevance["source"]
    assert bool((relevance[~case.mask.bool()] == 0).all())
    assert bool((relevance.abs().sum(-1) > 0).all())


def test_sam_with_a_padded_unmasked_window_is_explained_on_its_tokens_per_example():
    from model_types.builders import towers

    vision = {**towers._SAM_VISION, "window_size": 14}  # the 12×12 grid padded to one 14×14
    config = towers._tiny("sam", vision_config=vision, prompt_encoder_config=towers._SAM_PROMPT,
                          mask_decoder_config=towers._SAM_DECODER)
    case = towers._prompted_case("sam", "SamModel", config, 24)
    explanation, _ = _explain(case)
    # the padded slots are no source: the image holds the grid's 144 tokens, not 196 slots
    assert explanation.sizes["image"] == 144
    for index in range(2):
        alone, _ = _explain(case.example(index))
        for name, relevance in explanation.relevance.items():
            torch.testing.assert_close(alone.relevance[name][0], relevance[index],
                                       rtol=1e-4, atol=1e-6)
    assert bool((explanation.relevance["image"].abs().sum(-1) > 0).all())


def test_sam_whose_windows_tile_the_grid_is_explained_per_example():
    case = build("sam")
    explanation, _ = _explain(case)
    for index in range(2):
        alone, _ = _explain(case.example(index))
        for name, relevance in explanation.relevance.items():
            torch.testing.assert_close(alone.relevance[name][0], relevance[index],
                                       rtol=1e-4, atol=1e-6)
    assert all(bool((r.abs().sum(-1) > 0).all()) for r in explanation.relevance.values()
               if r.shape[-1] == 144)
