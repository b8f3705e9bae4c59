r"""Binding cases of issue 19: additive fusion between streams (Qwen3-VL's deepstack, a toy that
adds vision features into a language stream that goes on) and a single sequence holding an
untraced modality (LayoutLMv3 with its pixels as an additional argument). Models are built
tiny from configs; relevance is checked against the paper's rules recomputed by hand."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import captum_hetattn.binding.dataflow as dataflow
from captum_hetattn import GenericAttentionExplainability, HeterogenousAttentionAttribution

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
from test_parameter_tokens import _layoutlmv3  # noqa: E402


class _AddedVision(nn.Module):
    """Patches attend once; a text stream (4 learned placeholder rows, then the ids) attends,
    the vision features are added into its placeholder rows, and it attends again. The
    placeholders are parameter tokens: they start with no input relevance."""

    def __init__(self) -> None:
        super().__init__()
        self.patch, self.embed = nn.Linear(6, 8), nn.Embedding(20, 8)
        self.placeholders = nn.Parameter(torch.randn(1, 4, 8))
        self.vision = nn.MultiheadAttention(8, 2, batch_first=True)
        self.text = nn.ModuleList(nn.MultiheadAttention(8, 2, batch_first=True)
                                  for _ in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, patches, ids, add=True):
        v = self.patch(patches)
        v = v + self.vision(v, v, v)[0]
        h = torch.cat([self.placeholders.expand(len(ids), -1, -1), self.embed(ids)], dim=1)
        h = h + self.text[0](h, h, h)[0]
        if add:
            h = h + nn.functional.pad(v, (0, 0, 0, ids.shape[1]))
        h = h + self.text[1](h, h, h)[0]
        return self.head(h[:, -1])


def _bar(call):
    return (call.gradient.clamp(min=0) * call.attention).mean(dim=1)


def test_vision_added_into_a_stream_that_goes_on_is_a_junction():
    torch.manual_seed(0)
    model = _AddedVision().eval()
    generator = torch.Generator().manual_seed(1)
    patches, ids = torch.randn(2, 4, 6, generator=generator), torch.randint(0, 20, (2, 4))
    explainer = HeterogenousAttentionAttribution(model, model=model)
    out = explainer.explain(patches, target=1, additional_forward_args=(ids,),
                            return_maps=True, include_own=True)
    assert [c.type for c in out.calls] == ["A", "A", "C"], [(c.name, c.type) for c in out.calls]
    vision, text0, text1 = (_bar(c) for c in out.call_maps)
    eye = torch.diag(torch.tensor([0.0] * 4 + [1.0] * 4)).expand(2, -1, -1)  # learned: 0
    image = torch.eye(4) + vision  # (I + Ā) I
    r_tt, r_ti = eye + text0 @ eye, torch.zeros(2, 8, 4)
    # rows 0..3 add the vision tokens: half their own state, half the vision token's
    half = torch.cat([torch.full((4,), 0.5), torch.ones(4)])[None, :, None]
    r_tt = r_tt * half
    r_ti = torch.cat([0.5 * image, torch.zeros(2, 4, 4)], dim=1)
    r_tt, r_ti = r_tt + text1 @ r_tt, r_ti + text1 @ r_ti
    relevance = {r.shape[1]: r for r in out.relevance.values()}
    torch.testing.assert_close(relevance[4], r_ti[:, -1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(relevance[8], r_tt[:, -1], atol=1e-6, rtol=1e-5)
    assert (relevance[8][:, :4] == 0).all() and relevance[4].abs().sum(dim=1).gt(0).all()
    # without the add the image reaches the text through nothing: exactly zero
    alone = explainer.explain(patches, target=1, additional_forward_args=(ids, False))
    assert [c.type for c in alone.calls] == ["A", "A", "A"]
    assert set(alone.relevance) != set(out.relevance) or all(
        r.abs().sum() == 0 for r in alone.relevance.values() if r.shape[1] == 4)
    # a batch equals its examples
    single = explainer.explain(patches[1:], target=1, additional_forward_args=(ids[1:],),
                               include_own=True)
    for name, r in single.relevance.items():
        torch.testing.assert_close(r[0], out.relevance[name][1], atol=1e-6, rtol=1e-5)


def _qwen3_vl():
    text = dict(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=2, intermediate_size=37, max_position_embeddings=64,
                head_dim=16, pad_token_id=0,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                     mrope_section=[2, 3, 3], mrope_interleaved=True))
    vision = dict(depth=3, hidden_size=32, num_heads=2, intermediate_size=37, patch_size=4,
                  temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=32,
                  num_position_embeddings=16, deepstack_visual_indexes=[0, 1])
    config = transformers.Qwen3VLConfig(text_config=text, vision_config=vision,
                                        image_token_id=98, video_token_id=97,
                                        vision_start_token_id=96, vision_end_token_id=95)
    torch.manual_seed(0)
    model = transformers.Qwen3VLForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.full((2, 1), 1), torch.full((2, 1), 96), torch.full((2, 4), 98),
                     torch.full((2, 1), 95), torch.randint(5, 90, (2, 5), generator=generator)],
                    dim=1)
    pixels = torch.randn(32, 3 * 2 * 4 * 4, generator=generator)
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])

    def forward(input_ids, pixel_values, image_grid_thw):
        return model(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                     mm_token_type_ids=(input_ids == 98).int()).logits[:, -1]

    return model, forward, ids, pixels, grid


def test_qwen3_vl_deepstack_adds_vision_layers_into_the_language_stream(monkeypatch):
    model, forward, ids, pixels, grid = _qwen3_vl()
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    out = explainer.explain((ids, pixels), target=3, additional_forward_args=(grid,))
    assert [c.type for c in out.calls] == ["A"] * 3 + ["C"] * 3
    language = out.calls[-1].query
    into = [j for j in explainer.graph.junctions if j.into == language]
    assert len(into) == 5  # the splice; per deepstack layer its own share and the vision copy
    image = out.relevance["image"]
    assert torch.isfinite(image).all() and image.abs().sum(dim=1).gt(0).all()
    for b in range(2):
        single = explainer.explain((ids[b:b + 1], pixels[16 * b:16 * (b + 1)]), target=3,
                                   additional_forward_args=(grid[b:b + 1],))
        for name, r in single.relevance.items():
            torch.testing.assert_close(r[0], out.relevance[name][b], atol=1e-6, rtol=1e-5)
    # the deepstack path changes the answer (it is not the splice alone)
    monkeypatch.setattr(dataflow, "added_streams", lambda *args: {})
    without = HeterogenousAttentionAttribution(forward, model=model).explain(
        (ids, pixels), target=3, additional_forward_args=(grid,))
    assert not torch.allclose(without.relevance["image"], image, atol=0, rtol=1e-7)


def test_layoutlmv3_with_untraced_pixels_holds_two_sources():
    model, ids, bbox, pixels = _layoutlmv3()

    def forward(input_ids, bbox, pixel_values):
        return model(input_ids=input_ids, bbox=bbox,
                     pixel_values=pixel_values).last_hidden_state[:, 0, :3]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    untraced = explainer.explain((ids, bbox), target=0, additional_forward_args=(pixels,))
    traced = explainer.explain((ids, bbox, pixels), target=0)
    assert [c.type for c in untraced.calls] == ["C", "C"]
    by_size = {r.shape[1]: r for r in untraced.relevance.values()}
    assert sorted(by_size) == [5, 6]  # the patches and the visual [CLS] apart from the text
    for r in traced.relevance.values():
        torch.testing.assert_close(by_size[r.shape[1]], r, atol=1e-6, rtol=1e-5)


def test_kosmos2_image_relevance_flows_through_its_latent_queries():
    """Kosmos-2's latent queries (parameters) attend to the image features and are copied into
    the text at the image positions: no source of their own, but the image's relevance flows
    through them — equal to the paper's rules unrolled by hand over that path."""
    text = dict(vocab_size=99, embed_dim=32, layers=2, attention_heads=4, ffn_dim=37,
                max_position_embeddings=64)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, image_size=16, patch_size=8)
    config = transformers.Kosmos2Config(text_config=text, vision_config=vision,
                                        latent_query_num=3)
    torch.manual_seed(0)
    model = transformers.Kosmos2ForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 90, (2, 9), generator=generator)
    ids[:, 0] = 0
    positions = torch.zeros(2, 9, dtype=torch.long)
    positions[:, 2:5] = 1
    pixels = torch.randn(2, 3, 16, 16, generator=generator)

    def forward(input_ids, pixel_values, image_embeds_position_mask):
        return model(input_ids=input_ids, pixel_values=pixel_values,
                     image_embeds_position_mask=image_embeds_position_mask).logits[:, -1]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    out = explainer.explain((ids, pixels), target=3, additional_forward_args=(positions,),
                            return_maps=True)
    assert len(out.relevance) == 2  # text and image; the latents are no source
    assert [c.type for c in out.calls] == ["A", "A", "B", "C", "C"]
    v0, v1, cross, t0, t1 = (_bar(c) for c in out.call_maps)
    image = torch.diag(torch.tensor([0.0] + [1.0] * 4)) + v0  # the learned [CLS]: no identity
    image = image + v1 @ image
    keys = torch.cat([image, torch.zeros(2, 3, 5)], dim=1)  # features, then the latents
    latents = cross @ keys
    r_ti = torch.zeros(2, 9, 5)
    r_ti[:, 2:5] = latents
    r_ti = r_ti + t0 @ r_ti
    r_ti = r_ti + t1 @ r_ti
    relevance = out.relevance["image"]
    torch.testing.assert_close(relevance, r_ti[:, -1], atol=1e-12, rtol=1e-4)
    assert bool((relevance[:, 1:] > 0).all()) and bool((relevance[:, 0] == 0).all())


