"""Inputs and models that used to give a silently wrong answer (issue 19): a non-finite input, a
readout on padding, a query row that every key is masked from, a position bias the flash kernel
does not see. Each is now refused by name, or explained exactly (flash equal to eager)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    SwitchTransformersConfig,
    SwitchTransformersForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
)

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.capture.backends import flash as flash_module
from captum_hetattn.capture.backends.flash import FlashAttention


def _vit():
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       num_labels=3)
    model = ViTForImageClassification(config).eval()
    return model, torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pixel_is_refused_naming_the_example(value):
    model, pixels = _vit()
    pixels[1, 2, 5, 3] = value
    explainer = HeterogenousAttentionAttribution(lambda x: model(pixel_values=x).logits,
                                                 model=model)
    with pytest.raises(ValueError, match=r"input 0 holds (nan|inf) at \(1, 2, 5, 3\) "
                                         r"\(example 1\)"):
        explainer.attribute(pixels, target=0)


def test_non_finite_inside_the_model_is_refused_naming_the_example():
    model, pixels = _vit()
    with torch.no_grad():  # an overflow inside: one example's embedding becomes infinite
        model.vit.embeddings.patch_embeddings.projection.bias[0] = float("inf")
    explainer = HeterogenousAttentionAttribution(lambda x: model(pixel_values=x).logits,
                                                 model=model)
    with pytest.raises(ValueError, match=r"'vit.layers.0.attention' \[call 0\] gives a NaN or an "
                                         r"infinity for example\(s\) \[0, 1\].*"
                                         r"'vit.embeddings.patch_embeddings.projection.bias'"):
        explainer.attribute(pixels, target=0)


def test_non_finite_weight_is_named():
    model, pixels = _vit()
    with torch.no_grad():
        model.vit.layers[1].attention.q_proj.weight[0, 0] = float("nan")
    explainer = HeterogenousAttentionAttribution(lambda x: model(pixel_values=x).logits,
                                                 model=model)
    with pytest.raises(ValueError, match=r"attention module 'vit.layers.1.attention' \[call 0\] "
                                         r"gives a NaN.*example\(s\) \[0, 1\].*"
                                         "'vit.layers.1.attention.q_proj.weight' holds a NaN"):
        explainer.attribute(pixels, target=0)


def _llama(left: bool):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=32)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, 50, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    if left:
        mask[1, :2] = 0
    else:
        mask[1, 3:] = 0
    return model, ids, mask


def test_readout_on_a_padding_token_is_refused_naming_token_and_example():
    model, ids, mask = _llama(left=False)  # example 1: tokens 3, 4 are padding
    explainer = HeterogenousAttentionAttribution(
        lambda i, m: model(input_ids=i, attention_mask=m).logits[:, -1], model=model)
    for readout in (None, 4):  # read from the gradient, or asked for by index
        with pytest.raises(ValueError, match=r"example 1 reads only padding: token\(s\) \[4\]"):
            explainer.attribute(ids, target=3, additional_forward_args=(mask,),
                                readout=readout)
    # the last real token of each example is fine
    attribution = explainer.attribute(ids, target=3, additional_forward_args=(mask,),
                                      readout="last")
    assert attribution[1, 3:].abs().sum() == 0 and attribution[1, :3].abs().sum() > 0


def test_fully_masked_example_is_refused_by_its_readout():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32)
    model = BertForSequenceClassification(config).eval()
    ids, mask = torch.randint(3, 50, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    mask[1] = 0  # every key of example 1 masked: no token is real
    explainer = HeterogenousAttentionAttribution(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model)
    with pytest.raises(ValueError, match=r"example 1 reads only padding: token\(s\) \[0\]"):
        explainer.attribute(ids, target=1, additional_forward_args=(mask,))


def _maps(explainer_kwargs, inputs, **kwargs):
    explainer = HeterogenousAttentionAttribution(**explainer_kwargs)
    return explainer.explain(inputs, return_maps=True, correction="full", **kwargs)


def _same_maps(eager, flash):
    for a, b in zip(eager.call_maps, flash.call_maps, strict=True):
        assert (a.name, a.call_index) == (b.name, b.call_index)
        torch.testing.assert_close(b.attention, a.attention, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.gradient, a.gradient, atol=1e-6, rtol=1e-5)
    for source, value in eager.relevance.items():
        torch.testing.assert_close(flash.relevance[source], value, atol=1e-6, rtol=1e-5)


def test_fully_masked_query_rows_record_zero_in_flash_and_eager(count_flash):
    """Left padding in a causal model: the padding rows see no key. sdpa returns zeros there;
    both captures record a zero row (no masked key gets relevance) and agree."""
    model, ids, mask = _llama(left=True)
    func = lambda i, m: model(input_ids=i, attention_mask=m).logits[:, -1]  # noqa: E731
    kwargs = dict(target=3, additional_forward_args=(mask,))
    eager = _maps(dict(forward_func=func, model=model, capture="eager"), ids, **kwargs)
    flash = _maps(dict(forward_func=func, model=model, capture="flash"), ids, **kwargs)
    assert count_flash
    _same_maps(eager, flash)
    for maps in (eager.call_maps, flash.call_maps):
        for call in maps:
            assert call.attention[1, :, :2].abs().sum() == 0  # the two padding rows
            assert call.attention[1, :, 2:, :2].abs().sum() == 0  # masked keys
    assert eager.relevance["text"][1, :2].abs().sum() == 0


@pytest.mark.parametrize("hidden", ["finite", "minus_inf", "padding"])
def test_flash_map_of_a_wholly_masked_row_is_what_the_model_computes(hidden):
    """A query row that no key is visible to: under a large finite mask (transformers' eager
    masks, BLT's cross-attention) the model's softmax is uniform and so is the recorded map;
    under ``-inf`` sdpa gives zero and so does the map; a padding query's row (square map, its
    own token seen by no query) records zero. Both kernels' backward maps equal eager."""
    gen = torch.Generator().manual_seed(0)
    n_q, n_k = (3, 3) if hidden == "padding" else (3, 4)
    query, key, value = (torch.randn(1, 2, n, 4, generator=gen, requires_grad=True)
                         for n in (n_q, n_k, n_k))
    low = float("-inf") if hidden == "minus_inf" else torch.finfo(torch.float32).min
    mask = torch.zeros(1, 1, n_q, n_k)
    mask[0, 0, 0] = low  # query row 0 sees no key
    if hidden == "padding":
        mask[0, 0, :, 0] = low  # token 0 is padding: no query sees it
    scores = torch.matmul(query, key.transpose(-1, -2)) * 0.5 + mask
    eager = torch.softmax(scores, -1).nan_to_num(0.0)  # the model's (sdpa's for -inf) map
    for fused in (True, False):
        handed = []
        with pytest.MonkeyPatch.context() as patch:
            if not fused:
                patch.setattr(flash_module, "_fused_cpu", lambda *a: False)
            output = FlashAttention.apply(query, key, value, mask,
                                          torch.zeros((), requires_grad=True), 0.5,
                                          lambda a, *_, into=handed: into.append(a))
            torch.autograd.grad(output.sum(), (query, key, value))
        torch.testing.assert_close(output, torch.matmul(eager, value))
        (maps,) = handed
        assert bool(torch.isfinite(maps).all())
        if hidden == "finite":
            torch.testing.assert_close(maps[0, :, 0], torch.full((2, n_k), 1 / n_k))
        else:
            assert maps[0, :, 0].abs().sum() == 0
        torch.testing.assert_close(maps[0, :, 1:], eager.detach()[0, :, 1:])


