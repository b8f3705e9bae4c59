"""Capture-side cases of issue 19, each on a model built in the test: a cost guard on the data
flow's probes (OneFormer's minutes-long explain), and what it leaves exact."""

import warnings

import pytest
import torch
from tiny_models import SelfAttention
from torch import nn

import captum_hetattn.capture as capture
from captum_hetattn import HeterogenousAttentionAttribution


class ConvBetween(nn.Module):
    """Two attention layers with a convolution over the tokens between them (each token feeds
    three rows of the second layer's input: a pixel decoder's shape, in one dimension)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.first, self.second = SelfAttention(), SelfAttention()
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        hidden = self.embed(x)
        hidden = hidden + self.first(hidden)
        hidden = self.conv(hidden.transpose(1, 2)).transpose(1, 2)
        hidden = hidden + self.second(hidden)
        return self.head(hidden.mean(1))


def _counting_passes(monkeypatch) -> list[int]:
    calls = [0]
    grad = torch.autograd.grad

    def counted(*args, **kwargs):
        calls[0] += 1
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    return calls


def test_cost_guard_traces_a_mixing_junction_in_blocks_past_the_budget(monkeypatch):
    """OneFormer's explain ran for minutes (a forward of 0.1 s): the keys of its decoder are a
    pixel decoder's output, where every token feeds several rows, so the exact token map took
    one backward pass per row per backbone stage (thousands). Past PROBE_PASSES the rows are
    traced in blocks, with a warning naming the module; within it the map stays exact."""
    torch.manual_seed(0)
    model = ConvBetween().eval()
    x = torch.randn(2, 40, 4, generator=torch.Generator().manual_seed(1))
    runs = {}
    for limit in (None, 8):
        monkeypatch.setattr(capture, "PROBE_PASSES", limit)
        passes = _counting_passes(monkeypatch)
        explainer = HeterogenousAttentionAttribution(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs[limit] = explainer.attribute(x, target=1)
        monkeypatch.undo()
        texts = [str(w.message) for w in caught if "PROBE_PASSES" in str(w.message)]
        runs[limit, "passes"], runs[limit, "warned"] = passes[0], texts
    assert runs[None, "warned"] == []
    (text,) = runs[8, "warned"]
    assert "attention module 'second'" in text and "40 rows" in text
    assert "blocks of 5 consecutive rows" in text and "takes 40 backward passes" in text
    assert runs[8, "passes"] <= runs[None, "passes"] - 40 + 8
    exact, blocked = runs[None], runs[8]
    assert bool(torch.isfinite(blocked).all()) and bool((blocked != 0).any())
    assert not torch.allclose(exact, blocked)  # spread over blocks: another (warned) answer
    monkeypatch.setattr(capture, "PROBE_PASSES", 256)  # the default: 40 passes are within it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(HeterogenousAttentionAttribution(model).attribute(
            x, target=1), exact)


def _bailing_hybrid():
    from transformers import BailingHybridConfig, BailingHybridForCausalLM

    torch.manual_seed(0)
    config = BailingHybridConfig(
        vocab_size=99, hidden_size=32, intermediate_size=37, moe_intermediate_size=16,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, head_dim=8,
        kv_lora_rank=8, qk_rope_head_dim=4, v_head_dim=8, qk_nope_head_dim=4, n_group=1,
        topk_group=1, num_experts_per_tok=2, num_local_experts=4, first_k_dense_replace=1,
        layer_group_size=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1)
    return BailingHybridForCausalLM(config).eval()


def test_hybrid_model_binds_its_softmax_layers_and_names_the_linear_ones():
    """Bailing-hybrid runs softmax attention in one layer of two here (one of four in the
    released models) and linear attention (`BailingHybridDeltaAttention`, no softmax) in the
    others, all as `model.layers.N.self_attn`: the inferred graph used to bind its pattern to
    the linear layers too ('module model.layers.0.self_attn was never called... check the
    graph'). Now each linear layer is named as left out (relevance passes through it as
    through an MLP) and the graph binds the softmax layers only."""
    model = _bailing_hybrid()
    assert model.config.layer_types == ["linear_attention", "full_attention"] * 2
    ids = torch.randint(2, 99, (2, 7), generator=torch.Generator().manual_seed(2))
    explainer = HeterogenousAttentionAttribution(lambda i: model(input_ids=i).logits[:, -1],
                                                 model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explained = explainer.explain(ids, target=5, return_maps=True)
    left_out = sorted(m for w in caught for m in ("model.layers.0.self_attn",
                                                   "model.layers.2.self_attn")
                      if f"'{m}' is left out" in str(w.message))
    assert left_out == ["model.layers.0.self_attn", "model.layers.2.self_attn"]
    assert all("computed no softmax over tokens" in str(w.message) for w in caught
               if "is left out" in str(w.message))
    assert [c.name for c in explained.call_maps] == ["model.layers.1.self_attn",
                                                     "model.layers.3.self_attn"]
    relevance = explained.relevance["text"]
    assert bool(torch.isfinite(relevance).all()) and bool((relevance[:, :-1] != 0).all())
    for example in range(2):
        alone = explainer.explain(ids[example:example + 1], target=5).relevance["text"]
        torch.testing.assert_close(alone[0], relevance[example], atol=1e-6, rtol=1e-5)


def _explain_pixels(model, **kwargs):
    """An image classifier's explainer, its 2 × 64 × 64 pixels, their explanation of target 1
    and the warning messages it gave."""
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    explainer = HeterogenousAttentionAttribution(lambda p: model(pixel_values=p).logits,
                                                 model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explained = explainer.explain(pixels, target=1, **kwargs)
    return explainer, pixels, explained, [str(w.message) for w in caught]


def test_hiera_pooled_queries_are_refused_by_name_and_the_rest_explained():
    """Hiera's calls at a stage change pool their queries (a max over each 2×2 group of the
    query projection): its query slots are new tokens, not tokens of its input. Those calls
    are named with that reason (it used to read as channel attention only); the mask-unit
    (windowed) and global calls are explained, a batch like its examples."""
    from transformers import HieraConfig, HieraForImageClassification

    torch.manual_seed(0)
    model = HieraForImageClassification(HieraConfig(
        embed_dim=8, image_size=[64, 64], patch_size=[7, 7], patch_stride=[4, 4],
        patch_padding=[3, 3], mlp_ratio=1.0, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
        embed_dim_multiplier=2.0, num_query_pool=2, query_stride=[2, 2],
        masked_unit_size=[8, 8], masked_unit_attention=[True, True, False, False],
        num_labels=3)).eval()
    explainer, pixels, explained, messages = _explain_pixels(model, return_maps=True)
    pooled = [m for m in messages if "query pooling" in m]
    assert len(pooled) == 2
    assert "'hiera.encoder.stages.1.layers.0.attn' is left out" in pooled[0]
    assert "'hiera.encoder.stages.2.layers.0.attn' is left out" in pooled[1]
    assert [(c.name, tuple(c.attention.shape)) for c in explained.call_maps] == [
        ("hiera.encoder.stages.0.layers.0.attn", (2, 1, 256, 256)),  # 4 mask units, folded
        ("hiera.encoder.stages.3.layers.0.attn", (2, 1, 16, 16))]
    relevance = explained.relevance["image"]
    assert bool(torch.isfinite(relevance).all()) and bool((relevance != 0).any())
    alone = explainer.explain(pixels[1:], target=1).relevance["image"]
    torch.testing.assert_close(alone[0], relevance[1], atol=1e-6, rtol=1e-5)


def _sam_vision(implementation: str):
    from transformers import SamVisionConfig, SamVisionModel

    config = SamVisionConfig(
        hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, image_size=64, patch_size=8, mlp_dim=40, window_size=4,
        global_attn_indexes=[1], num_pos_feats=8)
    config._attn_implementation = implementation
    torch.manual_seed(0)
    return SamVisionModel(config).eval()


def test_sam_hand_called_sdpa_is_captured_equal_to_its_eager_class():
    """SAM's vision attention (`SamVisionSdpaAttention`) calls F.scaled_dot_product_attention
    itself with a relative-position bias as its mask (one windowed, one global layer): it used
    to be left out as a fused kernel. Its maps and gradients now equal those of the eager class
    (`SamVisionAttention`, same weights), and so does the relevance."""
    fused, eager = _sam_vision("sdpa"), _sam_vision("eager")
    eager.load_state_dict(fused.state_dict())
    assert type(fused.vision_encoder.layers[0].attn).__name__ == "SamVisionSdpaAttention"
    assert type(eager.vision_encoder.layers[0].attn).__name__ == "SamVisionAttention"
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    explained = {}
    for name, model in (("sdpa", fused), ("eager", eager)):
        explainer = HeterogenousAttentionAttribution(
            lambda p, m=model: m(pixel_values=p).last_hidden_state.mean((2, 3)), model=model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            explained[name] = explainer.explain(pixels, target=1, return_maps=True)
        assert not any("left out" in str(w.message) for w in caught)
    got, want = explained["sdpa"], explained["eager"]
    assert [c.name for c in got.call_maps] == [f"vision_encoder.layers.{i}.attn" for i in (0, 1)]
    for a, b in zip(got.call_maps, want.call_maps, strict=True):
        torch.testing.assert_close(a.attention, b.attention, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.gradient, b.gradient, atol=1e-6, rtol=1e-5)
        assert bool((a.gradient != 0).any())
    torch.testing.assert_close(got.relevance["image"], want.relevance["image"], atol=1e-6,
                               rtol=1e-5)


class _CausalSdpaAttention(nn.Module):
    """A hand-written causal attention through the kernel, a boolean padding mask and grouped
    keys (enable_gqa): every way the kernel takes a mask."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.q, self.kv = 4, nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, hidden, seen):
        b, n, _ = hidden.shape
        q = self.q(hidden).view(b, n, 4, 4).transpose(1, 2)
        k, v = self.kv(hidden).view(b, n, 2, 2, 4).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=seen[:, None, None, :], is_causal=True, enable_gqa=True)
        return hidden + out.transpose(1, 2).flatten(2)


