r"""Windowed attention over zero-padded slots (SAM's ViT, MaskFormer's Swin, Swin at a size that is
not a multiple of its window): the padded slots hold no token, take attention and are cropped, so
the exact map is the one over the layer's tokens with their rows and columns left out
(captum_hetattn/binding/padding.py).

The reference here is independent of the engine's layouts: the model's own softmaxes, collected
in eager mode with their gradients, are placed on the tokens by each model's window geometry
written out by hand (pad, roll, partition), padded slots dropped, and the paper's rule
``R ← R + mean_h((∇A)⁺ ⊙ A) · R`` is run from ``R = I``, read with the engine's readout weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from captum_hetattn import HeterogenousAttentionAttribution

transformers = pytest.importorskip("transformers")


class _Softmaxes(TorchFunctionMode):
    """Every softmax output over square maps (3-D or 4-D), in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name == "softmax" and out.dim() in (3, 4) and out.shape[-1] == out.shape[-2]:
            self.maps.append(out)
        return out


def _maps_and_gradients(forward: Callable[[Tensor], Tensor], pixels: Tensor, target: int
                        ) -> list[tuple[Tensor, Tensor]]:
    """The eager model's softmaxes and the gradient of the target score with respect to each."""
    collector = _Softmaxes()
    with torch.enable_grad(), collector:
        scores = forward(pixels)
    grads = torch.autograd.grad(scores[:, target].sum(), collector.maps)
    return [(m.detach().double(), g.double()) for m, g in zip(collector.maps, grads, strict=True)]


def _slot_tokens(batch: int, grid: int, window: int, shift: int = 0) -> Tensor:
    r"""``(batch·windows, window²)``: the flat token ``b·grid² + y·grid + x`` of every slot of a
    layer that pads its ``grid × grid`` tokens with zero rows to whole windows, rolls them by
    ``-shift`` and partitions them into windows row by row; ``-1`` for a padded slot."""
    padded = math.ceil(grid / window) * window
    y, x = torch.meshgrid(torch.arange(padded), torch.arange(padded), indexing="ij")
    y, x = (y + shift) % padded, (x + shift) % padded  # the token each rolled position holds
    token = torch.where((y < grid) & (x < grid), y * grid + x, -1)
    count = padded // window
    slots = token.view(count, window, count, window).permute(0, 2, 1, 3).reshape(-1, window ** 2)
    per_example = [torch.where(slots >= 0, slots + b * grid ** 2, -1) for b in range(batch)]
    return torch.cat(per_example)


def _dense(attention: Tensor, gradient: Tensor, slots: Tensor, batch: int, n: int) -> Tensor:
    r"""``(B, n, n)``: ``mean_h((∇A)⁺ ⊙ A)`` of raw maps ``(parts, H, w², w²)`` placed on the
    tokens, the entries of padded slots left out."""
    mixed = (gradient.clamp(min=0) * attention).mean(dim=1)  # (parts, w², w²)
    dense = torch.zeros(batch * n, batch * n, dtype=torch.float64)
    for part in range(mixed.shape[0]):
        real = (slots[part] >= 0).nonzero().flatten()
        tokens = slots[part][real]
        dense[tokens[:, None], tokens[None, :]] = mixed[part][real[:, None], real[None, :]]
    blocks = dense.view(batch, n, batch, n)
    across = ~torch.eye(batch, dtype=torch.bool)[:, None, :, None].expand_as(blocks)
    assert not bool(blocks[across].any())  # no pair across examples
    return blocks.diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _rule(maps: list[tuple[Tensor, Tensor, Tensor]], batch: int, n: int,
          weights: Tensor) -> Tensor:
    """``w_bᵀ R_b`` after the rule over every ``(attention, gradient, slots)`` in order."""
    relevance = torch.eye(n, dtype=torch.float64).expand(batch, n, n).clone()
    for attention, gradient, slots in maps:
        relevance = relevance + _dense(attention, gradient, slots, batch, n) @ relevance
    return torch.einsum("bi,bij->bj", weights.double(), relevance)


