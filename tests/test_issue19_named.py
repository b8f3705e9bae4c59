r"""Issue 19's named architectures that had no test of their own, each built tiny from a config
written here: OneFormer (minutes-long explain), CvT (convolutional projections), MobileViT
(later stages; a gradient that vanishes in the tester's weights), Nyströmformer and Reformer.
Each is explained, or refused / warned with a message naming the module and the reason."""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_hetattn import HeterogenousAttentionAttribution, capture

transformers = pytest.importorskip("transformers")


def _module_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _explain(model, inputs, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = HeterogenousAttentionAttribution(model, model=model).explain(inputs, **kwargs)
    return out, [str(w.message) for w in caught]


def _oneformer():
    torch.manual_seed(0)
    swin = transformers.SwinConfig(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.OneFormerConfig(
        backbone_config=swin, backbone=None, use_pretrained_backbone=False, hidden_dim=32,
        encoder_feedforward_dim=32, dim_feedforward=32, conv_dim=32, mask_dim=32,
        num_attention_heads=2, encoder_layers=1, decoder_layers=2, text_encoder_width=32,
        text_encoder_num_layers=1, text_encoder_context_length=6, text_encoder_vocab_size=50,
        text_encoder_proj_layers=1, num_queries=4, num_labels=3, max_seq_len=6, task_seq_len=6,
        use_auxiliary_loss=False)
    return transformers.OneFormerForUniversalSegmentation(config).eval()


def test_oneformer_explains_within_the_probe_budget_naming_the_blocked_module(monkeypatch):
    """The issue's explain ran past 4.5 minutes: the pixel decoder's keys mix tokens, and their
    exact token map took a backward pass per row. Now the passes stay within PROBE_PASSES and
    the module traced in blocks is named."""
    model = _oneformer()
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    task = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(2))

    def forward(pixel_values, task_inputs):
        return model(pixel_values=pixel_values, task_inputs=task_inputs).class_queries_logits[:, 0]

    passes, grad = [0], torch.autograd.grad

    def counted(*args, **kwargs):
        passes[0] += 1
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = HeterogenousAttentionAttribution(forward, model=model).explain(
            pixels, target=0, additional_forward_args=(task,))
    assert passes[0] <= capture.PROBE_PASSES + 16, passes
    blocked = [str(w.message) for w in caught if "PROBE_PASSES" in str(w.message)]
    assert blocked and all(any(f"'{n}'" in text for n in _module_names(model))
                           for text in blocked), blocked
    image = [r for r in out.relevance.values() if r.shape == (1, 256)]
    assert len(image) == 1 and torch.isfinite(image[0]).all() and image[0].abs().sum() > 0


def test_cvt_convolutional_projections_are_refused_naming_each_module():
    torch.manual_seed(0)
    config = transformers.CvtConfig(embed_dim=[8, 16, 16], num_heads=[1, 2, 2], depth=[1, 2, 3],
                                    drop_path_rate=[0.0, 0.0, 0.0], num_labels=3)
    model = transformers.CvtForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError) as refused:
        _explain(model, pixels, target=1)
    text = str(refused.value)
    attention = [n for n in _module_names(model) if n.endswith("attention.attention")]
    assert attention and all(f"'{n}'" in text for n in attention), text
    assert "computed from several tokens" in text


def tiny_mobilevit():
    """MobileViT at tester-like sizes and weights (32 px, three stages of 16 channels)."""
    torch.manual_seed(0)
    config = transformers.MobileViTConfig(
        image_size=32, patch_size=2, hidden_sizes=[16, 16, 16],
        neck_hidden_sizes=[8, 8, 16, 16, 16, 32, 32], num_attention_heads=2, num_labels=3,
        mlp_ratio=2.0)
    return transformers.MobileViTForImageClassification(config).eval()


def test_mobilevit_vanished_gradient_is_refused_naming_the_module_and_its_size():
    """MobileViT's later stages are left out by name (their slots mix tokens); with tester-like
    weights the objective's gradient at the first block is about 1e-31: the refusal says so,
    naming the module, where it said "zero" and named none."""
    model = tiny_mobilevit()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError) as refused:
        _explain(model, pixels, target=0)
    text = str(refused.value)
    assert any(f"'{n}'" in text for n in _module_names(model)), text
    assert "too small" in text and "per element" in text


def _nystromformer(landmarks: int):
    torch.manual_seed(0)
    config = transformers.NystromformerConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, segment_means_seq_len=8,
        num_landmarks=landmarks, num_labels=3)
    return transformers.NystromformerForSequenceClassification(config).eval()


def test_nystromformer_with_a_landmark_per_token_is_explained_batch_equal_to_singles():
    model = _nystromformer(8)  # as many landmarks as tokens: the exact softmax
    ids = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    out, _ = _explain(model, ids, target=1)
    (relevance,) = out.relevance.values()
    assert relevance.shape == ids.shape and torch.isfinite(relevance).all()
    assert relevance.abs().sum(dim=1).gt(0).all()
    for i in range(2):
        single, _ = _explain(model, ids[i:i + 1], target=1)
        torch.testing.assert_close(next(iter(single.relevance.values())), relevance[i:i + 1],
                                   atol=1e-5, rtol=1e-4)


def test_nystromformer_landmarks_are_refused_naming_the_module_and_why():
    """Fewer landmarks than tokens: each landmark is a mean of a segment of tokens, so its
    softmax slots are not tokens."""
    model = _nystromformer(4)
    ids = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError) as refused:
        _explain(model, ids, target=1)
    text = str(refused.value)
    assert "'nystromformer.encoder.layer.0.attention.self'" in text
    assert "several tokens" in text, text


def test_reformer_lsh_attention_is_refused_naming_the_module_and_why():
    torch.manual_seed(0)
    config = transformers.ReformerConfig(
        vocab_size=50, hidden_size=16, num_attention_heads=2, attention_head_size=8,
        attn_layers=["local", "lsh"], feed_forward_size=32, axial_pos_embds=False,
        max_position_embeddings=16, local_attn_chunk_length=4, lsh_attn_chunk_length=4,
        num_buckets=2, num_hashes=1, is_decoder=False, num_labels=3, pad_token_id=0)
    model = transformers.ReformerForSequenceClassification(config).eval()
    ids = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError) as refused:
        _explain(model, ids, target=1)
    text = str(refused.value)
    assert "self_attention'" in text and any(f"'{n}'" in text for n in _module_names(model))
    assert "no softmax over tokens" in text, text
