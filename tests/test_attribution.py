import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
from captum.attr import IntegratedGradients, NoiseTunnel  # noqa: E402
from captum.attr import visualization as viz  # noqa: E402
from captum.metrics import infidelity, sensitivity_max  # noqa: E402

from captum_hetattn import (  # noqa: E402
    AttentionRollout,
    Contrast,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    RawAttention,
)
from captum_hetattn.mapping import NoAttribution, PatchGrid, Tokens, to_heatmap  # noqa: E402

METHODS = [
    HeterogenousAttentionAttribution,
    GenericAttentionExplainability,
    AttentionRollout,
    RawAttention,
]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def close(a, b, atol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol), (a - b).abs().max()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    config = tf.ViTConfig(**SMALL, image_size=16, patch_size=4, num_labels=3)
    model = tf.ViTForImageClassification(config).eval()
    return model, (lambda pixels: model(pixel_values=pixels).logits), torch.randn(2, 3, 16, 16)


@pytest.fixture(scope="module")
def lxmert():
    torch.manual_seed(0)
    config = tf.LxmertConfig(
        hidden_size=32, num_attention_heads=2, intermediate_size=37, l_layers=2, x_layers=2,
        r_layers=1, visual_feat_dim=8, visual_pos_dim=4, num_qa_labels=4, vocab_size=50,
    )
    model = tf.LxmertForQuestionAnswering(config).eval()
    gen = torch.Generator().manual_seed(2)
    inputs = (
        torch.randint(5, 50, (2, 6), generator=gen),
        torch.randn(2, 5, 8, generator=gen),
        torch.rand(2, 5, 4, generator=gen),
    )

    def forward(ids, feats, boxes):
        return model(input_ids=ids, visual_feats=feats, visual_pos=boxes).question_answering_score

    return model, forward, inputs


def no_hooks_left(model):
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


# ------------------------------------------------------------------ Captum interoperability
@pytest.mark.parametrize("method", METHODS)
def test_captum_contract_and_noise_tunnel(method, vit):
    model, forward, pixels = vit
    explainer = method(forward, model=model)
    single = explainer.attribute(pixels, target=1)
    assert isinstance(single, torch.Tensor) and single.shape == pixels.shape
    assert single.is_contiguous() and single.dtype == torch.float32
    as_tuple = explainer.attribute((pixels,), target=1)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    close(as_tuple[0], single)
    smoothed = NoiseTunnel(explainer).attribute(
        pixels, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, target=1
    )
    assert smoothed.shape == pixels.shape and torch.isfinite(smoothed).all()


@pytest.mark.parametrize("method", METHODS)
def test_captum_metrics_run_on_our_output(method, vit):
    model, forward, pixels = vit
    explainer = method(forward, model=model)
    attributions = explainer.attribute(pixels, target=2)

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.05
        return noise, inputs - noise

    score = infidelity(forward, perturb, pixels, attributions, target=2, normalize=True)
    assert score.shape == (2,) and torch.isfinite(score).all()
    sensitivity = sensitivity_max(
        explainer.attribute, pixels, target=2, n_perturb_samples=2, perturb_radius=0.01
    )
    assert sensitivity.shape == (2,) and torch.isfinite(sensitivity).all()


def test_beside_integrated_gradients_and_in_captum_visualization(vit):
    model, forward, pixels = vit
    ours = HeterogenousAttentionAttribution(forward, model=model).attribute(pixels, target=0)
    integrated = IntegratedGradients(forward).attribute(pixels, target=0, n_steps=8)
    assert ours.shape == integrated.shape == pixels.shape
    heat = to_heatmap(ours)
    assert heat.shape == (16, 16, 1) and heat.dtype == np.float32
    image = pixels[0].permute(1, 2, 0).sigmoid().numpy()
    figure, _ = viz.visualize_image_attr(
        heat, image, method="blended_heat_map", sign="positive", use_pyplot=False
    )
    assert figure is not None


def test_text_visualization_record(bert):
    model, forward, ids, mask = bert
    attributions = HeterogenousAttentionAttribution(forward, model=model).attribute(
        ids, target=1, additional_forward_args=(mask,)
    )
    words = attributions[0].clone()
    words[0] = 0  # the readout token's own identity share
    words = (words / words.abs().max()).clamp(-1, 1)
    record = viz.VisualizationDataRecord(
        words, 0.9, "1", "1", "1", words.sum(), [f"t{i}" for i in range(7)], 0.0
    )
    html = viz.visualize_text([record])
    assert "t3" in html.data