def _on_padding(attention: Tensor, slots: Tensor) -> Tensor:
    """Each raw row's mass on padded slots."""
    return (attention * (slots < 0)[:, None, None, :]).sum(dim=-1)


def _assert_rule(explanation, expected: Tensor) -> None:
    (stream,) = explanation.streams
    got = explanation.stream_relevance[stream] + explanation.own[stream]
    assert float(explanation.relevance["image"].abs().sum()) > 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-7)


def _assert_batch_is_singles(explainer, pixels: Tensor, batch, target: int) -> None:
    for b in range(pixels.shape[0]):
        single = explainer.explain(pixels[b:b + 1], target=target)
        torch.testing.assert_close(batch.relevance["image"][b:b + 1], single.relevance["image"],
                                   rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------ SAM's ViT
def _sam(grid: int, window: int, implementation: str):
    config = transformers.SamVisionConfig(
        hidden_size=16, intermediate_size=32, output_channels=8, num_hidden_layers=2,
        num_attention_heads=2, image_size=2 * grid, patch_size=2, window_size=window,
        global_attn_indexes=[1], mlp_dim=32, attn_implementation=implementation)
    torch.manual_seed(0)
    model = transformers.SamVisionModel(config).eval()
    with torch.no_grad():  # weights that make the maps and their gradients far from trivial
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model, 2 * grid


def _sam3(grid: int, window: int, implementation: str):
    config = transformers.Sam3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=14 * grid, patch_size=14, window_size=window, global_attn_indexes=[1],
        pretrain_image_size=14 * grid, attn_implementation=implementation)
    torch.manual_seed(0)
    return transformers.Sam3ViTModel(config).eval(), 14 * grid


def _pooled(model):
    def forward(pixel_values: Tensor) -> Tensor:
        state = model(pixel_values=pixel_values).last_hidden_state
        return state.flatten(2).mean(-1) if state.dim() == 4 else state.mean(dim=1)
    return forward


@pytest.mark.parametrize(("family", "grid", "window"),
                         [(_sam, 4, 6), (_sam, 5, 3), (_sam3, 4, 6), (_sam3, 5, 3)],
                         ids=["sam-one-window-past-the-grid", "sam-windows-past-the-grid",
                              "sam3-one-window-past-the-grid", "sam3-windows-past-the-grid"])
def test_sam_vit_over_padded_windows_follows_the_rule_on_its_tokens(family, grid, window):
    model, size = family(grid, window, "sdpa")  # the default: sdpa called by hand in SAM
    eager, _ = family(grid, window, "eager")
    eager.load_state_dict(model.state_dict())
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    explainer = HeterogenousAttentionAttribution(_pooled(model), model=model)
    explanation = explainer.explain(pixels, target=2, return_maps=True)
    n = grid * grid
    assert explanation.sizes == {"image": n}  # the tokens, not the padded slots
    assert [tuple(c.attention.shape) for c in explanation.call_maps] == [(2, 2, n, n)] * 2
    found = _maps_and_gradients(_pooled(eager), pixels, 2)
    assert len(found) == 2
    padded = math.ceil(grid / window) * window
    (first, first_grad), (second, second_grad) = found
    windowed = _slot_tokens(2, grid, window)  # 2 examples × (padded / window)² windows
    assert first.numel() == windowed.shape[0] * 2 * window ** 4 and padded > grid
    heads = (2, window ** 2, window ** 2)
    first, first_grad = first.reshape(-1, *heads), first_grad.reshape(-1, *heads)
    # the model attends to its padded slots: that mass is real, and goes nowhere
    assert float(_on_padding(first, windowed).max()) > 0.05
    global_slots = torch.arange(2 * n).view(2, n)
    maps = [(first, first_grad, windowed),
            (second.reshape(2, 2, n, n), second_grad.reshape(2, 2, n, n), global_slots)]
    _assert_rule(explanation, _rule(maps, 2, n, explanation.readout["image"]))
    _assert_batch_is_singles(explainer, pixels, explanation, 2)
    hits = explainer.layouts.hits  # the layout found once, used again after its check
    again = explainer.explain(pixels, target=2)
    assert explainer.layouts.hits > hits
    torch.testing.assert_close(again.relevance["image"], explanation.relevance["image"])


