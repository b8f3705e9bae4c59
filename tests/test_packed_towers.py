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


def test_a_packed_split_that_lines_up_but_gives_one_example_anothers_image_is_refused():
    # example 0: one image of 8 rows; example 1: three. The equal split 16 / 16 crosses no map
    # and gives each example two sequences of 8, but rows 8-15 are example 1's: its score
    # reads them, which the engine checks before laying the call out
    model, forward, pixels, _ = _grid_tower("hunyuan_vl_vision",
                                            [[(1, 4, 2)], [(1, 4, 2)] * 3])
    with pytest.raises(NotImplementedError) as caught:
        _explain(model, forward, pixels)
    message = str(caught.value)
    assert "'layers.0.self_attn'" in message
    assert "sequence 1 (rows 8-15) falls to example 0" in message
    assert "example 1's score reads sequence(s) [1" in message


def test_a_packed_tower_with_unequal_images_per_example_is_refused_by_name():
    model, forward, pixels, _ = _grid_tower("hunyuan_vl_vision",
                                            [[(1, 4, 4)], [(1, 4, 4), (1, 4, 4)]])
    with pytest.raises(NotImplementedError, match=r"'layers\.0\.self_attn'.*different numbers"):
        _explain(model, forward, pixels)


# ------------------------------------------------------------------ Qwen2-VL, batch of 2
def _qwen2_vl(images):
    from test_layouts_cases import _qwen2_vl_batch

    return _qwen2_vl_batch(images)


@pytest.mark.parametrize("images", [
    [[(1, 4, 4)], [(1, 4, 4), (1, 4, 4)]],
    [[(1, 4, 4), (1, 4, 4)], [(1, 4, 4)]],
    [[(1, 4, 2)], [(1, 4, 2)] * 3],
])
@pytest.mark.parametrize("traced", [True, False])
def test_qwen2_vl_batch_of_two_with_unequal_images_is_refused_naming_the_vision_attention(
        images, traced):
    model, forward, ids, pixels, grid, mask = _qwen2_vl(images)
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    inputs, extra = ((ids, pixels), (grid, mask)) if traced else ((ids,), (pixels, grid, mask))
    with pytest.raises(NotImplementedError, match=r"'model\.visual\.blocks\.0\.attn'"):
        explainer.explain(inputs, target=3, additional_forward_args=extra)
    assert model.training is False and not model._forward_hooks