def test_an_encoder_read_only_through_a_copy_is_not_read_by_the_objective():
    """LED pads its encoder to a multiple of its window and cuts the output back: the cross
    calls read a copy of the encoder stream. The encoder's final tokens get gradient only
    through that copy, so the objective does not read them itself: the readout is the
    decoder's, with or without the maps kept (a sweep finding: return_maps=True used to read
    0.2% at the encoder and change every number)."""
    from test_layouts import _led

    model = _led()
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 90, (2, 7), generator=generator)  # padded to 8 inside the model
    decoder = torch.randint(5, 90, (2, 3), generator=generator)

    def forward(input_ids, decoder_input_ids):
        return model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits[:, -1]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    streamed = explainer.explain((ids, decoder), target=7)
    kept = explainer.explain((ids, decoder), target=7, return_maps=True)
    assert set(kept.readout) == set(streamed.readout) == {kept.calls[-1].query}
    for name, relevance in streamed.relevance.items():
        torch.testing.assert_close(kept.relevance[name], relevance, atol=1e-7, rtol=1e-5)


def test_a_preset_that_leaves_out_a_call_of_this_class_gives_way_to_the_inferred_graph():
    """The 'perceiver' preset names the encoder only; Perceiver's classifier also runs a
    decoder (a learned query attending to the latents) that the readout hangs on. With the
    preset the inputs got exactly zero (a sweep finding); now the preset gives way to the
    inferred graph, with a warning, and the inputs' relevance is the rules unrolled by hand."""
    config = transformers.PerceiverConfig(
        num_latents=4, d_latents=32, d_model=16, num_blocks=1, num_self_attends_per_block=2,
        num_self_attention_heads=2, num_cross_attention_heads=1, num_labels=3,
        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = transformers.PerceiverForSequenceClassification(config).eval()
    ids = torch.randint(5, 200, (2, 6), generator=torch.Generator().manual_seed(1))

    def forward(x):
        return model(inputs=x).logits

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with pytest.warns(UserWarning, match="'perceiver' preset does not fit.*decoding_cross"):
        out = explainer.explain(ids, target=1, return_maps=True)
    assert [c.type for c in out.calls] == ["B", "A", "A", "B"]
    (relevance,) = out.relevance.values()
    cross, self0, self1, decoder = (_bar(c) for c in out.call_maps)
    latents = cross  # the latents are parameter tokens: no identity of the inputs
    latents = latents + self0 @ latents
    latents = latents + self1 @ latents
    torch.testing.assert_close(relevance, (decoder @ latents)[:, 0], atol=1e-12, rtol=1e-4)
    assert bool((relevance.abs().sum(dim=1) > 0).all())


def test_bridgetower_link_towers_fuse_by_addition():
    """BridgeTower's link towers add the uni-modal towers' later layers into the fused streams
    (LayerNorm(uni + fused)): rows fed by two streams, half from each; the cross-modal
    self-attention after the first co-attention layer is C, and the text tower runs one layer
    before the cross-modal ones (split index 2)."""
    text = transformers.BridgeTowerTextConfig(
        vocab_size=99, max_position_embeddings=16, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=2, intermediate_size=37)
    vision = transformers.BridgeTowerVisionConfig(hidden_size=64, num_hidden_layers=3,
                                                  image_size=16, patch_size=8)
    config = transformers.BridgeTowerConfig(text_config=text, vision_config=vision,
                                            hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2)
    torch.manual_seed(0)
    model = transformers.BridgeTowerForImageAndTextRetrieval(config).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 90, (2, 6), generator=generator)
    ids[:, 0] = 0
    pixels = torch.randn(2, 3, 16, 16, generator=generator)

    def forward(input_ids, pixel_values):
        return model(input_ids=input_ids, pixel_values=pixel_values).logits

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    out = explainer.explain((ids, pixels), target=1)
    types = {c.name.split("bridgetower.")[-1]: c.type for c in out.calls}
    assert {n: t for n, t in types.items() if n.startswith("cross_modal")} == {
        "cross_modal_text_layers.0.attention.self": "A",
        "cross_modal_text_layers.0.crossattention.self": "B",
        "cross_modal_image_layers.0.attention.self": "A",
        "cross_modal_image_layers.0.crossattention.self": "B",
        "cross_modal_text_layers.1.attention.self": "C",
        "cross_modal_text_layers.1.crossattention.self": "B",
        "cross_modal_image_layers.1.attention.self": "C",
        "cross_modal_image_layers.1.crossattention.self": "B",
    }
    assert all(t == "A" for n, t in types.items() if not n.startswith("cross_modal"))
    # the fused and forked streams are named as stages of the towers they come from
    assert {c.query for c in out.calls} == {"text", "image", "text_2", "image_2", "text_3",
                                           "image_3"}
    linked = [j for j in explainer.graph.junctions if j.into == out.calls[-2].query]
    assert len(linked) == 2  # the image tower's later layer and the fused image stream
    assert set(out.relevance) == {"text", "image"}
    for relevance in out.relevance.values():
        assert torch.isfinite(relevance).all() and relevance.abs().sum(dim=1).gt(0).all()
    single = explainer.explain((ids[1:], pixels[1:]), target=1)
    for name, relevance in single.relevance.items():
        torch.testing.assert_close(relevance[0], out.relevance[name][1], atol=1e-6, rtol=1e-5)
    # the two [CLS] read (in the fused streams, copies of the towers' tokens) keep their own
    # share apart, for the adjoint and the full propagation alike
    for method in (HeterogenousAttentionAttribution, GenericAttentionExplainability):
        each = method(forward, model=model)
        seen = each.explain((ids, pixels), target=1)
        raw = each.explain((ids, pixels), target=1, include_own=True)
        for name, relevance in seen.relevance.items():
            assert bool((relevance[:, 0] < relevance[:, 1:].max(dim=1).values).all()), name
            if name == "image":  # the vision tower's [CLS] is learned: no input relevance
                assert bool((raw.relevance[name][:, 0] == 0).all())
                continue
            assert bool((raw.relevance[name][:, 0] > 0.1).all()), name
            torch.testing.assert_close(raw.relevance[name][:, 1:], relevance[:, 1:])


def test_takes_untraced_tells_untraced_data_from_absent_biases_and_buffers():
    from captum_hetattn.binding.params import takes_untraced

    pixels = torch.randn(2, 3, 4, 4)
    conv, bare = nn.Conv2d(3, 4, 2, stride=2), nn.Conv2d(3, 4, 2, stride=2, bias=False)
    assert takes_untraced(conv(pixels), batch=2)  # pixels not traced
    traced = pixels.clone().requires_grad_(True)
    out = bare(traced)  # no bias: an edge without a gradient function, but no data
    assert not takes_untraced(out, stop={traced.grad_fn}, batch=2)
    assert not takes_untraced(bare(traced * 1.0), stop={}, batch=2)
    hidden = nn.Linear(4, 4)(torch.randn(2, 3, 4, requires_grad=True))
    assert not takes_untraced(hidden * torch.randn(1, 3, 4), batch=2)  # a buffer-like scale
    assert takes_untraced(hidden * torch.ones(2, 3, 1), batch=2)  # per-example data
