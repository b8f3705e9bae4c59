r"""Layouts of calls that are not one dense map over their hidden states (issue 19, requests from
binding): each is explained with maps that match the model's, or left out / refused by name."""

import warnings

import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution

transformers = pytest.importorskip("transformers")


def _inkling2():
    from transformers.models.inkling2 import configuration_inkling2 as conf
    from transformers.models.inkling2 import modeling_inkling2 as mod

    torch.manual_seed(0)
    config = conf.Inkling2TextConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, swa_num_attention_heads=2, swa_num_key_value_heads=2,
        swa_head_dim=16, d_rel=16, moe_intermediate_size=64, n_routed_experts=4,
        num_experts_per_tok=2, n_layers_per_attn_res_block=4, max_position_embeddings=64,
        layer_types=["hybrid_sliding", "hybrid_sliding", "hybrid_sliding", "hybrid"],
        pad_token_id=0,
    )
    model = mod.Inkling2TextModel(config).eval()
    with torch.no_grad():  # a learned query that is not zero, so the depth softmax is not flat
        for name, parameter in model.named_parameters():
            if name.endswith("_input.query"):
                parameter.normal_()
    return model


def test_inkling2_attention_over_depth_is_left_out_by_name_and_the_rest_explained():
    model = _inkling2()
    ids = torch.randint(5, 90, (2, 7), generator=torch.Generator().manual_seed(1))

    def forward(i):
        return model(input_ids=i).last_hidden_state[:, -1, :4]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = explainer.explain((ids,), target=1)
    depth = [str(w.message) for w in caught if "over depth" in str(w.message)]
    named = {m.split("'")[1] for m in depth}
    # every block attention residual (attention_input / mlp_input / final_input) is named
    residuals = {n for n, m in model.named_modules()
                 if type(m).__name__ == "Inkling2BlockAttentionResidual"}
    assert residuals and named == residuals, (named, residuals)
    called = [c.name for c in batch.calls]
    assert not any("attention_input" in n or "mlp_input" in n for n in called)
    assert any("self_attn" in n for n in called)
    relevance = batch.relevance["text"] if "text" in batch.relevance else next(
        iter(batch.relevance.values()))
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    for b in range(2):
        single = explainer.explain((ids[b:b + 1],), target=1)
        alone = single.relevance["text"] if "text" in single.relevance else next(
            iter(single.relevance.values()))
        torch.testing.assert_close(relevance[b:b + 1], alone, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------- Qwen2-VL: unequal images per example
def _qwen2_vl_batch(images):
    r"""A batch whose example ``b`` holds images of the grids ``images[b]`` (``(t, h, w)``
    patches; 2×2 merged into ``h·w/4`` image tokens), pixels traced, padded on the right."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from arch_zoo import ARCHS, IMAGE_TOKEN

    model = ARCHS["qwen2_vl"]().model.eval()
    rows = []
    for b, grids in enumerate(images):
        parts = [torch.tensor([1])]
        for _, h, w in grids:
            parts += [torch.tensor([96]), torch.full((h * w // 4,), IMAGE_TOKEN),
                      torch.tensor([95])]
        parts.append(torch.arange(10 + b, 14 + b))
        rows.append(torch.cat(parts))
    n = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r, torch.zeros(n - len(r), dtype=torch.long)]) for r in rows])
    mask = (torch.arange(n) < torch.tensor([[len(r)] for r in rows])).long()
    grid = torch.tensor([g for grids in images for g in grids])
    pixels = torch.randn(int(grid.prod(dim=1).sum()), 96,
                         generator=torch.Generator().manual_seed(3))

    def forward(i, px, g, m):
        out = model(input_ids=i, pixel_values=px, image_grid_thw=g, attention_mask=m,
                    mm_token_type_ids=(i == IMAGE_TOKEN).int()).logits
        return out[torch.arange(i.shape[0]), m.sum(dim=1) - 1]

    return model, forward, ids, pixels, grid, mask


def test_qwen2_vl_images_of_different_sizes_are_refused_naming_the_module_at_fault():
    # the vision tower's rows are each example's (its score reads them: tests/
    # test_packed_towers.py), but the language model splices 4 and 8 image tokens, so its
    # first stream holds text and image tokens at different places per example
    model, forward, ids, pixels, grid, mask = _qwen2_vl_batch([[(1, 4, 4)], [(1, 4, 8)]])
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with pytest.raises(ValueError) as caught:
        explainer.explain((ids, pixels), target=3, additional_forward_args=(grid, mask))
    message = str(caught.value)
    assert "'model.language_model.layers.0.self_attn'" in message
    assert "laid out differently in each example" in message
    assert model.training is False and not model._forward_hooks


def test_qwen2_vl_packed_split_that_lines_up_but_is_wrong_gives_each_example_its_rows():
    # example 0: one image of 8 patches; example 1: 8 + 16. The equal split 16 / 16 crosses no
    # map, but rows 8-15 are example 1's: example 0 holds 8 rows, and its other slots are zero
    model, forward, ids, pixels, grid, mask = _qwen2_vl_batch(
        [[(1, 4, 2)], [(1, 4, 2), (1, 4, 4)]])
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    both = explainer.explain((ids, pixels), target=3, additional_forward_args=(grid, mask))
    image = both.relevance["image"]
    assert image.shape == (2, 24) and bool((image[0, 8:] == 0).all())
    n = int(mask[0].sum())
    one = HeterogenousAttentionAttribution(forward, model=model).explain(
        (ids[:1, :n], pixels[:8]), target=3, additional_forward_args=(grid[:1], mask[:1, :n]))
    torch.testing.assert_close(image[:1, :8], one.relevance["image"], atol=2e-6, rtol=1e-4)


def test_qwen2_vl_equal_images_per_example_are_explained_and_batch_equals_singles():
    model, forward, ids, pixels, grid, mask = _qwen2_vl_batch([[(1, 4, 4)], [(1, 4, 4)]])
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    batch = explainer.attribute((ids, pixels), target=3, additional_forward_args=(grid, mask))
    for b in range(2):
        rows = slice(16 * b, 16 * (b + 1))
        single = explainer.attribute((ids[b:b + 1], pixels[rows]), target=3,
                                     additional_forward_args=(grid[b:b + 1], mask[b:b + 1]))
        torch.testing.assert_close(batch[0][b:b + 1], single[0], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(batch[1][rows], single[1], atol=1e-6, rtol=1e-4)
        assert single[1].abs().sum() > 0


# ------------------------------------------------------------------- Pegasus-X: global tokens
def test_pegasus_x_global_keys_are_refused_naming_the_module_and_the_second_stream():
    from transformers import PegasusXConfig, PegasusXForConditionalGeneration

    torch.manual_seed(0)
    config = PegasusXConfig(
        vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
        decoder_ffn_dim=37, max_position_embeddings=64, num_global_tokens=4, block_size=4,
        stagger_local_blocks=False, pad_token_id=0, decoder_start_token_id=2)
    model = PegasusXForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 90, (2, 8), generator=generator)
    decoder = torch.randint(5, 90, (2, 3), generator=generator)

    def forward(i, d):
        return model(input_ids=i, decoder_input_ids=d).logits[:, -1]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with pytest.raises(NotImplementedError) as caught:
        explainer.explain((ids, decoder), target=3)
    message = str(caught.value)
    assert "'model.encoder.layers.0.self_attn'" in message
    # the 4 global tokens are the first 4 of the 4 + 4 keys of every block
    assert "key slots [0, 1, 2, 3] (of 8)" in message and "two streams" in message
    assert model.training is False and not any(m._forward_hooks for m in model.modules())


class _PaddedAttention(torch.nn.Module):
    def __init__(self, mask: bool, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.mask = heads, mask
        self.qkv = torch.nn.Linear(width, 3 * width)

    def probabilities(self, x, real):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / 8 ** 0.5
        if self.mask:  # the padded keys hidden
            scores = scores.masked_fill(torch.arange(n) >= real, float("-inf"))
        return scores.softmax(dim=-1), v

    def forward(self, x, real):
        attention, v = self.probabilities(x, real)
        return (attention @ v).transpose(1, 2).reshape(x.shape)


class _PaddedBlock(torch.nn.Module):
    r"""Pads its tokens with zero rows into one window of 10 slots (MaskFormer's Swin)."""

    def __init__(self, mask: bool) -> None:
        super().__init__()
        self.norm, self.attention = torch.nn.LayerNorm(16), _PaddedAttention(mask)

    def padded(self, x):
        return torch.nn.functional.pad(self.norm(x), (0, 0, 0, 10 - x.shape[1]))

    def forward(self, x):
        return x + self.attention(self.padded(x), x.shape[1])[:, :x.shape[1]]


class _PaddedToy(torch.nn.Module):
    def __init__(self, mask: bool) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.blocks = torch.nn.ModuleList([_PaddedBlock(mask), _PaddedBlock(mask)])
        self.head = torch.nn.Linear(16, 3)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))


