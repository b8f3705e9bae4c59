r"""Packed vision towers (every image of a batch in one sequence, ``cu_seqlens`` / ``grid_thw``):
a tower that keeps a batch dimension of one (HunYuan-VL), MiniCPM-V's strip of patches, and
examples holding different images — explained where each example's rows are known, each equal
to the example explained alone, else refused naming the module (issue 19)."""

import sys
import warnings
from pathlib import Path

import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

from model_types import checks  # noqa: E402
from model_types.build import tiny_config  # noqa: E402


def _tower(model_type: str):
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    torch.manual_seed(0)
    return getattr(transformers, MODEL_MAPPING_NAMES[model_type])(tiny_config(model_type)).eval()


def _grid_tower(model_type: str, images: list[list[tuple[int, int, int]]]):
    r"""A ``grid_thw`` tower given example ``b``'s images ``images[b]`` packed in order, scored
    per example on the mean of its images' output rows; with the single examples' inputs."""
    model = _tower(model_type)
    grids = [torch.tensor(g) for g in images]
    counts = [int(g.prod(dim=1).sum()) for g in grids]
    pixels = torch.randn(sum(counts), 192, generator=torch.Generator().manual_seed(4))

    def forward_of(per_example):
        grid = torch.cat([grids[b] for b in per_example])

        def forward(pixel_values):
            state = model(pixel_values=pixel_values, grid_thw=grid).last_hidden_state[0]
            rows = state.split([counts[b] for b in per_example])
            return torch.stack([r.mean(0) for r in rows])[:, :4]

        return forward

    starts = [sum(counts[:b]) for b in range(len(counts))]
    singles = [(forward_of([b]), pixels[starts[b]:starts[b] + counts[b]])
               for b in range(len(counts))]
    return model, forward_of(range(len(counts))), pixels, singles