# ------------------------------------------------------------------------------ Swin
def test_swin_at_a_size_past_its_windows_follows_the_rule_on_its_tokens():
    # 24/4 = 6×6 patches in windows of 4: padded to 8×8 (four windows), the second block shifted
    def swin(implementation: str):
        config = transformers.SwinConfig(
            image_size=24, patch_size=4, embed_dim=16, depths=[2], num_heads=[2],
            window_size=4, mlp_ratio=2.0, attn_implementation=implementation)
        torch.manual_seed(0)
        return transformers.SwinModel(config, add_pooling_layer=False).eval()

    model, eager = swin("sdpa"), swin("eager")

    def forward(pixel_values: Tensor, on=model) -> Tensor:
        return on(pixel_values=pixel_values).last_hidden_state.mean(dim=1)

    pixels = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    explanation = explainer.explain(pixels, target=1, return_maps=True)
    assert explanation.sizes == {"image": 36}
    found = _maps_and_gradients(lambda x: forward(x, eager), pixels, 1)
    maps = [(a, g, _slot_tokens(2, 6, 4, shift)) for (a, g), shift in zip(found, (0, 2),
                                                                            strict=True)]
    assert float(_on_padding(found[0][0], maps[0][2]).max()) > 0.05
    _assert_rule(explanation, _rule(maps, 2, 36, explanation.readout["image"]))
    _assert_batch_is_singles(explainer, pixels, explanation, 1)


def test_maskformer_swin_padded_into_one_window_follows_the_rule_on_its_tokens():
    from transformers.models.maskformer.configuration_maskformer_swin import (
        MaskFormerSwinConfig,
    )
    from transformers.models.maskformer.modeling_maskformer_swin import MaskFormerSwinModel

    torch.manual_seed(0)
    # 32×32 pixels, 4×4 patches: 8×8 tokens, then 4×4, each padded (zero rows, nothing masked)
    # into one 12×12 window per example (the maps are caught at the softmax: scores layout)
    model = MaskFormerSwinModel(MaskFormerSwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
        window_size=12)).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    def forward(x):
        return model(pixel_values=x).last_hidden_state.mean(dim=1)[:, :4]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    explanation = explainer.explain((pixels,), target=0, return_maps=True)
    assert [tuple(c.attention.shape) for c in explanation.call_maps] == [(2, 2, 64, 64),
                                                                         (2, 2, 16, 16)]
    assert model.training is False and not any(m._forward_hooks for m in model.modules())
    # two streams (the patch merge between the stages): the rule through the merge is the
    # engine's junction, so the first stage's call is checked alone, read where the engine reads
    found = _maps_and_gradients(forward, pixels, 0)
    assert [m.shape[-1] for m, _ in found] == [144, 144]
    slots = _slot_tokens(2, 8, 12)
    dense = _dense(found[0][0], found[0][1], slots, 2, 64)
    (first, _) = explanation.call_maps
    recorded = (first.gradient.double().clamp(min=0) * first.attention.double()).mean(dim=1)
    torch.testing.assert_close(recorded, dense, rtol=1e-4, atol=1e-9)
    _assert_batch_is_singles(explainer, pixels, explanation, 0)


# ------------------------------------------------------------------------------ not padding
class _Attention(torch.nn.Module):
    def __init__(self, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = torch.nn.Linear(width, 3 * width)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(dim=-1)
        return (attention @ v).transpose(1, 2).reshape(x.shape)


class _WindowedBlock(torch.nn.Module):
    r"""Pads its 6 tokens with zero rows to 8 slots in two windows of 4; ``read``: the padded
    slots' outputs are added to every token (not cropped: they are not padding)."""

    def __init__(self, read: bool) -> None:
        super().__init__()
        self.read = read
        self.norm, self.attention = torch.nn.LayerNorm(16), _Attention()

    def forward(self, x):
        b, n, c = x.shape
        slots = torch.nn.functional.pad(self.norm(x), (0, 0, 0, 8 - n)).reshape(2 * b, 4, c)
        out = self.attention(slots).reshape(b, 8, c)
        kept = out[:, :n]
        return x + (kept + out[:, n:].sum(dim=1, keepdim=True) if self.read else kept)


class _WindowedToy(torch.nn.Module):
    def __init__(self, read: bool) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.blocks = torch.nn.ModuleList([_WindowedBlock(read), _WindowedBlock(read)])
        self.head = torch.nn.Linear(16, 3)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))