# ------------------------------------------------------------------ batching and padding
@pytest.mark.parametrize("method", METHODS)
def test_batch_of_n_equals_n_single_calls(method, lxmert):
    model, forward, inputs = lxmert
    explainer = method(forward, model=model)
    batched = explainer.attribute(inputs, target=1)
    for i in range(2):
        single = explainer.attribute(tuple(t[i : i + 1] for t in inputs), target=1)
        for b, s in zip(batched, single, strict=True):
            close(b[i : i + 1], s)


@pytest.mark.parametrize("method", METHODS)
def test_padding_gets_zero_and_real_tokens_equal_the_unpadded_run(method, bert):
    model, forward, ids, mask = bert
    explainer = method(forward, model=model)
    padded = explainer.attribute(ids, target=0, additional_forward_args=(mask,))
    assert (padded[1, 5:] == 0).all() and (padded[2, 3:] == 0).all()
    for example, length in ((1, 5), (2, 3)):
        alone = explainer.attribute(
            ids[example : example + 1, :length], target=0,
            additional_forward_args=(mask[example : example + 1, :length],),
        )
        close(padded[example : example + 1, :length], alone)


def test_readout_last_skips_padding(bert):
    model, forward, ids, mask = bert
    explanation = HeterogenousAttentionAttribution(forward, model=model).explain(
        ids, target=0, additional_forward_args=(mask,), readout="last"
    )
    assert explanation.readout_token.tolist() == [6, 4, 2]
    assert explanation.padding["text"][2].tolist() == [False] * 3 + [True] * 4


# ------------------------------------------------------------------ the method itself
def test_gae_equivalence_end_to_end_on_lxmert(lxmert):
    model, forward, inputs = lxmert
    ours = HeterogenousAttentionAttribution(forward, model=model).explain(inputs, target=3)
    gae_direct = GenericAttentionExplainability(
        forward, model=model, normalize=False, cross_term="direct"
    ).explain(inputs, target=3)
    close(ours.relevance["image"], gae_direct.relevance["image"], atol=1e-7)
    text_ours, text_gae = ours.relevance["text"].clone(), gae_direct.relevance["text"]
    text_ours[:, 0] = 0  # GAE zeroes the readout token's own relevance
    close(text_ours, text_gae, atol=1e-7)
    gae = GenericAttentionExplainability(forward, model=model).explain(inputs, target=3)
    assert not torch.allclose(gae.relevance["image"], ours.relevance["image"])


def test_contrast_maps_are_differences_and_full_correction_is_signed(lxmert):
    model, forward, inputs = lxmert
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    maps = {
        name: explainer.explain(inputs, correction="full", return_maps=True, **kwargs).maps
        for name, kwargs in (
            ("contrast", {"objective": Contrast(1, 2)}),
            ("a", {"target": 1}),
            ("b", {"target": 2}),
        )
    }
    assert maps["contrast"].keys() == maps["a"].keys()
    for key in maps["a"]:
        close(maps["contrast"][key], maps["a"][key] - maps["b"][key], atol=1e-6)
    text, regions, _ = explainer.attribute(inputs, objective=Contrast(1, 2), correction="full")
    signed = torch.cat([text[:, 1:].flatten(), regions[..., 0].flatten()])
    assert (signed > 0).any() and (signed < 0).any()


def test_per_type_correction_and_noise_link_and_semantic_stage(lxmert):
    model, forward, inputs = lxmert
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    per_type = {"A": "abs", "B": "pos", "C": "full"}
    maps = {
        correction: explainer.explain(inputs, target=0, correction=correction, return_maps=True)
        for correction in ("abs", "pos", "full")
    }
    mixed = explainer.explain(inputs, target=0, correction=per_type, return_maps=True)
    types = {(n.name, n.call_index or 0): n.type
             for step in mixed.graph.bind(dict(model.named_modules())) for n in step}
    assert set(types.values()) == {"A", "B", "C"}
    for key, node_type in types.items():
        assert torch.equal(mixed.maps[key], maps[per_type[node_type]].maps[key])
    linked = explainer.explain(inputs, target=0, noise_link=True)
    assert torch.isfinite(linked.relevance["image"]).all()
    semantic = explainer.explain(inputs, target=0, correction="abs", stage="homogeneous")
    assert semantic.relevance["image"].shape == (2, 5)
    assert (semantic.relevance["image"] > 0).all()  # column sums of R[image, image]


