import json

import pytest

from captum_hetattn import AttentionNode, LayerGraph, Stream


def lxmert_like() -> LayerGraph:
    return LayerGraph(
        streams=["text", "image"],
        steps=[
            AttentionNode("encoder.layer.*.attention", query="text"),
            AttentionNode("encoder.r_layers.*.attention", query="image"),
            (
                AttentionNode("encoder.x_layers.*.visual_attention", query="text", key="image",
                              call_index=0),
                AttentionNode("encoder.x_layers.*.visual_attention", query="image", key="text",
                              call_index=1),
            ),
            AttentionNode("encoder.x_layers.*.lang_self_att", query="text"),
            AttentionNode("encoder.x_layers.*.visn_self_att", query="image"),
        ],
        readout_stream="text",
        name="lxmert-like",
    )


def detr_like() -> LayerGraph:
    return LayerGraph(
        streams=["image", "queries"],
        steps=[
            AttentionNode("encoder.layers.*.self_attn", query="image"),
            AttentionNode("decoder.layers.*.self_attn", query="queries"),
            AttentionNode("decoder.layers.*.encoder_attn", query="queries", key="image"),
        ],
    )


LXMERT_NAMES = (
    [f"lxmert.encoder.layer.{i}.attention" for i in range(3)]
    + [f"lxmert.encoder.r_layers.{i}.attention" for i in range(2)]
    + [
        f"lxmert.encoder.x_layers.{i}.{part}"
        for i in range(2)
        for part in ("visual_attention", "lang_self_att", "visn_self_att")
    ]
    + ["lxmert.encoder", "lxmert.pooler", "answer_head"]
)


def test_types_inferred_from_order():
    graph = lxmert_like()
    assert [node.type for node in graph.nodes] == ["A", "A", "B", "B", "C", "C"]
    assert [node.module.split(".")[-1] for node in graph.nodes] == [
        "attention", "attention", "visual_attention", "visual_attention",
        "lang_self_att", "visn_self_att",
    ]
    assert graph.resolved_readout_stream == "text"


def test_decoder_self_attention_in_a_block_with_cross_is_type_c():
    # from its second layer on, the decoder self-attention sees image-fused queries
    graph = detr_like()
    assert [node.type for node in graph.nodes] == ["A", "C", "B"]
    assert graph.resolved_readout_stream == "queries"


def test_single_modules_without_star_follow_plain_order():
    graph = LayerGraph(
        streams=["a", "b"],
        steps=[
            AttentionNode("dec.self0", query="a"),
            AttentionNode("dec.cross0", query="a", key="b"),
            AttentionNode("dec.self1", query="a"),
            AttentionNode("enc.self", query="b"),
        ],
    )
    assert [node.type for node in graph.nodes] == ["A", "B", "C", "A"]


def test_declared_types_are_kept_when_consistent():
    graph = LayerGraph(
        streams=["text", "image"],
        steps=[
            AttentionNode("t.*.attn", query="text", type="A"),
            AttentionNode("x.*.cross", query="image", key="text", type="B"),
            AttentionNode("x.*.self", query="image", type="C"),
        ],
    )
    assert [node.type for node in graph.nodes] == ["A", "B", "C"]


@pytest.mark.parametrize(
    "steps, message",
    [
        ([AttentionNode("m.*.attn", query="text", key="audio")], "unknown key stream 'audio'"),
        ([AttentionNode("m.*.attn", query="sound")], "unknown query stream 'sound'"),
        (
            [AttentionNode("m.*.attn", query="text"), AttentionNode("m.*.attn", query="image")],
            "Duplicate node 'm.*.attn'",
        ),
        (
            [AttentionNode("m.*.attn", query="text", type="B"),
             AttentionNode("n.*.attn", query="image")],
            "node 'm.*.attn' (text<-text) is declared type B",
        ),
        (
            [AttentionNode("m.*.x", query="text", key="image", type="A")],
            "node 'm.*.x' (text<-image) is declared type A but is type B",
        ),
        (
            [AttentionNode("m.*.x", query="text", key="image"),
             AttentionNode("n.*.s", query="text", type="A")],
            "node 'n.*.s' (text<-text) is declared type A but is type C",
        ),
        (
            [AttentionNode("m.*.s", query="text", type="C"),
             AttentionNode("m.*.x", query="image", key="text")],
            "node 'm.*.s' (text<-text) is declared type C but is type A",
        ),
        ([AttentionNode("m.*.attn", query="text")], "Stream(s) ['image'] are declared"),
        ([], "at least one attention node"),
    ],
)
def test_bad_specs_raise_value_error_naming_the_node(steps, message):
    with pytest.raises(ValueError) as err:
        LayerGraph(streams=["text", "image"], steps=steps)
    assert message in str(err.value)