def test_padded_window_with_masked_padding_is_laid_out_on_the_layers_tokens():
    torch.manual_seed(0)
    model = _PaddedToy(mask=True).eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(5))
    explainer = HeterogenousAttentionAttribution(model, model=model)
    batch = explainer.explain(ids, target=1, return_maps=True)
    # the source is the 6 tokens, not the 10 slots: padding is never a source
    assert tuple(batch.relevance["text"].shape) == (2, 6)
    assert (batch.relevance["text"].abs().sum(dim=1) > 0).all()
    with torch.no_grad():  # the model's own first map, its real rows and columns
        block = model.blocks[0]
        attention, _ = block.attention.probabilities(block.padded(model.embed(ids)), 6)
    (laid_out,) = [c for c in batch.call_maps if c.name == "blocks.0.attention"]
    torch.testing.assert_close(laid_out.attention, attention[:, :, :6, :6], atol=1e-6,
                               rtol=1e-5)
    for b in range(2):
        single = explainer.explain(ids[b:b + 1], target=1)
        torch.testing.assert_close(batch.relevance["text"][b:b + 1], single.relevance["text"],
                                   atol=1e-7, rtol=1e-5)


def test_padded_window_whose_padding_takes_attention_keeps_the_models_real_entries():
    # unmasked zero padding (MaskFormer's Swin, SAM): the padded slots take attention that goes
    # nowhere, so the laid-out map is the model's own over the real rows and columns
    # (tests/test_padded_windows.py checks the relevance against the rule)
    torch.manual_seed(0)
    model = _PaddedToy(mask=False).eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(5))
    explainer = HeterogenousAttentionAttribution(model, model=model)
    batch = explainer.explain(ids, target=1, return_maps=True)
    assert tuple(batch.relevance["text"].shape) == (2, 6)
    with torch.no_grad():
        block = model.blocks[0]
        attention, _ = block.attention.probabilities(block.padded(model.embed(ids)), 6)
    assert float(attention[:, :, :6, 6:].sum(-1).min()) > 0.05  # mass on padding
    (laid_out,) = [c for c in batch.call_maps if c.name == "blocks.0.attention"]
    torch.testing.assert_close(laid_out.attention, attention[:, :, :6, :6], atol=1e-6,
                               rtol=1e-5)