def test_detr_target_query_class_reads_that_querys_row():
    from tiny_models import BUILDERS

    model, inputs = BUILDERS["detr"]()
    detector = tf.DetrForObjectDetection(model.config).eval()
    detector.model.load_state_dict(model.state_dict())
    explainer = HeterogenousAttentionAttribution(
        lambda pixels: detector(pixel_values=pixels).logits, model=detector
    )
    explanation = explainer.explain(inputs["pixel_values"], target=(3, 1))
    assert explanation.readout_stream == "queries"
    assert explanation.readout_token.tolist() == [3, 3]
    heat = explainer.attribute(inputs["pixel_values"], target=(3, 1))
    assert heat.shape == inputs["pixel_values"].shape


def test_seq2seq_target_position_token_reads_that_decoder_row():
    torch.manual_seed(0)
    config = tf.BartConfig(
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, vocab_size=40,
    )
    model = tf.BartForConditionalGeneration(config).eval()
    source, target_ids = torch.randint(4, 40, (1, 6)), torch.randint(4, 40, (1, 4))
    explainer = HeterogenousAttentionAttribution(
        lambda s, t: model(input_ids=s, decoder_input_ids=t).logits, model=model
    )
    explanation = explainer.explain((source, target_ids), target=(2, 7))
    assert explanation.readout_stream == "target"
    assert explanation.readout_token.tolist() == [2]
    # causal decoder: nothing flows from later target positions
    assert (explanation.relevance["target"][0, 3:] == 0).all()
    assert (explanation.relevance["source"] > 0).any()
    # GAE's zero-row rule ignores the positions after the explained one (they do not exist in
    # a generation that stopped there), so its cross term survives on a causal decoder
    gae = GenericAttentionExplainability(
        lambda s, t: model(input_ids=s, decoder_input_ids=t).logits, model=model
    ).explain((source, target_ids), target=(2, 7))
    assert (gae.relevance["source"] > 0).any()


# ------------------------------------------------------------------ errors and restoration
def test_clear_errors(bert, lxmert):
    model, forward, ids, mask = bert
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with pytest.raises(ValueError, match="target index \\(dim 1\\) 5 is out of range"):
        explainer.attribute(ids, target=5, additional_forward_args=(mask,))
    with pytest.raises(ValueError, match="readout token \\[9, 9, 9\\] out of range"):
        explainer.attribute(ids, target=0, additional_forward_args=(mask,), readout=9)
    raw = HeterogenousAttentionAttribution(
        lambda i, m: model(input_ids=i, attention_mask=m), model=model
    )
    # a ModelOutput with logits is read at its logits now (issue 18: the docstring example on
    # a transformers model); an output without scores is still a TypeError (test_own_share)
    close(raw.attribute(ids, target=0, additional_forward_args=(mask,)),
          explainer.attribute(ids, target=0, additional_forward_args=(mask,)))
    with pytest.raises(ValueError, match="Unknown preset 'lxmert2'.*'lxmert'"):
        HeterogenousAttentionAttribution(forward, model=model, graph="lxmert2")
    with pytest.raises(TypeError, match="pass the model as model="):
        HeterogenousAttentionAttribution(forward)
    with pytest.raises(ValueError, match="correction must be 'none'"):
        AttentionRollout(forward, model=model).attribute(
            ids, target=0, additional_forward_args=(mask,), correction="pos"
        )
    lx_model, lx_forward, inputs = lxmert
    wrong = HeterogenousAttentionAttribution(
        lx_forward, model=lx_model,
        input_mappings=[Tokens("text"), PatchGrid("image"), NoAttribution()],
    )
    with pytest.raises(ValueError, match="input 1 of shape \\(2, 5, 8\\) does not match PatchGrid"):
        wrong.attribute(inputs, target=0)
    unknown = HeterogenousAttentionAttribution(
        lx_forward, model=lx_model,
        input_mappings=[Tokens("audio"), Tokens("image"), Tokens("image")],
    )
    with pytest.raises(ValueError, match="stream 'audio', which the graph does not have"):
        unknown.attribute(inputs, target=0)


