r"""Parameter tokens are never a source (docs/architecture.md §2): a learned probe, latents or
queries join a stream with no input relevance, while tokens of an input the engine does not trace
(pixel values passed as an additional argument) stay a source of their own."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.binding.params import parameter_only

sys.path.insert(0, str(Path(__file__).parent))
from arch_zoo import ARCHS  # noqa: E402

transformers = pytest.importorskip("transformers")


def test_parameter_only_tells_parameters_from_untraced_tensors():
    probe = nn.Parameter(torch.randn(1, 2, 4))
    assert parameter_only(probe.expand(3, -1, -1))
    assert parameter_only(nn.LayerNorm(4)(probe.expand(3, -1, -1)))
    conv = nn.Conv2d(3, 4, 2, stride=2)
    assert not parameter_only(conv(torch.randn(1, 3, 4, 4)))  # pixels not traced
    assert not parameter_only(probe + torch.ones(1, 2, 4))  # a constant added in
    assert not parameter_only(torch.zeros(1, 2, 4))  # no graph at all
    leaf = torch.randn(1, 2, 4, requires_grad=True)  # a leaf that is not a parameter
    assert not parameter_only(leaf * 2)
    # below a stop node (another stream's tensor) nothing is walked
    other = conv(torch.randn(1, 3, 4, 4)).flatten(2).transpose(1, 2)
    joined = torch.cat([probe[:, :1].expand(1, -1, -1), other], dim=1)
    assert not parameter_only(joined)
    assert parameter_only(joined, stop={other.grad_fn})


def _siglip_vision():
    config = transformers.SiglipVisionConfig(
        image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64,
    )
    torch.manual_seed(0)
    return transformers.SiglipVisionModel(config).eval()


def test_siglip_probe_is_a_stream_but_not_a_source():
    model = _siglip_vision()

    def forward(pixel_values):
        return model(pixel_values=pixel_values).pooler_output[:, :3]

    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    out = explainer.explain(pixels, target=1)
    assert set(out.relevance) == {"image"}, out.sources
    assert set(out.sources.values()) == {"image"}
    # the probe is still its own stream: the head's cross call reads the patches from it
    head = [c for c in out.calls if c.name == "head.attention"]
    assert [(c.query, c.key, c.type) for c in head] == [("pooling", "image", "B")]
    assert set(out.readout) == {"pooling"}
    relevance = out.relevance["image"]
    assert relevance.shape == (2, 4)
    assert torch.isfinite(relevance).all() and relevance.abs().sum(dim=1).gt(0).all()
    attribution = explainer.attribute(pixels, target=1)
    assert attribution.shape == pixels.shape
    assert attribution.abs().flatten(1).sum(dim=1).gt(0).all()


def test_untraced_pixels_stay_a_source_and_the_probe_does_not():
    arch = ARCHS["siglip"]()  # dual encoder: pixels passed as an additional argument
    ids, pixels = arch.inputs
    explainer = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model)
    out = explainer.explain(ids, target=arch.target, additional_forward_args=(pixels,))
    assert set(out.relevance) == {"text", "image"}, out.sources
    assert "pooling" not in out.sources.values()
    assert out.relevance["image"].abs().sum(dim=1).gt(0).all()


@pytest.mark.parametrize("name", ["perceiver", "blip2_opt"])
def test_latents_and_learned_queries_are_not_sources(name):
    arch = ARCHS[name]()
    explainer = HeterogenousAttentionAttribution(arch.forward_func, model=arch.model)
    out = explainer.explain(arch.inputs, target=arch.target,
                            additional_forward_args=arch.additional_forward_args or None)
    assert "queries" not in out.sources.values(), out.sources
    # the queries stream is still there, read through its cross calls
    assert any(c.query == "queries" and c.type == "B" for c in out.calls)


# ------------------------------------------------------------ types follow the sources held
def _layoutlmv3():
    config = transformers.LayoutLMv3Config(
        vocab_size=50, max_position_embeddings=20, coordinate_size=6, shape_size=4,
        rel_pos_bins=8, max_rel_pos=16, rel_2d_pos_bins=8, max_rel_2d_pos=32, input_size=16,
        patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    model = transformers.LayoutLMv3Model(config).eval()
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 50, (2, 6), generator=generator)
    ids[:, 0] = 0
    corners = torch.randint(0, 500, (2, 6, 2), generator=generator)
    bbox = torch.cat([corners, corners + 100], dim=-1)
    pixels = torch.randn(2, 3, 16, 16, generator=generator)
    return model, ids, bbox, pixels


def test_layoutlmv3_one_sequence_of_text_and_image_is_type_c():
    model, ids, bbox, pixels = _layoutlmv3()

    def forward(input_ids, bbox, pixel_values=None):
        out = model(input_ids=input_ids, bbox=bbox, pixel_values=pixel_values)
        return out.last_hidden_state[:, 0, :3]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    out = explainer.explain((ids, bbox, pixels), target=0)
    # 6 text tokens, then the visual [CLS] (a parameter token, joining the patches) and 4 patches
    assert {name: r.shape[1] for name, r in out.relevance.items()} == {"text": 6, "image": 5}
    assert len(set(out.sources.values())) == 1  # one stream holds both sources
    assert [c.type for c in out.calls] == ["C", "C"], [(c.name, c.type) for c in out.calls]
    for relevance in out.relevance.values():
        assert relevance.abs().sum(dim=1).gt(0).all()
    # the same model on text alone: one source, so its self-attention is A
    text_only = explainer.explain((ids, bbox), target=0)
    assert len(text_only.relevance) == 1
    (relevance,) = text_only.relevance.values()
    assert relevance.shape == (2, 6)
    assert [c.type for c in text_only.calls] == ["A", "A"]


class _TwoStages(nn.Module):
    """Patches attend; then one token joins them before a second attention: a learned [CLS]
    (a parameter token) or a token made from untraced metadata (an input of its own)."""

    def __init__(self):
        super().__init__()
        self.proj, self.meta = nn.Linear(4, 8), nn.Linear(3, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.ModuleList(
            nn.MultiheadAttention(8, 2, batch_first=True) for _ in range(2)
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x, meta=None):
        h = self.proj(x)
        h = h + self.blocks[0](h, h, h)[0]
        extra = self.cls.expand(len(x), -1, -1) if meta is None else self.meta(meta)[:, None]
        h = torch.cat([extra, h], dim=1)
        h = h + self.blocks[1](h, h, h)[0]
        return self.head(h[:, 0])


def test_a_joining_token_is_a_source_only_when_an_input_makes_it():
    torch.manual_seed(0)
    model = _TwoStages().eval()
    generator = torch.Generator().manual_seed(2)
    x, meta = torch.randn(2, 5, 4, generator=generator), torch.randn(2, 3, generator=generator)
    explainer = HeterogenousAttentionAttribution(model, model=model)
    learned = explainer.explain(x, target=0)
    assert len(learned.relevance) == 1  # the [CLS] is no source: the second stage stays A
    assert [c.type for c in learned.calls] == ["A", "A"]
    fed = explainer.explain(x, target=0, additional_forward_args=(meta,))
    assert len(fed.relevance) == 2  # the metadata token is: the second stage mixes two, C
    assert [c.type for c in fed.calls] == ["A", "C"]
    patches = min(fed.relevance.values(), key=lambda r: r.shape[1])  # the metadata token is read
    assert patches.shape == (2, 5) and patches.abs().sum(dim=1).gt(0).all()


# ------------------------------------------ learned tokens spliced into an input's stream
sys.path.insert(0, str(Path(__file__).parent / "model_types"))


def _old_and_new(monkeypatch, explain):
    r"""``explain()`` as it is, and as it was before parameter tokens spliced into an input's
    stream were told apart (their columns read like any token's)."""
    from captum_hetattn.engine import result

    new = explain()
    with monkeypatch.context() as patch:
        patch.setattr(result, "parameter_tokens", lambda recording: {})
        old = explain()
    return old, new


def _check_zeroed(old, new, stream: str, learned: torch.Tensor) -> None:
    """The learned columns exactly 0 everywhere users see (they were not before); every
    other column as before."""
    assert new.parameter_tokens.keys() == {stream}
    assert torch.equal(new.parameter_tokens[stream], learned)
    for field in ("stream_relevance", "own"):
        before, after = getattr(old, field)[stream], getattr(new, field)[stream]
        assert (after[learned] == 0).all()
        torch.testing.assert_close(after[~learned], before[~learned], rtol=0, atol=0)
    assert old.stream_relevance[stream][learned].abs().sum() > 0  # what the fix takes out
    for name, source_stream in new.sources.items():
        if source_stream == stream:
            columns = learned[:, : new.relevance[name].shape[1]]
            assert (new.relevance[name][columns] == 0).all()


class _Prompted(nn.Module):
    """A learned token spliced into the patches' stream (a register), read by mean pooling of
    the patches only: the register is never read, but attention mixes it in."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.register = nn.Parameter(torch.randn(1, 2, 8))
        self.blocks = nn.ModuleList(
            nn.MultiheadAttention(8, 2, batch_first=True) for _ in range(2)
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.proj(x)
        h = torch.cat([h[:, :2], self.register.expand(len(x), -1, -1), h[:, 2:]], dim=1)
        for block in self.blocks:
            h = h + block(h, h, h)[0]
        return self.head(torch.cat([h[:, :2], h[:, 4:]], dim=1).mean(dim=1))


def _paper_rows(explanation, stream: str, start: torch.Tensor) -> torch.Tensor:
    """``w · R`` of the paper's rule from the call maps, ``R`` starting as ``start``."""
    relevance = start.double()
    for call in explanation.call_maps:
        mixed = (call.gradient.double().clamp(min=0) * call.attention.double()).mean(dim=1)
        relevance = relevance + mixed @ relevance
    return torch.einsum("bi,bij->bj", explanation.readout[stream].double(), relevance)


def test_a_learned_token_spliced_into_an_input_stream_starts_with_no_relevance(monkeypatch):
    torch.manual_seed(0)
    model = _Prompted().eval()
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(4))
    explainer = HeterogenousAttentionAttribution(model, model=model)
    old, new = _old_and_new(monkeypatch, lambda: explainer.explain(
        x, target=1, return_maps=True, include_own=True))
    (stream,) = new.streams
    learned = torch.zeros(2, 8, dtype=torch.bool)
    learned[:, 2:4] = True
    _check_zeroed(old, new, stream, learned)
    # against the rule itself: the identity on the input's tokens only, zero on the learned
    eye = torch.eye(8).expand(2, 8, 8)
    expected = _paper_rows(new, stream, eye * (~learned)[:, None, :])
    torch.testing.assert_close(new.stream_relevance[stream].double(), expected, rtol=1e-5,
                               atol=1e-8)
    # and the input tokens' relevance is what the identity everywhere gave them
    torch.testing.assert_close(expected[~learned], _paper_rows(new, stream, eye)[~learned])
    # onto the input: unchanged (the learned rows were never any element's)
    torch.testing.assert_close(explainer.attribute(x, target=1), _old_and_new(
        monkeypatch, lambda: explainer.attribute(x, target=1))[0])


