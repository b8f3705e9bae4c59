r"""ViLT over pictures of different sizes: the smaller picture is filled with random repeats of
its padding patches, so a patch feeds several rows of the joint stream. ``attribute()`` with a
raw ViLT model must not lay ``pixel_values`` out by shape then (a grid over rows that are in
random order and repeated): it refuses, naming the input and the patch embedding. Dropped
patches (``max_image_length``) and same-size batches map exactly through the traced rows."""

import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution

pytestmark = pytest.mark.usefixtures("one_thread")

PATCH = 8


def _vilt(**extra):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.ViltConfig(vocab_size=30, image_size=32, patch_size=PATCH,
                           max_position_embeddings=16, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=37, num_labels=3, **extra)
    model = tf.ViltForQuestionAnswering(config).eval()

    def forward(pixels, ids, mask, pixel_mask):
        return model(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                     pixel_mask=pixel_mask).logits

    return model, forward


def _batch(widths):
    r"""Two questions and two pictures on a 32×32 canvas, picture ``b`` ``widths[b]`` wide
    (the rest is padding, zero pixels and ``pixel_mask`` 0, as ViltImageProcessor pads)."""
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(5, 30, (2, 5), generator=generator)
    mask = torch.ones(2, 5, dtype=torch.long)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    pixel_mask = torch.zeros(2, 32, 32, dtype=torch.long)
    for b, width in enumerate(widths):
        pixel_mask[b, :, :width] = 1
        pixels[b, :, :, width:] = 0
    return pixels, (ids, mask, pixel_mask)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_mixed_sizes_refused_naming_input_and_patch_embedding():
    model, forward = _vilt()
    pixels, extra = _batch((32, 8))  # 16 patches against 4 real + 12 drawn from 12 padding
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    torch.manual_seed(1)  # ViLT draws its patches from the global generator
    with pytest.raises(ValueError, match=r"input 0 of shape \(2, 3, 32, 32\) is read by "
                                         r"'vilt\.embeddings\.patch_embeddings\.projection'.*"
                                         r"repeats in stream"):
        explainer.attribute(pixels, target=0, additional_forward_args=extra)
    assert _hooks(model) == 0 and not model.training  # restored after the refusal
    # the token relevance does not lay pixels out: explain() still answers
    torch.manual_seed(1)
    explanation = explainer.explain(pixels, target=0, additional_forward_args=extra)
    assert all(bool(r.isfinite().all()) for r in explanation.relevance.values())
    # attribute_and_explain refuses by the same path, and so does a call after the first (the
    # explainer's cache of probes in use)
    for seed in (1, 5):
        torch.manual_seed(seed)
        with pytest.raises(ValueError, match="repeats in stream"):
            explainer.attribute_and_explain(pixels, target=0, additional_forward_args=extra)


def _patch_totals(attribution):
    r"""``(B, rows, cols)``: each patch's summed |relevance| over its pixels and channels."""
    batch, _, height, width = attribution.shape
    cells = attribution.abs().sum(1).view(batch, height // PATCH, PATCH, width // PATCH, PATCH)
    return cells.sum((2, 4))


def test_same_size_batch_maps_through_traced_rows_not_a_grid():
    model, forward = _vilt()
    pixels, extra = _batch((32, 32))
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    torch.manual_seed(2)
    attribution = explainer.attribute(pixels, target=0, additional_forward_args=extra)
    # each patch's pixels carry one value per patch (the row it fed), whatever order ViLT drew
    per_pixel = attribution.view(2, 3, 4, PATCH, 4, PATCH)
    assert torch.allclose(per_pixel, per_pixel[:, :1, :, :1, :, :1].expand_as(per_pixel))
    torch.manual_seed(2)
    explanation = explainer.explain(pixels, target=0, additional_forward_args=extra)
    # the patches' values are the image rows' relevance (after the image [CLS]), in ViLT's order
    patches = per_pixel[:, 0, :, 0, :, 0].flatten(1)
    rows = explanation.relevance["image"][:, 1:]
    assert rows.abs().sum() > 0
    torch.testing.assert_close(patches.sort(1).values, rows.sort(1).values)


def test_dropped_patches_get_nothing():
    model, forward = _vilt(max_image_length=5)  # 16 patches read as 5 drawn at random
    pixels, extra = _batch((32, 32))
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    torch.manual_seed(3)
    totals = _patch_totals(explainer.attribute(pixels, target=0, additional_forward_args=extra))
    read = (totals > 0).flatten(1).sum(1)
    assert bool((read <= 5).all()) and bool((read >= 1).all()), read