def test_hand_called_sdpa_masks_equal_the_kernel():
    torch.manual_seed(0)
    attention = _CausalSdpaAttention().eval()
    model = nn.Sequential()  # a container for the recorder; the forward is the lambda
    model.attention = attention
    hidden = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    seen = torch.tensor([[True] * 5, [True, True, True, False, False]])
    from captum_hetattn.capture import AttentionRecorder

    with torch.no_grad():
        kernel = attention(hidden, seen)
    with AttentionRecorder(model) as recorder:
        out = attention(hidden, seen)
        recorder.compute_gradients(out[:, -1].sum())
    torch.testing.assert_close(out, kernel)
    (record,) = recorder.records
    assert record.name == "attention" and record.shape == (2, 4, 5, 5)
    upper = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert bool((record.attention[..., upper] == 0).all())  # causal
    assert bool((record.attention[1, :, :, 3:] == 0).all())  # padded keys of example 1
    torch.testing.assert_close(record.attention.sum(-1), torch.ones(2, 4, 5))
    assert bool((record.gradient[:, :, -1] != 0).any())


def _bert_model(layers: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers,
                                num_attention_heads=2, intermediate_size=32)).eval()


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_a_score_from_an_earlier_state_is_explained_where_it_reads(pool):
    """A score read from `hidden_states[-2]` does not depend on the last layer: it used to be
    refused ('the objective's gradient is zero at the final tokens'). The stream is now read at
    the latest call the score is computed from: the explanation equals that of the model cut
    after that layer (same weights), and the last layer is named as getting no gradient."""
    model, cut = _bert_model(3), _bert_model(2)
    cut.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))

    def read(states):
        return (states[:, 0] if pool == "cls" else states.mean(1))[:, :3]

    early = HeterogenousAttentionAttribution(
        lambda i: read(model(input_ids=i, output_hidden_states=True).hidden_states[-2]),
        model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = early.explain(ids, target=1)
    (text,) = [str(w.message) for w in caught if "no gradient" in str(w.message)]
    assert text.startswith("attention module 'encoder.layer.2.attention.self' got no gradient")
    assert "hidden_states[-2]" in text
    want = HeterogenousAttentionAttribution(lambda i: read(cut(input_ids=i).last_hidden_state),
                                            model=cut).explain(ids, target=1)
    torch.testing.assert_close(got.relevance["text"], want.relevance["text"])
    torch.testing.assert_close(got.readout["text"], want.readout["text"])
    assert bool((got.relevance["text"] != 0).any())


def test_detr_constant_queries_name_the_call_without_gradient():
    """DETR's first decoder layer attends over constant (zero) queries: its values are all
    zero, so it gets no gradient; it is named, and the image is explained."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    torch.manual_seed(0)
    config = DetrConfig(
        use_timm_backbone=False, backbone=None, use_pretrained_backbone=False,
        backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8],
                                     depths=[1, 1, 1, 1], out_features=["stage4"]),
        d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=20, decoder_ffn_dim=20, num_queries=5,
        num_labels=3)
    model = DetrForObjectDetection(config).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    explainer = HeterogenousAttentionAttribution(lambda p: model(pixel_values=p).logits[:, 0],
                                                 model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explained = explainer.explain(pixels, target=1)
    assert any(str(w.message).startswith(
        "attention module 'model.decoder.layers.0.self_attn' got no gradient") for w in caught)
    image = explained.relevance["image"]
    assert bool(torch.isfinite(image).all()) and bool((image.abs().sum(1) > 0).all())


def _text_classifier(name: str):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, num_labels=3)
    if name == "convbert":
        config = transformers.ConvBertConfig(**common, embedding_size=32, head_ratio=2,
                                             conv_kernel_size=3, num_groups=1)
        return transformers.ConvBertForSequenceClassification(config).eval()
    config = transformers.IBertConfig(**common)
    return transformers.IBertForSequenceClassification(config).eval()


@pytest.mark.parametrize("name", ["convbert", "ibert"])
def test_sweep_text_classifiers_are_explained_like_single_examples(name):
    """From the sweep over model types: ConvBERT's attention module also computes a
    dynamic-convolution softmax (left out, named), which used to drop the module from what the
    inferred graph may bind ('matches no module of the model'); I-BERT's attention returns
    `((context,), (scale,))`, whose context was not found ('the objective's gradient is zero at
    the final tokens'). Both are explained, a batch like its examples."""
    model = _text_classifier(name)
    ids = torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    explainer = HeterogenousAttentionAttribution(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explained = explainer.explain(ids, target=1, additional_forward_args=(mask,),
                                      return_maps=True)
    prefix = f"{name}.encoder.layer"
    assert [c.name for c in explained.call_maps] == [f"{prefix}.{i}.attention.self"
                                                      for i in (0, 1)]
    left_out = [str(w.message) for w in caught if "is left out" in str(w.message)]
    if name == "convbert":  # its convolution kernel's softmax, named
        assert left_out and all(f"'{prefix}." in m for m in left_out)
    else:
        assert left_out == []
    relevance = explained.relevance["text"]
    assert bool(torch.isfinite(relevance).all()) and bool((relevance[0, 1:] != 0).all())
    assert relevance[1, -2:].abs().sum() == 0  # padding
    for example in range(2):
        alone = explainer.explain(ids[example:example + 1], target=1,
                                  additional_forward_args=(mask[example:example + 1],))
        torch.testing.assert_close(alone.relevance["text"][0], relevance[example], atol=1e-6,
                                   rtol=1e-5)


def test_differential_attention_records_its_two_calls_as_softmax_maps():
    """DiffLlama hands the same queries and keys to the attention function twice per call (two
    halves of the values): the two maps were folded as parts of one call into twice the
    softmax, silently. Each call is now a call of its own (its map the model's own, rows
    summing to 1), flash equal to eager, and the module is named."""
    from transformers import DiffLlamaConfig, DiffLlamaForCausalLM

    torch.manual_seed(0)
    model = DiffLlamaForCausalLM(DiffLlamaConfig(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()
    ids = torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.config._attn_implementation_internal = "eager"
        own = model(input_ids=ids, output_attentions=True).attentions
        model.config._attn_implementation_internal = "sdpa"
    explained = {}
    for how in ("eager", "flash"):
        explainer = HeterogenousAttentionAttribution(lambda i: model(input_ids=i).logits[:, -1],
                                                     model=model, capture=how)
        with pytest.warns(RuntimeWarning, match=r"2 attention module\(s\).*same queries and "
                                                r"keys.*twice.*first: 'model.layers.0.self_attn'"):
            explained[how] = explainer.explain(ids, target=5, return_maps=True)
    eager, flash = explained["eager"], explained["flash"]
    assert [(c.name, c.call_index) for c in eager.call_maps] == [
        (f"model.layers.{layer}.self_attn", index) for layer in (0, 1) for index in (0, 1)]
    for call in eager.call_maps:
        torch.testing.assert_close(call.attention, own[int(call.name.split(".")[2])])
    for a, b in zip(eager.call_maps, flash.call_maps, strict=True):
        torch.testing.assert_close(b.attention, a.attention, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.gradient, a.gradient, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(flash.relevance["text"], eager.relevance["text"], atol=1e-6,
                               rtol=1e-5)


class _ScanMixer(nn.Module):
    """A state-space-like token mixer (a causal running mean): no softmax, no *Attention*
    class name, so the capture does not track it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, hidden):
        steps = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[:, None]
        return self.proj(hidden.cumsum(1) / steps)


class _MixerLayer(nn.Module):
    def __init__(self, attention: bool) -> None:
        super().__init__()
        self.mixer = SelfAttention() if attention else _ScanMixer()

    def forward(self, hidden):
        return hidden + self.mixer(hidden)


class _Hybrid(nn.Module):
    """NemotronH's shape: every layer's token mixer is `layers.N.mixer`, attention in some."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(4, 16), nn.Linear(16, 3)
        self.layers = nn.ModuleList(_MixerLayer(i % 2 == 1) for i in range(4))

    def forward(self, x):
        hidden = self.embed(x)
        for layer in self.layers:
            hidden = layer(hidden)
        return self.head(hidden.mean(1))


def test_inferred_patterns_cover_only_modules_that_record():
    """`layers.*.mixer` would also bind the state-space mixers (never recorded: 'module
    layers.0.mixer was never called'); the inferred graph names the attention ones instead,
    and infer_graph's graph binds too."""
    from captum_hetattn import infer_graph

    torch.manual_seed(0)
    model = _Hybrid().eval()
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
    explainer = HeterogenousAttentionAttribution(model)
    explained = explainer.explain(x, target=1, return_maps=True)
    assert [n.module for n in explainer.graph.nodes] == ["layers.1.mixer", "layers.3.mixer"]
    assert [c.name for c in explained.call_maps] == ["layers.1.mixer", "layers.3.mixer"]
    graph = infer_graph(model, x)
    assert [n.module for n in graph.nodes] == ["layers.1.mixer", "layers.3.mixer"]
    given = HeterogenousAttentionAttribution(model, graph=graph).explain(x, target=1)
    torch.testing.assert_close(given.relevance, explained.relevance)


class _MaskedSoftmax(torch.autograd.Function):
    """DeBERTa's / SEW-D's XSoftmax: the softmax runs inside a custom Function (autograd off)
    and the tensor it returns becomes the Function's output."""

    @staticmethod
    def forward(ctx, scores):
        out = torch.softmax(scores, -1)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return out * (grad - (grad * out).sum(-1, keepdim=True))


class _FunctionAttention(SelfAttention):
    def forward(self, hidden):
        q, k, v = self.qkv(hidden).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        weights = _MaskedSoftmax.apply(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5)
        return self.out((weights @ v).transpose(1, 2).flatten(2))


class _TwoLayers(nn.Module):
    def __init__(self, attention: type) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(4, 16), nn.Linear(16, 3)
        self.first, self.second = attention(), attention()

    def forward(self, x):
        hidden = self.embed(x)
        hidden = hidden + self.first(hidden)
        hidden = hidden + self.second(hidden)
        return self.head(hidden[:, 0])


def test_a_softmax_inside_a_custom_autograd_function_is_captured():
    """A softmax computed inside a torch.autograd.Function runs with autograd off: it was
    recorded as a map without gradient (SEW-D crashed: 'element 0 of tensors does not require
    grad'). The map is hooked once the Function returns it: maps, gradients and relevance
    equal those of the same model with a plain softmax."""
    torch.manual_seed(0)
    custom = _TwoLayers(_FunctionAttention).eval()
    plain = _TwoLayers(SelfAttention).eval()
    plain.load_state_dict(custom.state_dict())
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
    got, want = (HeterogenousAttentionAttribution(m).explain(x, target=1, return_maps=True)
                 for m in (custom, plain))
    assert [c.name for c in got.call_maps] == ["first", "second"]
    for a, b in zip(got.call_maps, want.call_maps, strict=True):
        torch.testing.assert_close(a.attention, b.attention)
        torch.testing.assert_close(a.gradient, b.gradient)
        assert bool((a.gradient != 0).any())
    torch.testing.assert_close(got.relevance, want.relevance)


def test_sew_d_xsoftmax_is_explained_like_single_examples():
    from transformers import SEWDConfig, SEWDForSequenceClassification

    torch.manual_seed(0)
    model = SEWDForSequenceClassification(SEWDConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        conv_dim=(16, 16), conv_stride=(4, 4), conv_kernel=(8, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, squeeze_factor=2, max_position_embeddings=64,
        position_buckets=16, num_labels=3)).eval()
    wave = torch.randn(2, 400, generator=torch.Generator().manual_seed(1))
    explainer = HeterogenousAttentionAttribution(lambda w: model(input_values=w).logits,
                                                 model=model)
    explained = explainer.explain(wave, target=1, return_maps=True)
    assert [c.name for c in explained.call_maps] == [
        f"sew_d.encoder.encoder.layer.{i}.attention.self" for i in range(2)]
    assert all(bool((c.gradient != 0).any()) for c in explained.call_maps)
    relevance = explained.relevance["audio"]
    assert bool(torch.isfinite(relevance).all()) and bool((relevance != 0).any())
    alone = explainer.explain(wave[1:], target=1).relevance["audio"]
    torch.testing.assert_close(alone[0], relevance[1], atol=1e-6, rtol=1e-5)


def _squeezebert():
    from transformers import SqueezeBertConfig, SqueezeBertForSequenceClassification

    torch.manual_seed(0)
    return SqueezeBertForSequenceClassification(SqueezeBertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, embedding_size=32, q_groups=2, k_groups=2, v_groups=2,
        post_attention_groups=2, intermediate_groups=4, output_groups=2, num_labels=3)).eval()


def test_channels_first_hidden_states_are_read_as_tokens():
    """SqueezeBERT's attention gets (batch, channels, tokens) hidden states (its projections
    are grouped 1-D convolutions): they were taken as (batch, tokens, ...) and the map had no
    token layout ('not one (batch, heads, n_query, n_key) map over its hidden states'). Their
    tokens are now read from the last dimension: explained, padding zero, batch == singles."""
    model = _squeezebert()
    ids = torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    explainer = HeterogenousAttentionAttribution(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model)
    explained = explainer.explain(ids, target=1, additional_forward_args=(mask,))
    assert [c.name for c in explained.calls] == [
        f"transformer.encoder.layers.{i}.attention" for i in (0, 1)]
    ((source, relevance),) = explained.relevance.items()  # one source (named by binding)
    assert bool((relevance[0, 1:] != 0).all()) and relevance[1, -2:].abs().sum() == 0
    for example in range(2):
        alone = explainer.explain(ids[example:example + 1], target=1,
                                  additional_forward_args=(mask[example:example + 1],))
        torch.testing.assert_close(alone.relevance[source][0], relevance[example], atol=1e-6,
                                   rtol=1e-5)


def test_sequence_first_hidden_states_are_read_as_tokens():
    """FSMT's attention gets (tokens, batch, channels) hidden states and computes 3-D
    (batch·heads, n, n) softmaxes: its calls had no layout ('no hidden states around it hold
    (batch=2, tokens) rows'). Explained now: encoder, decoder and cross calls, a batch like
    its examples."""
    from transformers import FSMTConfig, FSMTForConditionalGeneration

    torch.manual_seed(0)
    model = FSMTForConditionalGeneration(FSMTConfig(
        langs=["en", "de"], src_vocab_size=99, tgt_vocab_size=99, d_model=32, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64)).eval()
    generator = torch.Generator().manual_seed(2)
    source = torch.randint(4, 99, (2, 7), generator=generator)
    target = torch.randint(4, 99, (2, 5), generator=generator)
    explainer = HeterogenousAttentionAttribution(
        lambda s, t: model(input_ids=s, decoder_input_ids=t).logits[:, -1], model=model)
    explained = explainer.explain((source, target), target=5)
    names = {c.name for c in explained.calls}
    assert names == {f"model.{side}.layers.{i}.{kind}" for i in (0, 1) for side, kind in (
        ("encoder", "self_attn"), ("decoder", "self_attn"), ("decoder", "encoder_attn"))}
    assert sorted(explained.relevance) == sorted(set(explained.sources))
    for relevance in explained.relevance.values():
        assert bool(torch.isfinite(relevance).all()) and bool((relevance != 0).any())
    alone = explainer.explain((source[1:], target[1:]), target=5)
    for source_name, relevance in explained.relevance.items():
        torch.testing.assert_close(alone.relevance[source_name][0], relevance[1], atol=1e-6,
                                   rtol=1e-5)


def test_capture_names_the_channels_first_layout_as_binding_reads_it():
    from captum_hetattn.binding.tokens import CHANNELS_FIRST, tokens_view
    from captum_hetattn.capture.introspect import CHANNELS_FIRST as CAPTURED
    from captum_hetattn.capture.introspect import token_dim

    assert CAPTURED == CHANNELS_FIRST
    module = nn.Linear(2, 2)
    assert token_dim(module, torch.zeros(2, 16, 7), 7, 2) == CHANNELS_FIRST
    assert token_dim(module, torch.zeros(7, 2, 16), 7, 2) == 0
    assert token_dim(module, torch.zeros(2, 7, 16), 7, 2) == 1
    assert tokens_view(torch.zeros(2, 16, 7), CHANNELS_FIRST).shape == (2, 7, 16)


def test_a_query_row_that_sees_no_key_stays_what_the_kernel_gives():
    """A model built for sdpa (the default) with a mask hiding every key from one query row:
    sdpa gives that row zero, the eager function the capture delegates to gave NaN, in the
    forward and the backward, so the recorded forward was NaN where the model's own is finite
    (NemotronAsr's streaming encoder). The row is now computed finite and zeroed: the recorded
    forward equals the model's, the explanation is finite and flash equals eager."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from captum_hetattn.capture import AttentionRecorder

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=32)).eval()
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 1, 6, 6).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1),
                                               float("-inf"))
    mask[1, 0, 2, :] = float("-inf")  # example 1's third token sees no key
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with AttentionRecorder(model) as recorder:
            recorded = model(input_ids=ids, attention_mask=mask).logits
    assert bool(torch.isfinite(plain).all())
    torch.testing.assert_close(recorded, plain, atol=1e-6, rtol=1e-5)
    assert bool((recorder.records[0].attention[1, :, 2] == 0).all())
    explained = {}
    for how in ("eager", "flash"):
        explainer = HeterogenousAttentionAttribution(
            lambda i, m: model(input_ids=i, attention_mask=m).logits[:, -1], model=model,
            capture=how)
        explained[how] = explainer.explain(ids, target=3, additional_forward_args=(mask,))
    relevance = explained["eager"].relevance["text"]
    assert bool(torch.isfinite(relevance).all()) and bool((relevance[1] != 0).any())
    torch.testing.assert_close(explained["flash"].relevance["text"], relevance, atol=1e-6,
                               rtol=1e-5)


def test_a_mask_that_hides_every_key_is_named_as_such():
    """NemotronAsr's streaming mask hid every key from every query for short inputs; the
    refusal only said the readout 'reads only padding'. It now says the mask hides every
    token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=32)).eval()
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 1, 6, 6).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1),
                                               float("-inf"))
    mask[0] = float("-inf")
    explainer = HeterogenousAttentionAttribution(
        lambda i, m: model(input_ids=i, attention_mask=m).logits[:, -1], model=model)
    with pytest.raises(ValueError, match=r"example 0 reads only padding.*the mask hides every "
                                         r"token of the stream from every query in this example"):
        explainer.explain(ids, target=3, additional_forward_args=(mask,))


