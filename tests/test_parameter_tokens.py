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