def _case(model_type: str):
    from model_types.build import build

    return build(model_type)


def _explain_case(case, **kwargs):
    explainer = HeterogenousAttentionAttribution(case.forward_func, model=case.model)
    return lambda: explainer.explain(
        case.inputs, target=case.target,
        additional_forward_args=case.additional_forward_args or None, **kwargs)


def test_vit_registers_and_cls_are_no_source(monkeypatch):
    case = _case("dinov2_with_registers")
    old, new = _old_and_new(monkeypatch, _explain_case(case, return_maps=True,
                                                       include_own=True))
    (stream,) = new.streams
    registers = case.model.config.num_register_tokens
    learned = torch.zeros_like(new.stream_relevance[stream], dtype=torch.bool)
    learned[:, : 1 + registers] = True  # [CLS], then the registers, then the patches
    _check_zeroed(old, new, stream, learned)
    eye = torch.eye(learned.shape[1]).expand(*learned.shape, learned.shape[1])
    expected = _paper_rows(new, stream, eye * (~learned)[:, None, :])
    torch.testing.assert_close(new.stream_relevance[stream].double(), expected, rtol=1e-4,
                               atol=1e-7)


def test_groupvit_group_tokens_are_no_source(monkeypatch):
    r"""GroupViT's first stage: 64 learned group tokens after the 16 patches (its second
    stage's group tokens join a stream of merged groups, which holds no source)."""
    case = _case("groupvit")
    old, new = _old_and_new(monkeypatch, _explain_case(case))
    (stream, learned), = new.parameter_tokens.items()
    groups = case.model.config.vision_config.num_group_tokens[0]
    expected = torch.zeros_like(learned)
    expected[:, -groups:] = True
    _check_zeroed(old, new, stream, expected)


