r"""The pure pieces of the binding and graph rooms: one test for cross-attention, one binder
behind ``LayerGraph.bind``, one towers dict, one size check."""

from types import SimpleNamespace

import pytest

from captum_hetattn.binding import bind_graph, stream_towers
from captum_hetattn.binding.streams import check_sizes
from captum_hetattn.graph import AttentionNode, BoundNode, LayerGraph, is_cross

NAMES = [f"x_layers.{i}.{part}" for i in range(2) for part in ("cross", "self")]


def _graph() -> LayerGraph:
    return LayerGraph(
        ["text", "image"],
        [(AttentionNode("x_layers.*.cross", query="text", key="image", call_index=0),
          AttentionNode("x_layers.*.cross", query="image", key="text", call_index=1)),
         AttentionNode("x_layers.*.self", query="text")],
    )


def test_nodes_and_bound_nodes_decide_cross_attention_by_one_rule():
    cross, own = AttentionNode("a", query="text", key="image"), AttentionNode("b", query="text")
    assert cross.is_cross and not own.is_cross
    assert is_cross("text", "image") and not is_cross("text", "text")
    assert BoundNode("a", None, "text", "image", "B", cross).is_cross


def test_layer_graph_bind_is_the_binder_unrolling_the_graph():
    graph = _graph()
    steps = graph.bind(NAMES)
    assert steps == bind_graph(graph, NAMES)
    # a parallel group per layer, never across layers
    assert [[(n.name, n.call_index, n.type) for n in step] for step in steps] == [
        [("x_layers.0.cross", 0, "B"), ("x_layers.0.cross", 1, "B")],
        [("x_layers.0.self", None, "C")],
        [("x_layers.1.cross", 0, "B"), ("x_layers.1.cross", 1, "B")],
        [("x_layers.1.self", None, "C")],
    ]


def test_stream_towers_name_each_stream_after_the_module_path_of_its_calls():
    records = [SimpleNamespace(name=n) for n in ("enc.layers.0.attn", "dec.layers.0.attn",
                                                  "dec.layers.1.attn")]
    flow = SimpleNamespace(calls=[SimpleNamespace(query=0), SimpleNamespace(query=1),
                                  SimpleNamespace(query=1)])
    assert stream_towers(records, flow) == {0: "enc.layers", 1: "dec.layers"}


def test_size_checks_name_the_call_and_the_stream():
    node = AttentionNode("m", query="text")
    bound = [(0, BoundNode("m", None, "text", "text", "A", node)),
             (1, BoundNode("m2", None, "text", "text", "A", node))]
    records = [SimpleNamespace(name="m", n_query=4, n_key=4),
               SimpleNamespace(name="m2", n_query=5, n_key=5)]
    sizes: dict[str, int] = {}
    with pytest.raises(ValueError, match="sees 5 tokens in stream 'text', but .* saw 4"):
        check_sizes(records, bound, lambda _, n: (n.query, n.key), sizes)
    with pytest.raises(ValueError, match="module 'm2' sees 5 tokens in stream 'text', which has 4"):
        check_sizes(records, bound, lambda _, n: (n.query, n.key), {"text": 4})