def test_half_precision_maps_are_handled_in_float32():
    torch.manual_seed(0)
    config = tf.BertConfig(**SMALL, vocab_size=50, num_labels=3)
    model = tf.BertForSequenceClassification(config).eval().half()
    ids = torch.randint(5, 50, (2, 6))
    explanation = HeterogenousAttentionAttribution(
        lambda i: model(input_ids=i).logits, model=model
    ).explain(ids, target=1)
    assert explanation.relevance["text"].dtype == torch.float32
    assert torch.isfinite(explanation.relevance["text"]).all()


def test_model_is_restored_also_when_the_forward_raises(bert):
    model, forward, ids, mask = bert
    before = model.config._attn_implementation
    model.train()
    try:
        explainer = HeterogenousAttentionAttribution(forward, model=model)
        explainer.attribute(ids, target=0, additional_forward_args=(mask,))
        assert model.training and model.config._attn_implementation == before
        assert no_hooks_left(model)
        assert all(p.grad is None for p in model.parameters())
        with pytest.raises(ValueError, match="has .* rows"):
            explainer.attribute(ids + 100, target=0, additional_forward_args=(mask,))
        assert model.training and model.config._attn_implementation == before
        assert no_hooks_left(model)
    finally:
        model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_two_stream_padding_equals_the_unpadded_run(method, lxmert):
    model, _, (ids, feats, boxes) = lxmert
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0

    def forward(i, f, b, m):
        return model(input_ids=i, visual_feats=f, visual_pos=b, attention_mask=m)
    explainer = method(
        lambda i, f, b, m: forward(i, f, b, m).question_answering_score, model=model,
        input_mappings=[Tokens("text"), Tokens("image"), Tokens("image")],
    )
    padded = explainer.explain((ids, feats, boxes), target=1, additional_forward_args=(mask,))
    alone = explainer.explain(
        (ids[1:, :4], feats[1:], boxes[1:]), target=1, additional_forward_args=(mask[1:, :4],)
    )
    assert (padded.relevance["text"][1, 4:] == 0).all()
    close(padded.relevance["text"][1:, :4], alone.relevance["text"])
    close(padded.relevance["image"][1:], alone.relevance["image"])
    assert alone.relevance["image"].abs().sum() > 0


@pytest.mark.parametrize("method", [HeterogenousAttentionAttribution, AttentionRollout])
def test_return_maps_keeps_heads_and_the_flow_of_relevance(method, bert, lxmert):
    """Per-head maps average to the kept Ā; q/k come with interface calls; the flow starts
    on the readout token and ends at the relevance the explanation returns."""
    cases = ((bert[1], bert[0], (bert[2],), (bert[3],)), (lxmert[1], lxmert[0], lxmert[2], None))
    for forward, model, inputs, extra in cases:
        explainer = method(forward, model=model)
        correction = "full" if method is HeterogenousAttentionAttribution else "none"
        # the flow is the paper's raw row, own share included: asked for explicitly
        explanation = explainer.explain(inputs, target=0, additional_forward_args=extra,
                                        correction=correction, return_maps=True,
                                        include_own=True)
        assert [(c.name, c.call_index) for c in explanation.call_maps] == list(explanation.maps)
        for call in explanation.call_maps:
            close(call.corrected.mean(dim=1), explanation.maps[(call.name, call.call_index)])
            if correction == "full":
                close(call.corrected, call.gradient * call.attention)
            if call.query_states is not None:
                assert call.query_states.shape[:3] == call.attention.shape[:3]
        first, last = explanation.flow[0], explanation.flow[-1]
        assert first.kind == "start"
        readout_source = next(s for s, stream in explanation.sources.items()
                              if stream == explanation.readout_stream)
        close(first.shares[readout_source], torch.ones(inputs[0].shape[0]))
        for source, relevance in explanation.relevance.items():
            close(last.shares[source], relevance.sum(dim=1), atol=1e-4)
        assert {f.kind for f in explanation.flow[1:]} <= {"A", "B", "C", "junction", "B+C",
                                                          "A+B", "A+C"}
    # a BERT (attention interface) has its q/k; LXMERT's hand-written attention has not
    explainer = method(bert[1], model=bert[0])
    bert_maps = explainer.explain(bert[2], target=0, additional_forward_args=(bert[3],),
                                  return_maps=True).call_maps
    assert all(c.query_states is not None for c in bert_maps)
    assert explainer.explain(bert[2], target=0, additional_forward_args=(bert[3],)
                             ).call_maps is None
