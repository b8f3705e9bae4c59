import json

import pytest
import torch
from tiny_models import BUILDERS

from captum_hetattn import AttentionNode, LayerGraph
from captum_hetattn.binding import bind_records, layer_pattern, name_streams, tower_of, trace
from captum_hetattn.capture import AttentionRecorder
from captum_hetattn.graph.inference import graph_from_flow, infer_graph
from captum_hetattn.graph.presets import PRESETS, graph_for, preset, register_preset


def record(model, inputs):
    with AttentionRecorder(model) as recorder:
        output = model(**inputs)
        first = output if isinstance(output, torch.Tensor) else output[0]
        recorder.compute_gradients(first.float().sum())
    return recorder.records


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_preset_matches_every_call_and_inference_agrees(family):
    model, inputs = BUILDERS[family]()
    graph = graph_for(model)
    names = [name for name, _ in model.named_modules()]
    records = record(model, inputs)
    bound = bind_records(graph, records, names)
    # every node of the preset matched a call, and every recorded call has a node
    bound_calls = {(c.record.name, c.record.call_index) for step in bound.steps for c in step}
    assert bound_calls == {(r.name, r.call_index) for r in records}
    assert set(bound.sizes) == set(graph.stream_names)
    inferred = infer_graph(model, **inputs)
    assert inferred.agrees_with(graph, names), (
        f"\npreset:   {graph.to_json()}\ninferred: {inferred.to_json()}"
    )


def test_every_preset_file_round_trips_and_has_a_matcher():
    for name, entry in PRESETS.items():
        assert entry.architectures or entry.model_types, name
        assert LayerGraph.from_json(entry.graph.to_json()) == entry.graph


def test_lxmert_preset_has_parallel_cross_groups():
    graph = preset("lxmert")
    assert [node.type for node in graph.nodes] == ["A", "A", "B", "B", "C", "C"]
    assert isinstance(graph.steps[2], tuple)
    assert graph.resolved_readout_stream == "text"


def test_unknown_preset_and_model_errors_list_the_known_presets():
    with pytest.raises(ValueError, match="Unknown preset 'gpt5'.*'lxmert'"):
        preset("gpt5")
    with pytest.raises(ValueError, match="No preset layer graph for Linear.*infer_graph"):
        graph_for(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError):
        graph_for("bert")


def test_register_preset_makes_graph_for_find_a_custom_model():
    model, _ = BUILDERS["torch_transformer"]()
    graph = LayerGraph(["tokens"], [AttentionNode("encoder.layers.*.self_attn", query="tokens")])
    register_preset("my_model", graph, architectures=(type(model).__name__ + "X",))
    try:
        assert preset("my_model") is graph
    finally:
        del PRESETS["my_model"]


def test_binding_errors_name_node_and_module():
    model, inputs = BUILDERS["bart"]()
    records = record(model, inputs)
    names = [name for name, _ in model.named_modules()]
    graph = graph_for(model)
    never_called = [r for r in records if "decoder.layers.1" not in r.name]
    with pytest.raises(ValueError, match="decoder.layers.1.self_attn.*never called"):
        bind_records(graph, never_called, names)
    swapped = LayerGraph.from_dict(
        {**graph.to_dict(), "streams": ["target", "source"]}
    )
    swapped = LayerGraph(
        ["source", "target"],
        [
            AttentionNode("encoder.layers.*.self_attn", query="source"),
            AttentionNode("decoder.layers.*.self_attn", query="source"),
            AttentionNode("decoder.layers.*.encoder_attn", query="target", key="source"),
        ],
    )
    with pytest.raises(ValueError, match="sees .* tokens in stream 'source'"):
        bind_records(swapped, records, names)
    as_self = LayerGraph(
        ["target"], [AttentionNode("decoder.layers.*.encoder_attn", query="target")]
    )
    with pytest.raises(ValueError, match="self-attention node but the recorded call is cross"):
        bind_records(as_self, records, names)
    unmatched = LayerGraph(["text"], [AttentionNode("encoder.block.*.attention", query="text")])
    with pytest.raises(ValueError, match="'encoder.block.\\*.attention'.*matches no module"):
        bind_records(unmatched, records, names)


def test_inference_helpers():
    assert layer_pattern("encoder.block.3.layer.0.SelfAttention") == (
        "encoder.block.*.layer.0.SelfAttention"
    )
    assert tower_of("model.decoder.layers.11.encoder_attn") == "model.decoder.layers"
    assert tower_of("encoder.cross_attention.attention.self") == (
        "encoder.cross_attention.attention.self"
    )


def test_inferred_graph_of_an_unknown_model_names_streams_by_keywords():
    model, inputs = BUILDERS["bart"]()
    with AttentionRecorder(model, record_io=True) as recorder:
        model(**inputs)
        flow = trace(recorder, list(inputs.values()))
        records = recorder.records
        towers = {c.query: tower_of(records[i].name) for i, c in enumerate(flow.calls)}
        # as if no preset existed
        graph = graph_from_flow(records, flow, name_streams(flow, {}, [], towers))
    assert graph.stream_names == ("source", "target")
    assert [node.type for node in graph.nodes] == ["A", "C", "B"]
    assert graph.readout_token == "last"  # the decoder's self-attention is causal
    spec = json.loads(graph.to_json())
    assert spec["steps"][2]["key"] == "source"


def test_pinned_streams_name_the_towers():
    model, inputs = BUILDERS["clip"]()
    pinned = infer_graph(model, **inputs, streams={"vision_model": "pixels", "text_model": "words"})
    assert set(pinned.stream_names) == {"pixels", "words"}


def _ved_bert():
    import transformers as tf

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    encoder = tf.ViTConfig(**small, image_size=16, patch_size=8)
    decoder = tf.BertConfig(**small, vocab_size=40, is_decoder=True, add_cross_attention=True)
    config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = tf.VisionEncoderDecoderModel(config=config).eval()
    return model, dict(pixel_values=torch.randn(2, 3, 16, 16),
                       decoder_input_ids=torch.randint(1, 40, (2, 3)))


def _blip(head: str):
    import transformers as tf

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    config = tf.BlipConfig(
        text_config=dict(**small, vocab_size=40),
        vision_config=dict(**small, image_size=16, patch_size=8, initializer_range=0.02),
    )
    model = getattr(tf, head)(config).eval()
    ids = torch.randint(1, 40, (2, 5))
    inputs = dict(input_ids=ids, pixel_values=torch.randn(2, 3, 16, 16))
    if head == "BlipForQuestionAnswering":
        inputs["decoder_input_ids"] = torch.randint(1, 40, (2, 3))
    return model, inputs


@pytest.mark.parametrize(
    "build, preset_name",
    [
        (_ved_bert, "vision_encoder_decoder_bert"),
        (lambda: _blip("BlipForQuestionAnswering"), "blip_vqa"),
        (lambda: _blip("BlipForConditionalGeneration"), "blip_caption"),
    ],
    ids=["ved-bert", "blip-vqa", "blip-caption"],
)
def test_presets_beyond_the_tiny_model_families(build, preset_name):
    model, inputs = build()
    graph = graph_for(model)
    assert graph.name == preset_name
    names = [name for name, _ in model.named_modules()]
    records = record(model, inputs)
    bound = bind_records(graph, records, names)
    bound_calls = {(c.record.name, c.record.call_index) for step in bound.steps for c in step}
    assert bound_calls == {(r.name, r.call_index) for r in records}
    inferred = infer_graph(model, **inputs)
    assert inferred.agrees_with(graph, names)