def test_bad_node_fields():
    with pytest.raises(ValueError, match="type must be one of"):
        AttentionNode("m", query="text", type="D")
    with pytest.raises(ValueError, match="call_index"):
        AttentionNode("m", query="text", call_index=-1)
    with pytest.raises(ValueError, match="non-empty"):
        AttentionNode("", query="text")
    with pytest.raises(ValueError, match="readout stream 'video'"):
        LayerGraph(["t"], [AttentionNode("m", query="t")], readout_stream="video")
    with pytest.raises(ValueError, match="readout_token"):
        LayerGraph(["t"], [AttentionNode("m", query="t")], readout_token="first")
    with pytest.raises(TypeError, match="list of stream names"):
        LayerGraph("text", [AttentionNode("m", query="text")])
    with pytest.raises(TypeError, match="Step 0"):
        LayerGraph(["text"], ["m"])


def test_dict_and_json_round_trip():
    graph = LayerGraph(
        streams=[Stream("text", "word pieces"), "image"],
        steps=lxmert_like().steps,
        readout_stream="text",
        readout_token="last",
        name="round-trip",
    )
    data = graph.to_dict()
    assert json.loads(json.dumps(data)) == data
    again = LayerGraph.from_json(graph.to_json())
    assert again == graph
    assert again.nodes == graph.nodes
    assert isinstance(again.steps[2], tuple) and len(again.steps[2]) == 2
    assert again.streams[0].description == "word pieces"
    assert again.readout_token == "last"


def test_from_dict_rejects_unknown_fields_and_versions():
    data = lxmert_like().to_dict()
    data["steps"][0]["heads"] = 12
    with pytest.raises(ValueError, match="unknown fields \\['heads'\\]"):
        LayerGraph.from_dict(data)
    with pytest.raises(ValueError, match="format_version"):
        LayerGraph.from_dict({**lxmert_like().to_dict(), "format_version": 99})
    with pytest.raises(ValueError, match="lacks"):
        LayerGraph.from_dict({"streams": ["text"]})


def test_bind_unrolls_layer_blocks_in_execution_order():
    bound = lxmert_like().bind(LXMERT_NAMES)
    flat = [
        [(node.name.removeprefix("lxmert.encoder."), node.call_index, node.type) for node in step]
        for step in bound
    ]
    assert flat == [
        [("layer.0.attention", None, "A")],
        [("layer.1.attention", None, "A")],
        [("layer.2.attention", None, "A")],
        [("r_layers.0.attention", None, "A")],
        [("r_layers.1.attention", None, "A")],
        [("x_layers.0.visual_attention", 0, "B"), ("x_layers.0.visual_attention", 1, "B")],
        [("x_layers.0.lang_self_att", None, "C")],
        [("x_layers.0.visn_self_att", None, "C")],
        [("x_layers.1.visual_attention", 0, "B"), ("x_layers.1.visual_attention", 1, "B")],
        [("x_layers.1.lang_self_att", None, "C")],
        [("x_layers.1.visn_self_att", None, "C")],
    ]
    assert bound[5][0].query == "text" and bound[5][0].key == "image"
    assert bound[5][1].query == "image" and bound[5][1].key == "text"


def test_bind_sorts_layers_numerically_and_skips_missing_layers():
    graph = LayerGraph(
        streams=["q", "k"],
        steps=[
            AttentionNode("enc.*.attn", query="k"),
            AttentionNode("dec.*.self", query="q"),
            AttentionNode("dec.*.cross", query="q", key="k"),
        ],
    )
    names = [f"enc.{i}.attn" for i in (10, 2, 1)] + ["dec.0.self", "dec.1.self", "dec.1.cross"]
    bound = graph.bind(names)
    assert [step[0].name for step in bound] == [
        "enc.1.attn", "enc.2.attn", "enc.10.attn", "dec.0.self", "dec.1.self", "dec.1.cross",
    ]


def test_bind_errors_name_the_node():
    graph = detr_like()
    with pytest.raises(ValueError, match="node 'decoder.layers.\\*.encoder_attn'.*matches no"):
        graph.bind(["model.encoder.layers.0.self_attn", "model.decoder.layers.0.self_attn"])
    ambiguous = LayerGraph(["t"], [AttentionNode("layers.*.self_attn", query="t")])
    with pytest.raises(ValueError, match="ambiguous"):
        ambiguous.bind(["encoder.layers.0.self_attn", "decoder.layers.0.self_attn"])


def test_full_names_win_over_suffix_matches():
    graph = LayerGraph(["t"], [AttentionNode("layers.*.attn", query="t")])
    bound = graph.bind(["layers.0.attn", "other.layers.0.attn"])
    assert [step[0].name for step in bound] == ["layers.0.attn"]
