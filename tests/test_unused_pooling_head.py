"""A pooling head that runs but that the output does not use (issue 19, SigLIP2): the default
readout follows where the objective's gradient arrives (the tower's final tokens), the head is
reported once as not connected, and a model that uses its head still reads the head's probe."""

import warnings

import torch
from transformers import (
    Siglip2Config,
    Siglip2ForImageClassification,
    Siglip2TextConfig,
    Siglip2VisionConfig,
    Siglip2VisionModel,
)

from captum_hetattn import HeterogenousAttentionAttribution

N, DIM = 16, 3 * 4 * 4  # 16 patches of 4×4 pixels, 3 channels


def _vision(use_head: bool) -> Siglip2VisionConfig:
    return Siglip2VisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                               num_attention_heads=4, patch_size=4, num_patches=N,
                               vision_use_head=use_head)


def _classifier(use_head: bool) -> Siglip2ForImageClassification:
    torch.manual_seed(0)
    text = Siglip2TextConfig(vocab_size=99, hidden_size=32, intermediate_size=37,
                             num_hidden_layers=2, num_attention_heads=4, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0)
    config = Siglip2Config(text_config=text.to_dict(),
                           vision_config=_vision(use_head).to_dict(), num_labels=3)
    return Siglip2ForImageClassification(config).eval()


def _inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pixels = torch.randn(batch, N, DIM, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, N, dtype=torch.long)
    mask[1, -5:] = 0  # example 1 pads its last 5 patches
    shapes = torch.tensor([[4, 4]] * batch)
    return pixels, mask, shapes


def _func(model):
    def forward(pixels, mask, shapes):
        out = model(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes)
        return out.logits
    return forward


def _explain(model, pixels, mask, shapes, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = HeterogenousAttentionAttribution(_func(model), model=model)
        explanation = explainer.explain(pixels, target=1, additional_forward_args=(mask, shapes),
                                        **kwargs)
    return explanation, [str(w.message) for w in caught if w.category is UserWarning]


def _gradient_at_last_layer(model, pixels, mask, shapes) -> torch.Tensor:
    """‖∂logit_1/∂y[i]‖ at the output of the vision tower's last self-attention, per token:
    where the objective's gradient arrives (computed here with a hook, not by the engine)."""
    outputs = []
    layer = model.vision_model.encoder.layers[-1].self_attn
    handle = layer.register_forward_hook(lambda m, a, out: outputs.append(out[0]))
    try:
        logits = _func(model)(pixels, mask, shapes)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), outputs[0])
    norms = grad.norm(dim=-1)
    return norms / norms.sum(dim=1, keepdim=True)


def test_unused_pooling_head_reads_the_tower_where_the_gradient_arrives():
    """Siglip2ForImageClassification mean-pools the tower and never uses the attention-pooling
    head that runs anyway: the readout used to look at the head's probe only (no gradient) and
    refuse ("the objective's gradient is zero at the final tokens")."""
    model = _classifier(use_head=True)
    pixels, mask, shapes = _inputs()
    explanation, said = _explain(model, pixels, mask, shapes)
    assert set(explanation.readout) == {"image"}
    torch.testing.assert_close(explanation.readout["image"],
                               _gradient_at_last_layer(model, pixels, mask, shapes))
    assert explanation.readout["image"][1, -5:].abs().sum() == 0  # the padded patches
    # one warning names the head's call as not connected; its probe is not warned about again
    head = [m for m in said if "vision_model.head.attention" in m]
    assert len(head) == 1 and "no gradient" in head[0] and "not connected" in head[0]
    assert not any("source 'pooling'" in m for m in said), said
    relevance = explanation.relevance["image"]
    assert bool(torch.isfinite(relevance).all())
    assert (relevance[0] != 0).sum() > N // 2  # not all zero
    assert relevance[1, -5:].abs().sum() == 0  # padded patches get nothing


def test_unused_head_explains_like_the_model_without_the_head():
    """The head's call is no part of the explanation: the same weights without the head (the
    same logits) give the same relevance, and a batch equals its single examples."""
    with_head, without = _classifier(use_head=True), _classifier(use_head=False)
    missing, unexpected = without.load_state_dict(with_head.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("vision_model.head") for k in unexpected)
    pixels, mask, shapes = _inputs()
    torch.testing.assert_close(_func(with_head)(pixels, mask, shapes),
                               _func(without)(pixels, mask, shapes))
    explainer = HeterogenousAttentionAttribution(_func(with_head), model=with_head)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = explainer.attribute(pixels, target=1, additional_forward_args=(mask, shapes))
    reference = HeterogenousAttentionAttribution(_func(without), model=without).attribute(
        pixels, target=1, additional_forward_args=(mask, shapes))
    torch.testing.assert_close(batch, reference, atol=1e-6, rtol=1e-5)
    assert batch.abs().sum() > 0
    for example in range(pixels.shape[0]):
        one = slice(example, example + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alone = explainer.attribute(pixels[one], target=1,
                                        additional_forward_args=(mask[one], shapes[one]))
        torch.testing.assert_close(alone[0], batch[example], atol=1e-6, rtol=1e-5)


def test_model_that_uses_its_head_still_reads_the_probe():
    """Siglip2VisionModel scored on its pooler output (the head's probe): the probe is read,
    nothing is reported as not connected, the patches get relevance."""
    torch.manual_seed(0)
    model = Siglip2VisionModel(_vision(use_head=True)).eval()
    pixels, mask, shapes = _inputs()

    def pooled(pixels, mask, shapes):
        out = model(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes)
        return out.pooler_output

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = HeterogenousAttentionAttribution(pooled, model=model).explain(
            pixels, target=0, additional_forward_args=(mask, shapes))
    said = [str(w.message) for w in caught if w.category is UserWarning]
    assert not any("not connected" in m for m in said), said
    assert set(explanation.readout) == {"pooling"}  # the head's probe token
    (patches,) = [s for s in explanation.relevance if s != "pooling"]  # inferred graph's name
    relevance = explanation.relevance[patches]
    assert bool(torch.isfinite(relevance).all())
    assert (relevance[0] != 0).sum() > N // 2
    assert relevance[1, -5:].abs().sum() == 0  # padded patches get nothing


def test_siglip_v1_classifier_with_its_unused_head_is_explained():
    """SiglipForImageClassification (SigLIP v1) mean-pools too and leaves its head unused: the
    same mechanism reads the patches (it used to be refused the same way)."""
    from transformers import (
        SiglipConfig,
        SiglipForImageClassification,
        SiglipTextConfig,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    sizes = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = SiglipConfig(
        text_config=SiglipTextConfig(vocab_size=99, **sizes).to_dict(),
        vision_config=SiglipVisionConfig(image_size=16, patch_size=4, **sizes).to_dict(),
        num_labels=3)
    model = SiglipForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = HeterogenousAttentionAttribution(lambda p: model(pixel_values=p).logits,
                                                     model=model)
        batch = explainer.explain(pixels, target=1)
    said = [str(w.message) for w in caught if w.category is UserWarning]
    assert set(batch.readout) == {"image"}
    assert len([m for m in said if "'vision_model.head.attention'" in m]) == 1
    relevance = batch.relevance["image"]
    assert bool(torch.isfinite(relevance).all()) and (relevance[0] != 0).sum() > N // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = explainer.explain(pixels[1:], target=1).relevance["image"]
    torch.testing.assert_close(alone[0], relevance[1], atol=1e-6, rtol=1e-5)
