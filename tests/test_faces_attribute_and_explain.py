r"""``attribute_and_explain``: the relevance laid out like the inputs and the token-level
explanation from one run equal ``attribute()`` and ``explain()`` called separately (a text
model, an image model read through a patch grid, the two-stream ``shapes_vqa``), tuple in →
tuple out; ``hf`` gets both through it."""

from dataclasses import fields

import pytest
import torch
from torch import Tensor

from captum_hetattn import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    PatchGrid,
)
from captum_hetattn.engine.result import Explanation

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(ours, theirs, where: str = "") -> None:
    """Equal values, recursively (tensors up to float rounding; graphs by their JSON)."""
    if isinstance(ours, Tensor):
        assert isinstance(theirs, Tensor), where
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, where
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7, msg=where)
    elif isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            _same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(ours, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif hasattr(ours, "to_dict"):  # LayerGraph
        assert ours.to_dict() == theirs.to_dict(), where
    elif hasattr(ours, "__dataclass_fields__"):
        assert type(ours) is type(theirs), where
        for f in fields(ours):
            _same(getattr(ours, f.name), getattr(theirs, f.name), f"{where}.{f.name}")
    else:
        assert ours == theirs, where


def _check(explainer, inputs, extra=None, **options) -> tuple:
    """Both from one run, each against its own separate call; returns the pair."""
    explain_only = {k: options.pop(k) for k in ("return_maps",) if k in options}
    attributions, explanation = explainer.attribute_and_explain(inputs, **options,
                                                                **explain_only,
                                                                additional_forward_args=extra)
    alone = explainer.attribute(inputs, additional_forward_args=extra, **options)
    told = explainer.explain(inputs, additional_forward_args=extra, **options, **explain_only)
    assert isinstance(explanation, Explanation)
    assert type(attributions) is type(alone)  # tensor in → tensor out, tuple in → tuple out
    _same(attributions, alone, "attributions")
    _same(explanation, told, "explanation")
    return attributions, explanation


# ------------------------------------------------------------------ text (BERT)
def test_text_model_tensor_and_tuple(bert):
    model, forward, ids, mask = bert
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    attributions, explanation = _check(explainer, ids, (mask,), target=1)
    assert isinstance(attributions, Tensor) and attributions.shape == ids.shape
    assert attributions.dtype == torch.float32 and attributions.abs().sum() > 0
    # the ids' relevance is the text source's token relevance (one token per id)
    (source,) = explanation.relevance
    torch.testing.assert_close(attributions, explanation.relevance[source])
    (one,), _ = _check(explainer, (ids,), (mask,), target=1)  # a 1-tuple stays a tuple
    torch.testing.assert_close(one, attributions)


def test_text_model_several_targets_and_options(bert):
    model, forward, ids, mask = bert
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    attributions, explanation = _check(explainer, ids, (mask,), targets=[0, 2],
                                       correction="full", include_own=True)
    assert attributions.shape == (ids.shape[0], 2, ids.shape[1])
    (relevance,) = explanation.relevance.values()
    assert relevance.shape == (ids.shape[0], 2, ids.shape[1])
    # other methods share the code path
    _check(GenericAttentionExplainability(forward, model=model), ids, (mask,), target=0)
    _check(AttentionRollout(forward, model=model), ids, (mask,), target=0)


# ------------------------------------------------------------------ image (ViT, patch grid)
@pytest.fixture(scope="module")
def vit():
    import transformers as tf

    torch.manual_seed(0)
    config = tf.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=37, num_labels=4)
    model = tf.ViTForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    return model, (lambda p: model(pixel_values=p).logits), pixels


def test_image_model_patch_grid_with_maps(vit):
    model, forward, pixels = vit
    traced = HeterogenousAttentionAttribution(forward, model=model)
    by_grid = HeterogenousAttentionAttribution(
        forward, model=model, input_mappings=[PatchGrid(interpolation="nearest")])
    for explainer in (traced, by_grid):
        attributions, explanation = _check(explainer, pixels, target=2, return_maps=True)
        assert attributions.shape == pixels.shape and attributions.abs().sum() > 0
        assert explanation.maps and explanation.call_maps  # return_maps reaches the run
    # nearest-neighbour patch grid = the traced rows: every pixel of a patch gets its token
    grid, _ = by_grid.attribute_and_explain(pixels, target=2)
    torch.testing.assert_close(grid, traced.attribute(pixels, target=2))


# ------------------------------------------------------------------ two streams (shapes_vqa)
def test_two_stream_model_tuple_in_tuple_out():
    from captum_hetattn.zoo import load

    zoo = load("shapes_vqa")
    batch = zoo.collate(zoo.make_examples(3, 5))
    explainer = HeterogenousAttentionAttribution(
        zoo.forward_func, model=zoo.model, graph=zoo.graph, input_mappings=zoo.input_mappings)
    attributions, explanation = _check(explainer, batch.inputs, batch.additional_forward_args,
                                       target=batch.targets, return_maps=True)
    assert isinstance(attributions, tuple) and len(attributions) == len(batch.inputs)
    for attribution, tensor in zip(attributions, batch.inputs, strict=True):
        assert attribution.shape == tensor.shape
    assert len(explanation.relevance) == 2  # text and image kept apart
    # the traced mappings too (no input_mappings given)
    _check(HeterogenousAttentionAttribution(zoo.forward_func, model=zoo.model, graph=zoo.graph),
           batch.inputs, batch.additional_forward_args, target=batch.targets)


# ------------------------------------------------------------------ hf uses the public face
def test_hf_explain_and_map_is_attribute_and_explain(bert):
    from captum_hetattn.hf.inputs import Encoded, explain_and_map

    model, forward, ids, mask = bert
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    encoded = Encoded(["input_ids", "attention_mask"], [ids, mask], 1)
    explanation, (laid,) = explain_and_map(explainer, encoded, target=1, return_maps=True)
    attributions, told = explainer.attribute_and_explain(ids, 1, (mask,), return_maps=True)
    _same(explanation, told)
    torch.testing.assert_close(laid, attributions)
    with pytest.raises(TypeError, match=r"unknown options \['colour'\]"):
        explain_and_map(explainer, encoded, target=1, colour="red")