def test_levit_subsampled_queries_are_left_out_by_name():
    """LeViT's attention subsample computes 4 queries from 16 input tokens (a strided subset)
    over all 16 as keys: its map was taken for a self call over the 16 tokens and crashed the
    propagation ('Expected size for first two dimensions of batch2 tensor'). Such calls are
    now left out by name; the others are explained, a batch like its examples."""
    from transformers import LevitConfig, LevitForImageClassification

    torch.manual_seed(0)
    model = LevitForImageClassification(LevitConfig(
        image_size=64, patch_size=16, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3],
        depths=[2, 3, 4], key_dim=[8, 8, 8], mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2],
        down_ops=[["Subsample", 8, 2, 4, 2, 2], ["Subsample", 8, 4, 4, 2, 2]],
        num_labels=3)).eval()
    explainer, pixels, explained, messages = _explain_pixels(model)
    subsampled = sorted({m.split("'")[1] for m in messages if "queries subsampled or pooled" in m})
    assert subsampled and all(".layers." in name for name in subsampled)
    assert not {c.name for c in explained.calls} & set(subsampled)
    (relevance,) = explained.relevance.values()
    assert bool(torch.isfinite(relevance).all()) and bool((relevance != 0).any())
    alone = explainer.explain(pixels[1:], target=1)
    torch.testing.assert_close(next(iter(alone.relevance.values()))[0], relevance[1],
                               atol=1e-6, rtol=1e-5)
