"""Many targets from one forward (``targets=[...]``) equal one call per target."""

import pytest
import torch

from captum_hetattn import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    generation_targets,
)
from captum_hetattn.zoo import load


def _loop_equals_batch(explainer, inputs, targets, extra=None, **options):
    many = explainer.explain(inputs, targets=targets, additional_forward_args=extra, **options)
    for k, target in enumerate(targets):
        one = explainer.explain(inputs, target=target, additional_forward_args=extra, **options)
        for source, value in one.relevance.items():
            torch.testing.assert_close(many.relevance[source][:, k], value, atol=1e-5,
                                       rtol=1e-4)
        torch.testing.assert_close(many.readout_token[:, k], one.readout_token)
    return many


@pytest.mark.parametrize("capture", ["flash", "eager"])
def test_decoder_positions_of_a_seq2seq_model(capture):
    zoo = load("reverse_seq2seq")
    batch = zoo.collate(zoo.make_examples(2, 0))
    explainer = HeterogenousAttentionAttribution(zoo.forward_func, model=zoo.model,
                                                 graph=zoo.graph, capture=capture)
    targets = [(position, 5 + position) for position in range(4)]
    many = _loop_equals_batch(explainer, batch.inputs, targets,
                              batch.additional_forward_args)
    assert many.relevance["source"].shape[:2] == (2, 4)
    attributions = explainer.attribute(batch.inputs, targets=targets,
                                       additional_forward_args=batch.additional_forward_args)
    inputs = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)
    attributions = attributions if isinstance(attributions, tuple) else (attributions,)
    for tensor, attribution in zip(inputs, attributions, strict=True):
        assert attribution.shape == (tensor.shape[0], 4, *tensor.shape[1:])
    single = explainer.attribute(batch.inputs, target=targets[2],
                                 additional_forward_args=batch.additional_forward_args)
    single = single if isinstance(single, tuple) else (single,)
    torch.testing.assert_close(attributions[0][:, 2], single[0])


def test_detr_queries_windows_and_baselines():
    """DETR queries (query, class), Swin's windowed layout and the baselines' rules."""
    import transformers as tf
    from tiny_models import BUILDERS

    model, inputs = BUILDERS["detr"]()
    detector = tf.DetrForObjectDetection(model.config).eval()
    detector.model.load_state_dict(model.state_dict())
    targets = [(query, 1) for query in range(3)]
    for method in (HeterogenousAttentionAttribution, GenericAttentionExplainability,
                   AttentionRollout):
        explainer = method(lambda pixels: detector(pixel_values=pixels).logits, model=detector)
        many = _loop_equals_batch(explainer, inputs["pixel_values"], targets)
        assert many.readout_token.tolist() == [[0, 1, 2], [0, 1, 2]]
    from test_layouts import _swin

    model, pixels = _swin()
    explainer = HeterogenousAttentionAttribution(lambda x: model(pixel_values=x).logits,
                                                 model=model)
    _loop_equals_batch(explainer, pixels, [0, 1, 2], correction="full")


def test_value_weighting_and_generation_targets():
    zoo = load("shapes_vqa")
    batch = zoo.collate(zoo.make_examples(2, 3))
    explainer = HeterogenousAttentionAttribution(zoo.forward_func, model=zoo.model,
                                                 graph=zoo.graph,
                                                 input_mappings=zoo.input_mappings)
    _loop_equals_batch(explainer, batch.inputs, [0, 1, [2, 3]],
                       batch.additional_forward_args, weighting="value")
    generated = torch.tensor([[1, 7, 8, 9], [1, 4, 5, 6]])
    assert generation_targets(generated, start=2) == [[(1, 8), (1, 5)], [(2, 9), (2, 6)]]
    with pytest.raises(ValueError, match="leaves no generated token"):
        generation_targets(generated, start=4)


def test_bad_targets_are_named():
    zoo = load("shapes_vqa")
    batch = zoo.collate(zoo.make_examples(1, 0))
    explainer = HeterogenousAttentionAttribution(zoo.forward_func, model=zoo.model,
                                                 graph=zoo.graph)
    args = dict(additional_forward_args=batch.additional_forward_args)
    with pytest.raises(ValueError, match="not both"):
        explainer.explain(batch.inputs, target=0, targets=[1], **args)
    with pytest.raises(ValueError, match="targets is empty"):
        explainer.explain(batch.inputs, targets=[], **args)
    with pytest.raises(TypeError, match="list of targets"):
        explainer.explain(batch.inputs, targets=3, **args)
    with pytest.raises(ValueError, match=r"targets\[1\]"):
        explainer.explain(batch.inputs, targets=[0, 10**6], **args)
    with pytest.raises(ValueError, match="return_maps"):
        explainer.explain(batch.inputs, targets=[0, 1], return_maps=True, **args)