def test_flash_map_of_a_row_masked_with_minus_inf_is_zero_like_the_kernel():
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 2, 3, 4, generator=gen, requires_grad=True)
                         for _ in range(3))
    mask = torch.zeros(1, 1, 3, 3)
    mask[0, 0, 0] = float("-inf")  # query row 0 sees no key
    handed = []
    output = FlashAttention.apply(query, key, value, mask, torch.zeros((), requires_grad=True),
                                  0.5, lambda a, g, *_: handed.append(a))
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.5)
    torch.testing.assert_close(output, expected)
    assert output[0, :, 0].abs().sum() == 0
    grads = torch.autograd.grad(output.sum(), (query, key, value))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    (maps,) = handed
    assert bool(torch.isfinite(maps).all()) and maps[0, :, 0].abs().sum() == 0
    torch.testing.assert_close(maps[0, :, 1:].sum(-1), torch.ones(2, 2))


def _switch():
    # as transformers' SwitchTransformersModelTester builds it: tiny initial weights, so the
    # maps are near uniform and the position bias is most of what moves them
    torch.manual_seed(0)
    config = SwitchTransformersConfig(
        vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2,
        num_heads=4, num_experts=4, expert_capacity=100, relative_attention_num_buckets=8,
        initializer_factor=0.002, router_jitter_noise=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, encoder_sparse_step=1, decoder_sparse_step=1)
    return SwitchTransformersForConditionalGeneration(config).eval()


def _t5():
    torch.manual_seed(0)
    config = T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                      num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval()


def _seq2seq_maps(model, capture):
    ids = torch.randint(2, 99, (2, 7), generator=torch.Generator().manual_seed(1))
    decoder = torch.randint(2, 99, (2, 4), generator=torch.Generator().manual_seed(2))
    func = lambda i, d: model(input_ids=i, decoder_input_ids=d).logits[:, -1]  # noqa: E731
    return _maps(dict(forward_func=func, model=model, capture=capture), ids, target=3,
                 additional_forward_args=(decoder,))


@pytest.mark.parametrize("build", [_switch, _t5], ids=["switch_transformers", "t5"])
def test_flash_sees_the_position_bias(build, count_flash):
    model = build()
    eager = _seq2seq_maps(model, "eager")
    flash = _seq2seq_maps(model, "flash")
    assert len(count_flash) >= 4  # the bias is folded into the kernel's mask: flash, and exact
    _same_maps(eager, flash)
    first = eager.call_maps[0].attention[0, 0]
    assert not torch.allclose(first, torch.full_like(first, 1 / first.shape[-1]), atol=1e-7)


def test_flash_check_falls_back_where_the_kernel_misses_a_bias(monkeypatch, count_flash):
    """A kernel blind to the bias (as before this fix): the class check compares the maps'
    scores, sees the bias on this near-uniform model, and captures the classes eagerly."""
    monkeypatch.setattr(flash_module, "score_terms", lambda eager, kwargs: [])
    model = _switch()
    eager = _seq2seq_maps(model, "eager")
    flash = _seq2seq_maps(model, "flash")
    assert not count_flash
    _same_maps(eager, flash)