def test_windows_whose_zero_slots_are_cropped_follow_the_rule_on_the_tokens():
    torch.manual_seed(0)
    model = _WindowedToy(read=False).eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(5))
    explainer = HeterogenousAttentionAttribution(model, model=model)
    explanation = explainer.explain(ids, target=1, return_maps=True)
    assert explanation.sizes == {"text": 6}
    collector = _Softmaxes()
    with collector:
        scores = model(ids)
    grads = torch.autograd.grad(scores[:, 1].sum(), collector.maps)
    slots = torch.tensor([[0, 1, 2, 3], [4, 5, -1, -1], [6, 7, 8, 9], [10, 11, -1, -1]])
    maps = [(m.detach().double(), g.double(), slots) for m, g in zip(collector.maps, grads,
                                                                       strict=True)]
    (stream,) = explanation.streams
    expected = _rule(maps, 2, 6, explanation.readout[stream])
    got = explanation.stream_relevance[stream] + explanation.own[stream]
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-7)


def test_windows_whose_zero_slots_are_read_by_the_tokens_are_refused_naming_the_module():
    torch.manual_seed(0)
    model = _WindowedToy(read=True).eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(5))
    explainer = HeterogenousAttentionAttribution(model, model=model)
    with pytest.raises(NotImplementedError,
                       match=r"'blocks.0.attention'.*read by the layer's tokens"):
        explainer.explain(ids, target=1)
    assert not any(m._forward_hooks for m in model.modules())


def test_groupvits_zero_initialised_group_tokens_are_not_taken_for_padding():
    # GroupViT concatenates learned group tokens (an nn.Parameter of zeros before training) to a
    # stage's tokens and keeps them through the stage: all-zero rows, but no padding
    from model_types.build import build

    case = build("groupvit")
    (stage,) = [m for n, m in case.model.named_modules()
                if n == "vision_model.encoder.stages.0"]
    assert not bool(stage.group_token.any()) and stage.group_token.shape[1] == 64
    explainer = HeterogenousAttentionAttribution(case.forward_func, model=case.model)
    explanation = explainer.explain(case.inputs, target=case.target,
                                    additional_forward_args=case.additional_forward_args,
                                    return_maps=True)
    (first,) = [c for c in explanation.call_maps
                if c.name == "vision_model.encoder.stages.0.layers.0.self_attn"]
    assert tuple(first.attention.shape[-2:]) == (80, 80)  # the stage's 16 tokens + 64 groups


class _UntracedBlock(torch.nn.Module):
    r"""Pads its 6 tokens with zero rows into one window of 10 slots, crops them, and returns one
    row more than it takes (a pooled row): its output is not laid out like its input, so
    whether the padded slots' outputs are cropped cannot be traced."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attention = torch.nn.LayerNorm(16), _Attention()

    def forward(self, x):
        slots = torch.nn.functional.pad(self.norm(x), (0, 0, 0, 10 - x.shape[1]))
        out = x + self.attention(slots)[:, :x.shape[1]]
        return torch.cat([out, out.mean(dim=1, keepdim=True)], dim=1)


def test_a_padded_window_whose_crop_cannot_be_traced_is_refused_naming_the_module():
    torch.manual_seed(0)
    embed, block, head = torch.nn.Embedding(50, 16), _UntracedBlock(), torch.nn.Linear(16, 3)
    model = torch.nn.ModuleDict({"embed": embed, "block": block, "head": head}).eval()

    def forward(ids):
        return head(block(embed(ids))[:, -1])

    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(5))
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with pytest.raises(NotImplementedError,
                       match=r"'block.attention'.*10 slots.*6 tokens.*4 all-zero slots.*cannot"):
        explainer.explain(ids, target=1)