def test_bert_cls_from_the_ids_stays_a_source():
    case = _case("bert")
    new = _explain_case(case)()
    assert new.parameter_tokens == {}
    (stream,) = new.streams
    assert (new.own[stream][:, 0] > 0).all()  # [CLS] read: its own share is kept apart


class _Captioner(nn.Module):
    """Patches with a learned [CLS] spliced in attend to each other; text tokens attend to
    themselves, then cross-attend to the patches (a key stream holding a parameter token)."""

    def __init__(self):
        super().__init__()
        self.proj, self.embed = nn.Linear(4, 8), nn.Embedding(10, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.image = nn.MultiheadAttention(8, 2, batch_first=True)
        self.text = nn.MultiheadAttention(8, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids, patches):
        v = torch.cat([self.cls.expand(len(ids), -1, -1), self.proj(patches)], dim=1)
        v = v + self.image(v, v, v)[0]
        t = self.embed(ids)
        t = t + self.text(t, t, t)[0]
        t = t + self.cross(t, v, v)[0]
        return self.head(t.mean(dim=1))  # every text row gets a gradient: no zero row in GAE


@pytest.mark.parametrize("method", ["gae", "noise_link", "ours"])
def test_normalised_rules_read_the_learned_token_as_zero(monkeypatch, method):
    r"""GAE's normalisation and the noise link keep ``R − I`` over every token of the key
    stream, as GAE's reference code keeps ViT's [CLS] in its state: the learned token's
    column is read as zero and every other column is what it was."""
    from captum_hetattn import GenericAttentionExplainability

    torch.manual_seed(0)
    model = _Captioner().eval()
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 10, (2, 4), generator=generator)
    patches = torch.randn(2, 5, 4, generator=generator, requires_grad=True)
    cls = GenericAttentionExplainability if method == "gae" else \
        HeterogenousAttentionAttribution
    explainer = cls(model, model=model)
    options = {"noise_link": True} if method == "noise_link" else {}
    old, new = _old_and_new(monkeypatch, lambda: explainer.explain(
        (ids, patches), target=1, **options))
    stream = next(s for s, n in new.streams.items() if n == 6)
    learned = torch.zeros(2, 6, dtype=torch.bool)
    learned[:, 0] = True
    _check_zeroed(old, new, stream, learned)


def test_a_learned_token_among_untraced_pixels_is_told_apart():
    r"""LayoutLMv3's visual [CLS] beside patches of pixels passed untraced: the patch
    embedding's weight stands for the pixels, so the [CLS] is listed like the traced run's."""
    model, ids, bbox, pixels = _layoutlmv3()

    def forward(input_ids, bbox, pixel_values):
        return model(input_ids=input_ids, bbox=bbox,
                     pixel_values=pixel_values).last_hidden_state[:, 0, :3]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    untraced = explainer.explain((ids, bbox), target=0, additional_forward_args=(pixels,))
    traced = explainer.explain((ids, bbox, pixels), target=0)
    for out in (untraced, traced):
        (stream, learned), = out.parameter_tokens.items()
        assert learned.sum(dim=1).tolist() == [1, 1] and bool(learned[:, 6].all())
        assert (out.stream_relevance[stream][:, 6] == 0).all()
        assert (out.stream_relevance[stream][:, 7:].abs().sum(dim=1) > 0).all()