def _explain(model, forward, *inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HeterogenousAttentionAttribution(forward, model=model).explain(inputs, target=1)


@pytest.mark.parametrize("model_type", ["hunyuan_vl_vision", "hy_v4_vl_vision"])
def test_a_packed_tower_with_a_batch_dimension_of_one_equals_its_examples_alone(model_type):
    # HunYuan-VL's tower holds the packed rows as (1, B·r, d): each example's block is
    # confirmed by the pixel rows it reads and by the score that reads it
    model, forward, pixels, singles = _grid_tower(model_type, [[(1, 4, 4)], [(1, 4, 4)]])
    batch = _explain(model, forward, pixels)
    alone = [_explain(model, f, p) for f, p in singles]
    assert [tuple(r.shape) for r in batch.relevance.values()] == [(2, 16)]
    assert checks.batch_equals_singles(batch, alone) == ("ok", "")
    assert checks.finite_and_nonzero(batch)[0] == "ok"
    assert not model._forward_hooks and model.training is False


def _minicpm(model_type: str, images: int):
    model = _tower(model_type)
    patch = model.config.patch_size
    strip = torch.randn(1, 3, patch, 16 * images * patch,
                        generator=torch.Generator().manual_seed(7))

    def forward_of(count):
        sizes = torch.tensor([[4, 4]] * count)

        def forward(pixel_values):
            state = model(pixel_values=pixel_values, target_sizes=sizes).last_hidden_state
            return state.reshape(count, -1, state.shape[-1]).mean(1)[:, :4]

        return forward

    width = 16 * patch
    singles = [(forward_of(1), strip[..., b * width:(b + 1) * width]) for b in range(images)]
    return model, forward_of(images), strip, singles


@pytest.mark.parametrize("model_type", ["minicpm_ocr_vision", "minicpmv4_7_vision"])
def test_minicpm_strip_of_patches_is_split_along_its_width_and_equals_its_examples(model_type):
    model, forward, strip, singles = _minicpm(model_type, 2)
    batch = _explain(model, forward, strip)
    alone = [_explain(model, f, p) for f, p in singles]
    assert [tuple(r.shape) for r in batch.relevance.values()] == [(2, 16)]
    assert checks.batch_equals_singles(batch, alone) == ("ok", "")


def _equals_singles(batch, singles) -> None:
    r"""Example ``b`` of the batch equals example ``b`` explained alone on its own tokens, and
    the slots past them (an example with fewer rows than another) hold exactly zero."""
    assert set(batch.relevance) == {name for one in singles for name in one.relevance}
    for b, one in enumerate(singles):
        for name, alone in one.relevance.items():
            row, n = batch.relevance[name][b], alone.shape[1]
            assert alone.abs().sum() > 0 and row.shape[0] >= n
            torch.testing.assert_close(row[:n], alone[0], atol=2e-6, rtol=1e-4)
            assert bool((row[n:] == 0).all()), (name, b)


@pytest.mark.parametrize("images", [
    [[(1, 4, 4)], [(1, 4, 4), (1, 4, 4)]],  # one image, then two
    [[(1, 4, 4), (1, 4, 2)], [(1, 4, 2)]],  # 24 rows, then 8
    # 8 rows, then 24: the equal split 16 / 16 crosses no map and gives each example two
    # sequences of 8, but rows 8-15 are example 1's (its score reads them)
    [[(1, 4, 2)], [(1, 4, 2)] * 3],
    [[(1, 4, 4)], [(1, 4, 2), (1, 4, 4)], [(1, 4, 2)]],  # three examples: two bit planes
])
def test_a_packed_tower_with_unequal_images_per_example_equals_its_examples_alone(images):
    model, forward, pixels, singles = _grid_tower("hunyuan_vl_vision", images)
    batch = _explain(model, forward, pixels)
    (relevance,) = batch.relevance.values()
    counts = [sum(t * h * w for t, h, w in grids) for grids in images]
    assert relevance.shape == (len(images), max(counts))
    _equals_singles(batch, [_explain(model, f, p) for f, p in singles])


def test_a_packed_example_whose_score_reads_no_row_is_refused_by_name():
    # example 1 holds no image: its score is a constant of nothing the tower computed
    model = _tower("hunyuan_vl_vision")
    pixels = torch.randn(16, 192, generator=torch.Generator().manual_seed(4))
    grid = torch.tensor([[1, 4, 4]])

    def forward(pixel_values):
        state = model(pixel_values=pixel_values, grid_thw=grid).last_hidden_state[0]
        return torch.stack([state.mean(0), state.mean(0) * 0])[:, :4]

    with pytest.raises(NotImplementedError, match=r"'layers\.0\.self_attn'"):
        _explain(model, forward, pixels)


# ------------------------------------------------------------------ Qwen2-VL, batch of 2
def _qwen2_vl(images):
    from test_layouts_cases import _qwen2_vl_batch

    return _qwen2_vl_batch(images)


def _qwen2_vl_singles(images, forward, ids, pixels, grid, mask, traced):
    model_inputs = []
    start, first = 0, 0
    for b, grids in enumerate(images):
        rows = sum(t * h * w for t, h, w in grids)
        n = int(mask[b].sum())
        one = (ids[b:b + 1, :n], pixels[start:start + rows], grid[first:first + len(grids)],
               mask[b:b + 1, :n])
        model_inputs.append(((one[0], one[1]), one[2:]) if traced else ((one[0],), one[1:]))
        start, first = start + rows, first + len(grids)
    return model_inputs


@pytest.mark.parametrize("images", [
    [[(1, 4, 4)], [(1, 4, 4), (1, 4, 4)]],
    [[(1, 4, 2)], [(1, 4, 2), (1, 4, 4)]],
    [[(1, 4, 2)], [(1, 4, 2)] * 3],
])
@pytest.mark.parametrize("traced", [True, False])
def test_qwen2_vl_batch_of_two_with_unequal_images_equals_its_examples_alone(images, traced):
    model, forward, ids, pixels, grid, mask = _qwen2_vl(images)
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    inputs, extra = ((ids, pixels), (grid, mask)) if traced else ((ids,), (pixels, grid, mask))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = explainer.explain(inputs, target=3, additional_forward_args=extra)
        singles = [HeterogenousAttentionAttribution(forward, model=model).explain(
            one, target=3, additional_forward_args=rest)
            for one, rest in _qwen2_vl_singles(images, forward, ids, pixels, grid, mask, traced)]
    _equals_singles(batch, singles)
    assert model.training is False and not model._forward_hooks


def test_qwen2_vl_unequal_images_attribute_is_refused_naming_the_module_and_input():
    # explain() gives each example its rows; the pixel rows of examples of different sizes
    # cannot be laid out as (batch, elements) rows, which the input mapping needs
    model, forward, ids, pixels, grid, mask = _qwen2_vl([[(1, 4, 4)], [(1, 4, 4), (1, 4, 4)]])
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with pytest.raises(NotImplementedError) as caught:
        explainer.attribute((ids, pixels), target=3, additional_forward_args=(grid, mask))
    message = str(caught.value)
    assert "'model.visual.blocks.0.attn'" in message and "input(s) [1]" in message
    assert model.training is False and not model._forward_hooks


def test_qwen2_vl_images_spliced_at_other_positions_per_example_are_refused_by_name():
    # example 0's two images put its text later than example 1's: the language model's first
    # stream takes text and image tokens at different places per example (traced pixels)
    model, forward, ids, pixels, grid, mask = _qwen2_vl([[(1, 4, 4), (1, 4, 4)], [(1, 4, 4)]])
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    with pytest.raises((NotImplementedError, ValueError),
                       match=r"'model\.language_model\.layers\.0\.self_attn'"):
        explainer.explain((ids, pixels), target=3, additional_forward_args=(grid, mask))
    assert model.training is False and not model._forward_hooks


# ------------------------------------------------------------------ Pixtral: one masked map
def test_pixtral_images_of_different_sizes_in_one_block_masked_map_equal_their_examples():
    # Pixtral packs the patches of every image into one sequence and masks one map
    # block-diagonal: the entries across images are exactly zero, so each image is laid out
    # over its own example's rows (16 and 8 patches)
    model = _tower("pixtral")
    patch = model.config.patch_size
    sizes = torch.tensor([[32, 32], [32, 16]])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    pixels[1, :, :, 16:] = 0.0

    def forward(pixel_values, image_sizes):
        state = model(pixel_values=pixel_values, image_sizes=image_sizes).last_hidden_state[0]
        counts = (image_sizes // patch).prod(-1).tolist()
        return torch.stack([r.mean(0) for r in state.split(counts)])[:, :4]

    def explain(x, s):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HeterogenousAttentionAttribution(forward, model=model).explain(
                (x,), target=1, additional_forward_args=(s,))

    batch = explain(pixels, sizes)
    assert [tuple(r.shape) for r in batch.relevance.values()] == [(2, 16)]
    _equals_singles(batch, [explain(pixels[b:b + 1, :, :, :32 // (b + 1)], sizes[b:b + 1])
                            for b in range(2)])
