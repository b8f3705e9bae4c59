r"""Faults and bad input: graphs that contradict the recording, malformed graph specs, targets
and inputs checked before the forward, frozen and training-mode models, and nothing silent.

Every error or warning must name its culprit (node, module, key, target, input).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers as tf
from arch_zoo import ARCHS
from tiny_models import BUILDERS

from captum_hetattn import (
    AttentionNode,
    AttentionRollout,
    Contrast,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    LayerGraph,
    RawAttention,
)
from captum_hetattn.graph import Junction

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
LAYER = "encoder.layer.{}.attention.self"


@pytest.fixture(scope="module")
def bert():
    """A BERT classifier on token ids (3 labels), batch of 2."""
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(
        tf.BertConfig(**SMALL, vocab_size=50, num_labels=3)
    ).eval()
    ids = torch.randint(5, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    return model, ids


@pytest.fixture(scope="module")
def interleaved():
    arch = ARCHS["interleaved_towers"]()
    return arch.model, arch.inputs


def _logits(model):
    return lambda ids: model(input_ids=ids).logits


def _graph(*modules: str) -> LayerGraph:
    return LayerGraph(["text"], [AttentionNode(m, query="text") for m in modules])


def _caught(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


# ------------------------------------------------------------------ graphs vs the recording
def test_a_module_bound_by_two_nodes_is_an_error_naming_both(bert):
    model, ids = bert
    twice = _graph("layer.*.attention.self", "bert." + LAYER.format(0))
    message = (r"module 'bert\.encoder\.layer\.0\.attention\.self' is bound by two nodes, "
               r"node 'layer\.\*\.attention\.self'.* and node 'bert\.encoder\.layer\.0\.attention"
               r"\.self'.*applied twice")
    explainer = HeterogenousAttentionAttribution(_logits(model), model=model, graph=twice)
    with pytest.raises(ValueError, match=message):
        explainer.explain(ids, target=0)
    with pytest.raises(ValueError, match=message):
        twice.bind([name for name, _ in model.named_modules()])


def test_nodes_listed_against_the_call_order(bert):
    model, ids = bert
    swapped = _graph(LAYER.format(1), LAYER.format(0))
    explainer = HeterogenousAttentionAttribution(_logits(model), model=model, graph=swapped)
    with pytest.raises(ValueError, match=r"node 'encoder\.layer\.0\.attention\.self'.* first ran "
                                         r".*before node 'encoder\.layer\.1\.attention\.self'.*"
                                         r"lists it after; they share a stream"):
        explainer.explain(ids, target=0)

    # towers that share no stream: the order cannot change the result, so a warning
    arch = ARCHS["clip"]()
    towers = LayerGraph(["text", "image"], [
        AttentionNode("text_model.encoder.layers.*.self_attn", query="text"),
        AttentionNode("vision_model.encoder.layers.*.self_attn", query="image"),
    ])
    listed = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model, graph=towers)
    args = dict(target=None, additional_forward_args=arch.additional_forward_args)
    with pytest.warns(UserWarning, match=r"lists node 'text_model.*before node 'vision_model.*"
                                         r"ran the latter first.*share no stream"):
        out = listed.explain(arch.inputs, **args)
    reference = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model)
    expected = reference.explain(arch.inputs, **args)
    for source in ("text", "image"):
        torch.testing.assert_close(out.relevance[source], expected.relevance[source])
    assert not [m for m in _caught(lambda: listed.explain(arch.inputs, **args)) if "lists" in m]


def test_calls_left_out_warn_once_naming_the_first_and_how_many(interleaved):
    model, inputs = interleaved
    text_only = LayerGraph(
        ["text"], [AttentionNode("text_layers.*.attention", query="text")], name="text-only"
    )
    explainer = HeterogenousAttentionAttribution(model, graph=text_only)
    first = _caught(lambda: explainer.explain(inputs, target=1))
    left_out = [m for m in first if "has no node" in m]
    assert left_out == [
        "4 attention module(s) ran but the layer graph 'text-only' has no node for them (first: "
        "'image_layers.0.attention'), so they are left out of the explanation; add nodes (or "
        "pass graph=None to infer the graph)"
    ]
    assert not [m for m in _caught(lambda: explainer.explain(inputs, target=1))
                if "has no node" in m]


def test_a_source_nothing_connects_is_named_once(interleaved):
    model, inputs = interleaved
    text_only = LayerGraph(["text"], [AttentionNode("text_layers.*.attention", query="text")])
    explainer = HeterogenousAttentionAttribution(model, graph=text_only)
    first = [m for m in _caught(lambda: explainer.explain(inputs, target=1)) if "zero" in m]
    assert len(first) == 1
    assert "source 'image' (stream 'image') gets zero relevance" in first[0]
    assert "readout stream(s) ['text']" in first[0]
    assert not [m for m in _caught(lambda: explainer.explain(inputs, target=1)) if "zero" in m]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(readuot=d.pop("readout")),
     r"unknown fields \['readuot'\] \(at 'readuot'.*did you mean 'readout'\?"),
    (lambda d: d["readout"].update(tokn=d["readout"].pop("token")),
     r"unknown fields \['tokn'\] \(at 'readout\.tokn'.*did you mean 'token'\?"),
    (lambda d: d["steps"][1].update(modul=d["steps"][1].pop("module")),
     r"unknown fields \['modul'\] \(at 'steps\[1\]\.modul'.*did you mean 'module'\?"),
    (lambda d: d["streams"].__setitem__(0, {"name": "text", "descripton": "words"}),
     r"unknown fields \['descripton'\] \(at 'streams\[0\]\.descripton'.*did you mean "
     r"'description'\?"),
    (lambda d: d["junctions"][0].update(placeholdr=d["junctions"][0].pop("placeholder")),
     r"unknown fields \['placeholdr'\] \(at 'junctions\[0\]\.placeholdr'.*did you mean "
     r"'placeholder'\?"),
])
def test_unknown_keys_in_a_graph_spec_name_the_key_its_path_and_the_closest(edit, message):
    graph = LayerGraph(
        ["text", "image"],
        [AttentionNode("vision.layers.*.attn", query="image"),
         AttentionNode("lm.layers.*.attn", query="text")],
        readout_stream="text", readout_token="last",
        junctions=[Junction("text", "image", kind="splice", params={"placeholder": 7})],
    )
    data = graph.to_dict()
    assert LayerGraph.from_dict(data) == graph
    edit(data)
    with pytest.raises(ValueError, match=message):
        LayerGraph.from_dict(data)
    with pytest.raises(ValueError, match=r"junction 'image'->'text' \(splice\) has unknown "
                                         r"fields \['placeholdr'\] \(at 'params\.placeholdr'"
                                         r".*did you mean 'placeholder'\?"):
        Junction("text", "image", kind="splice", params={"placeholdr": 7})


def test_readout_indices_must_be_integers(bert):
    model, ids = bert
    explainer = HeterogenousAttentionAttribution(_logits(model), model=model)
    for readout, what in [(2.9, "readout must be an int.*float 2.9"),
                          (True, "readout must be an int.*bool True"),
                          ({"text": 2.9}, r"readout\['text'\] must be an int.*float 2.9"),
                          (torch.tensor([2.9, 1.0]), "readout is a torch.float32 tensor")]:
        with pytest.raises(TypeError, match=what):
            explainer.explain(ids, target=0, readout=readout)
    weights = torch.zeros(2, 6)
    weights[:, 2] = 1.0  # (B, n) float weights stay valid and equal the integer readout
    torch.testing.assert_close(
        explainer.explain(ids, target=0, readout=weights).relevance["text"],
        explainer.explain(ids, target=0, readout=2).relevance["text"],
    )
    data = _graph(LAYER.format("*")).to_dict()
    for token in (2.9, True):
        data["readout"]["token"] = token
        with pytest.raises(ValueError, match=f"readout_token must be an int or 'last', got "
                                             f"{token}"):
            LayerGraph.from_dict(data)


# ------------------------------------------------------------------ targets and inputs
@pytest.mark.parametrize(("inputs", "target", "error", "message"), [
    (lambda ids: ids[:0], 0, ValueError, r"input 0 has an empty batch \(shape \(0, 6\)\)"),
    (lambda ids: ids[0], 0, ValueError, r"input 0 of shape \(6,\) has no batch dimension"),
    (lambda ids: ids[0, 0], 0, ValueError, r"input 0 is a 0-d tensor"),
    (lambda ids: (ids, "mask"), 0, TypeError, r"input 1 is a str, not a tensor"),
    (lambda ids: ids, "1", TypeError, r"target must be an int.*got str '1'"),
    (lambda ids: ids, 1.0, TypeError, r"target must be an int.*got float 1.0"),
    (lambda ids: ids, True, TypeError, r"target must be an int.*got bool True"),
    (lambda ids: ids, torch.tensor([1.0, 0.0]), TypeError,
     r"target is a torch.float32 tensor; target indices must be integers"),
    (lambda ids: ids, torch.tensor([[1], [0]]), ValueError, r"target tensor has shape \(2, 1\)"),
    (lambda ids: ids, [0, 1.0], TypeError, r"target list holds float, int"),
    (lambda ids: ids, (0, "a"), TypeError, r"target \(0, 'a'\) must be a non-empty tuple"),
    (lambda ids: ids, [0, -1], ValueError, r"target for example 1 is -1: .*gathered"),
    (lambda ids: ids, torch.tensor([-2, 0]), ValueError, r"target for example 0 is -2"),
])
def test_targets_and_inputs_are_checked_before_the_forward(bert, inputs, target, error, message):
    model, ids = bert
    calls = []

    def forward(*args):
        calls.append(1)
        return model(input_ids=args[0]).logits

    for method in (HeterogenousAttentionAttribution, AttentionRollout):
        explainer = method(forward, model=model)
        with pytest.raises(error, match=message):
            explainer.attribute(inputs(ids), target=target)
        with pytest.raises(error, match=message):
            explainer.explain(inputs(ids), target=target)
    assert not calls


def test_out_of_range_targets_and_every_valid_form(bert):
    model, ids = bert
    explainer = HeterogenousAttentionAttribution(_logits(model), model=model)
    with pytest.raises(ValueError, match=r"target index \(dim 1\) 3 is out of range.*\(2, 3\)"):
        explainer.explain(ids, target=[0, 3])
    with pytest.raises(ValueError, match=r"target index \(dim 1\) -4 is out of range"):
        explainer.explain(ids, target=-4)
    with pytest.raises(TypeError, match=r"Contrast\.b must be an int.*got float 2.5"):
        explainer.explain(ids, objective=Contrast(0, 2.5))
    reference = explainer.explain(ids, target=[2, 2]).relevance["text"]
    for same in (2, -1, (2,), torch.tensor(2), torch.tensor([2, 2]), [(2,), (-1,)],
                 torch.tensor([[2]])[0]):
        torch.testing.assert_close(explainer.explain(ids, target=same).relevance["text"],
                                   reference)
    one = explainer.explain(ids[:1], target=torch.tensor([[2]])).relevance["text"]
    torch.testing.assert_close(one, reference[:1])


def test_a_model_on_the_meta_device_is_named():
    with torch.device("meta"):
        model = tf.BertForSequenceClassification(tf.BertConfig(**SMALL, vocab_size=50))
    explainer = HeterogenousAttentionAttribution(_logits(model), model=model)
    with pytest.raises(ValueError, match=r"BertForSequenceClassification is on the 'meta' device "
                                         r"\(first: 'bert\.embeddings\.word_embeddings\.weight'\)"):
        explainer.attribute(torch.randint(5, 50, (2, 6)), target=0)


# ------------------------------------------------------------------ frozen and training models
@pytest.mark.parametrize("method", [HeterogenousAttentionAttribution,
                                    GenericAttentionExplainability, AttentionRollout,
                                    RawAttention])
def test_a_frozen_model_on_token_ids_equals_the_unfrozen_one(method):
    arch = ARCHS["lxmert"]()  # token ids and float region features
    model, args = arch.model, dict(target=arch.target,
                                   additional_forward_args=arch.additional_forward_args)
    explainer = method(arch.forward_func, model=model)
    unfrozen = explainer.attribute(arch.inputs, **args)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    frozen = explainer.attribute(arch.inputs, **args)
    assert all(p.grad is None for p in model.parameters())
    for a, b in zip(frozen, unfrozen, strict=True):
        torch.testing.assert_close(a, b)
    assert frozen[0].abs().sum() > 0 and frozen[1].abs().sum() > 0


def test_a_frozen_model_on_float_inputs_is_explained():
    model, inputs = BUILDERS["vit"]()
    forward = lambda pixels: model(pixel_values=pixels).pooler_output  # noqa: E731
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    unfrozen = explainer.attribute(inputs["pixel_values"], target=0)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    torch.testing.assert_close(explainer.attribute(inputs["pixel_values"], target=0), unfrozen)


def test_train_mode_with_dropout_warns_once_and_keeps_the_mode(bert):
    model, ids = copy.deepcopy(bert[0]), bert[1]
    model.train()
    explainer = HeterogenousAttentionAttribution(_logits(model), model=model)
    first = [m for m in _caught(lambda: explainer.explain(ids, target=0)) if "train()" in m]
    assert len(first) == 1
    assert ("BertForSequenceClassification is in train() mode with dropout active (module "
            "'bert.embeddings.dropout', p=0.1)") in first[0] and "model.eval()" in first[0]
    assert model.training and model.bert.encoder.layer[0].attention.self.dropout.training
    assert not [m for m in _caught(lambda: explainer.explain(ids, target=0)) if "train()" in m]

    model.eval()  # eval mode, or training without any dropout: nothing to say
    assert not [m for m in _caught(lambda: HeterogenousAttentionAttribution(
        _logits(model), model=model).explain(ids, target=0)) if "train()" in m]
    torch.manual_seed(0)
    no_dropout = tf.BertForSequenceClassification(tf.BertConfig(
        **SMALL, vocab_size=50, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )).train()
    assert not [m for m in _caught(lambda: HeterogenousAttentionAttribution(
        _logits(no_dropout), model=no_dropout).explain(ids, target=0)) if "train()" in m]


# ------------------------------------------------------------------ nothing silent
def test_a_connected_call_without_gradient_is_named_once(bert):
    model = copy.deepcopy(bert[0])
    ids = bert[1]
    with torch.no_grad():  # layer 0's attention output is multiplied by zero: no gradient
        model.bert.encoder.layer[0].attention.output.dense.weight.zero_()
    explainer = HeterogenousAttentionAttribution(_logits(model), model=model)
    first = [m for m in _caught(lambda: explainer.explain(ids, target=0)) if "no gradient" in m]
    assert first == [
        "attention module 'bert.encoder.layer.0.attention.self' got no gradient from the "
        "objective: under the gradient correction its maps count as zero, although the graph "
        "connects it to the readout (a score read before it ran, e.g. from hidden_states[-2] or "
        "an intermediate layer, which is explained where it reads; a branch detached from the "
        "output; or value vectors that are all zero?); correction='none' keeps them"
    ]
    assert not [m for m in _caught(lambda: explainer.explain(ids, target=0)) if "no gradient" in m]
    fresh = HeterogenousAttentionAttribution(_logits(model), model=model)
    assert not [m for m in _caught(lambda: fresh.explain(ids, target=0, correction="none"))
                if "no gradient" in m]
    # an intact model says nothing
    intact = HeterogenousAttentionAttribution(_logits(bert[0]), model=bert[0])
    assert not [m for m in _caught(lambda: intact.explain(ids, target=0)) if "no gradient" in m]
