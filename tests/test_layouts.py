r"""Token layouts (``captum_hetattn.layouts``): windowed, banded, blocked and transient-global
attention folded into dense maps, checked against references that do not use the engine.

- Swin: the folded maps and gradients equal the raw windowed maps un-windowed by hand (an index
  grid put through the same cyclic shift and window partition), and the relevance equals the
  relevance computed from those hand-made maps.
- LED (banded + global rows), LongT5 (local blocks; transient-global block aggregates),
  BigBird-Pegasus (block-sparse), ProphetNet (n-gram stream): the folded dense map, applied to
  the layer's value vectors, reproduces the layer's attention output — the defining property of
  a dense equivalent; LED's relevance equals the relevance of dense maps recomputed from its
  query and key projections with a band mask.
- The families pass the generic engine checks; softmaxes that are not token attention warn.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from captum_hetattn import AttentionRecorder, HeterogenousAttentionAttribution
from captum_hetattn.binding import trace

torch.set_num_threads(1)


def _swin(image: int = 32, window: int = 2, stages: int = 2):
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    config = SwinConfig(image_size=image, patch_size=4, embed_dim=16, depths=[2] * stages,
                        num_heads=[2] * stages, window_size=window, num_labels=3)
    model = SwinForImageClassification(config).eval()
    return model, torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(1))


def _record(model, forward, inputs, batch=2):
    """Records with layouts, their gradients filled (no reduce: raw parts kept)."""
    traced = [x.detach().requires_grad_() if x.is_floating_point() else x for x in inputs]
    with torch.enable_grad(), AttentionRecorder(model, record_io=True) as recorder:
        score = forward(*traced)
        trace(recorder, traced, batch=batch)
        recorder.compute_gradients(score)
    return recorder.records


def _unwindow(raw: Tensor, side: int, window: int, shift: int) -> Tensor:
    """``(B·nW, H, w², w²)`` → ``(B, H, side², side²)`` from an index grid (no padding)."""
    grid = torch.arange(side * side).view(side, side)
    grid = torch.roll(grid, (-shift, -shift), (0, 1))
    slots = grid.view(side // window, window, side // window, window).permute(0, 2, 1, 3)
    slots = slots.reshape(-1, window * window)  # (nW, w²): token of each slot
    n_windows, heads = slots.shape[0], raw.shape[1]
    batch = raw.shape[0] // n_windows
    dense = raw.new_zeros(batch, heads, side * side, side * side)
    per_window = raw.view(batch, n_windows, heads, window * window, window * window)
    for w in range(n_windows):
        rows, cols = slots[w][:, None], slots[w][None, :]
        dense[:, :, rows, cols] = per_window[:, w]
    return dense


def _swin_geometry(model) -> list[tuple[int, int, int]]:
    """(side, window, shift) of every block in call order."""
    out, side = [], model.config.image_size // model.config.patch_size
    for stage in model.swin.encoder.layers:
        for block in stage.blocks:
            out.append((side, block.window_size, block.shift_size))
        side //= 2
    return out


def test_swin_maps_and_gradients_equal_the_unwindowed_windows():
    model, pixels = _swin()
    records = _record(model, lambda x: model(pixel_values=x).logits[:, 1].sum(), [pixels])
    geometry = _swin_geometry(model)
    assert [g[2] for g in geometry] == [0, 1, 0, 1]  # plain and shifted windows both occur
    assert len(records) == len(geometry)
    for record, (side, window, shift) in zip(records, geometry, strict=True):
        assert record.layout is not None and record.layout.kind == "windowed"
        (part,) = record.parts
        assert part.shape[0] == 2 * (side // window) ** 2  # B·windows maps
        torch.testing.assert_close(record.attention, _unwindow(part.attention, side, window,
                                                               shift), atol=0, rtol=0)
        torch.testing.assert_close(record.gradient, _unwindow(part.gradient, side, window,
                                                              shift), atol=0, rtol=0)


@pytest.mark.parametrize("correction", ["none", "pos"])
def test_swin_relevance_equals_the_relevance_of_hand_unwindowed_maps(correction, monkeypatch):
    from captum_hetattn.engine import reduce as attribution
    from captum_hetattn.rules import aggregate_heads

    model, pixels = _swin()
    forward = lambda x: model(pixel_values=x).logits  # noqa: E731
    ours = HeterogenousAttentionAttribution(forward, model=model).explain(
        pixels, target=1, correction=correction)
    blocks = [f"swin.encoder.layers.{i}.blocks.{j}.attention"
              for i, stage in enumerate(model.swin.encoder.layers)
              for j in range(len(stage.blocks))]
    geometry = dict(zip(blocks, _swin_geometry(model), strict=True))
    original = attribution.Capture._reduce

    def by_hand(self, record):  # the engine's maps replaced by the hand-made ones
        if record.layout is None:
            return original(self, record)
        key = (record.name, record.call_index)
        side, window, shift = geometry[record.name]  # maps arrive in backward order
        (part,) = record.parts
        self.key_mass[key] = _unwindow(part.attention, side, window, shift).sum(dim=(1, 2))
        return aggregate_heads(_unwindow(part.attention, side, window, shift),
                               _unwindow(part.gradient, side, window, shift),
                               self.corrections[key])

    monkeypatch.setattr(attribution.Capture, "_reduce", by_hand)
    reference = HeterogenousAttentionAttribution(forward, model=model).explain(
        pixels, target=1, correction=correction)
    assert set(ours.relevance) == set(reference.relevance) == {"image"}
    assert ours.relevance["image"].abs().sum() > 0
    torch.testing.assert_close(ours.relevance["image"], reference.relevance["image"],
                               atol=1e-6, rtol=1e-5)


def test_swin_with_padded_windows_drops_the_padding_slots():
    # 24/4 = 6×6 patches with windows of 4: the layer pads to 8×8, and padding slots hold no token
    model, pixels = _swin(image=24, window=4, stages=1)
    records = _record(model, lambda x: model(pixel_values=x).logits[:, 0].sum(), [pixels])
    first = records[0]
    assert first.shape == (2, 2, 36, 36)
    (part,) = first.parts
    assert part.shape[-1] == 16
    # every real query's mass on real keys is its raw mass minus what went to padding slots
    assert bool((first.attention.sum(-1) <= 1 + 1e-5).all())
    assert bool((first.attention.sum(-1) > 0.2).all())


# ------------------------------------------------------------------------------ local attention
def _keep(store: dict[int, Tensor], index: int, tensor: Tensor) -> None:
    """A hook's first tensor of a layer, kept (a hook returning a value would replace it)."""
    store.setdefault(index, tensor.detach())


def _record_with_values(model, forward, inputs, layers):
    """Records (see :func:`_record`) with each layer's value projection output and the context
    its attention produced: ``layers`` is ``[(value module, context module, "pre" | "post")]``
    (the context is the input of a "pre" module, the first output of a "post" one)."""
    values: dict[int, Tensor] = {}
    contexts: dict[int, Tensor] = {}
    hooks = []
    for i, (value, context, where) in enumerate(layers):
        hooks.append(value.register_forward_hook(lambda m, a, out, i=i: _keep(values, i, out)))
        if where == "pre":
            hooks.append(context.register_forward_pre_hook(
                lambda m, a, i=i: _keep(contexts, i, a[0])))
        else:
            hooks.append(context.register_forward_hook(
                lambda m, a, out, i=i: _keep(contexts, i, out[0])))
    try:
        records = _record(model, forward, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return records, values, contexts


def _dense_times_values(record, value: Tensor, heads: int) -> Tensor:
    """``Σ_k A[b, h, q, k] V[b, k, h]`` → ``(B, n, H·d)``: the context the dense map gives."""
    batch, n = record.shape[0], record.shape[2]
    values = value.reshape(batch, n, heads, -1).transpose(1, 2)  # (B, H, n, d)
    return (record.attention @ values).transpose(1, 2).reshape(batch, n, -1)


def _led():
    from transformers import LEDConfig, LEDForConditionalGeneration

    torch.manual_seed(0)
    config = LEDConfig(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=1,
                       encoder_attention_heads=2, decoder_attention_heads=2,
                       encoder_ffn_dim=37, decoder_ffn_dim=37, attention_window=4,
                       max_encoder_position_embeddings=64, max_decoder_position_embeddings=64)
    return LEDForConditionalGeneration(config).eval()


def _longt5(kind: str):
    from transformers import LongT5Config, LongT5ForConditionalGeneration

    torch.manual_seed(0)
    config = LongT5Config(vocab_size=99, d_model=32, d_kv=16, d_ff=37, num_layers=2,
                          num_heads=2, encoder_attention_type=kind, local_radius=2,
                          global_block_size=4)
    return LongT5ForConditionalGeneration(config).eval()


IDS = torch.randint(5, 90, (2, 16), generator=torch.Generator().manual_seed(2))
DECODER_IDS = torch.randint(5, 90, (2, 3), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("with_global", [True, False])
def test_led_dense_maps_reproduce_the_band_and_global_attention(with_global):
    model = _led()
    glob = torch.zeros_like(IDS)
    if with_global:
        glob[:, 0] = 1
    layers = model.led.encoder.layers

    def forward(ids):
        return model(input_ids=ids, decoder_input_ids=DECODER_IDS,
                     global_attention_mask=glob).logits[:, -1, 7].sum()

    # the value vectors come sequence-first: (n, B, d)
    records, values, contexts = _record_with_values(model, forward, [IDS], [
        (layer.self_attn.longformer_self_attn.value, layer.self_attn.longformer_self_attn,
         "post") for layer in layers])
    values = {i: v.transpose(0, 1) for i, v in values.items()}
    encoder = [r for r in records if r.name.startswith("led.encoder.")]
    assert len(encoder) == len(layers)
    for i, record in enumerate(encoder):
        assert record.layout is not None and record.layout.kind == "local"
        assert record.shape == (2, 2, 16, 16)
        # each query attends to keys within the window (4 one-sided: 2) or global tokens
        band = torch.ones(16, 16, dtype=torch.bool).triu(-2).tril(2)
        if with_global:
            band[0, :] = band[:, 0] = True
        assert record.attention[..., ~band].abs().max() == 0
        # the other rows read the (local) value vectors, the global token's keys included
        rows = slice(1, None) if with_global else slice(None)
        torch.testing.assert_close(_dense_times_values(record, values[i], 2)[:, rows],
                                   contexts[i][:, rows], atol=1e-5, rtol=1e-4)
        if with_global:  # the global row attends to every token (from its own projections)
            assert bool((record.attention[:, :, 0] > 0).all())
            torch.testing.assert_close(record.attention[:, :, 0].sum(-1), torch.ones(2, 2))


@pytest.mark.parametrize("kind", ["local", "transient-global"])
def test_longt5_dense_maps_reproduce_the_blocked_attention(kind):
    model = _longt5(kind)
    blocks = model.encoder.block
    attentions = [next(m for n, m in block.named_modules() if n.endswith("Attention"))
                  for block in blocks]

    def forward(ids):
        return model(input_ids=ids, decoder_input_ids=DECODER_IDS).logits[:, -1, 7].sum()

    records, values, contexts = _record_with_values(
        model, forward, [IDS], [(a.v, a.o, "pre") for a in attentions])
    encoder = [r for r in records if r.name.startswith("encoder")]
    assert len(encoder) == len(blocks)
    for i, record in enumerate(encoder):
        assert record.layout is not None and record.shape == (2, 2, 16, 16)
        assert torch.isfinite(record.attention).all()
        if kind == "local":
            # local radius 2 in blocks of 3: every key within 2 positions of its query's block
            torch.testing.assert_close(_dense_times_values(record, values[i], 2), contexts[i],
                                       atol=1e-5, rtol=1e-4)
        else:
            # block aggregates spread over their tokens: every query row still sums to 1
            torch.testing.assert_close(record.attention.sum(-1),
                                       torch.ones(2, 2, 16), atol=1e-5, rtol=0)


@pytest.mark.parametrize("build", [_led, lambda: _longt5("local"),
                                   lambda: _longt5("transient-global")])
def test_local_attention_models_explain_their_encoder(build):
    model = build()
    explainer = HeterogenousAttentionAttribution(
        lambda ids, dec: model(input_ids=ids, decoder_input_ids=dec).logits[:, -1], model=model)
    explanation = explainer.explain(IDS, target=7, additional_forward_args=(DECODER_IDS,))
    encoder = [c for c in explanation.calls if "encoder." in c.name]
    assert encoder and all(c.type == "A" for c in encoder)
    assert explanation.relevance["source"].abs().sum(dim=1).gt(0).all()
    single = explainer.explain(IDS[:1], target=7, additional_forward_args=(DECODER_IDS[:1],))
    torch.testing.assert_close(single.relevance["source"][0], explanation.relevance["source"][0],
                               atol=2e-5, rtol=1e-4)


def _prophetnet():
    from transformers import ProphetNetConfig, ProphetNetForConditionalGeneration

    torch.manual_seed(0)
    config = ProphetNetConfig(vocab_size=99, hidden_size=32, encoder_ffn_dim=37,
                              decoder_ffn_dim=37, num_encoder_layers=2, num_decoder_layers=2,
                              num_encoder_attention_heads=2, num_decoder_attention_heads=2,
                              ngram=2, max_position_embeddings=64)
    return ProphetNetForConditionalGeneration(config).eval()


def _bigbird_pegasus():
    from transformers import BigBirdPegasusConfig, BigBirdPegasusForConditionalGeneration

    torch.manual_seed(0)
    config = BigBirdPegasusConfig(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=1,
                                  encoder_attention_heads=2, decoder_attention_heads=2,
                                  encoder_ffn_dim=37, decoder_ffn_dim=37,
                                  attention_type="block_sparse", block_size=2,
                                  num_random_blocks=1, max_position_embeddings=128)
    return BigBirdPegasusForConditionalGeneration(config).eval()


def test_prophetnet_keeps_its_ngram_stream_and_its_maps_reproduce_both_streams():
    model = _prophetnet()
    values: dict[int, Tensor] = {}
    contexts: dict[int, list[Tensor]] = {}
    hooks = []
    for i, layer in enumerate(model.prophetnet.decoder.layers):
        hooks.append(layer.self_attn.value_proj.register_forward_hook(
            lambda m, a, out, i=i: _keep(values, i, out)))
        hooks.append(layer.self_attn.out_proj.register_forward_pre_hook(
            lambda m, a, i=i: contexts.setdefault(i, []).append(a[0].detach())))

    def forward(ids):
        return model(input_ids=ids, decoder_input_ids=DECODER_IDS).logits[:, -1, 7].sum()

    try:
        records = _record(model, forward, [IDS])
    finally:
        for hook in hooks:
            hook.remove()
    decoder = [r for r in records if r.name.endswith("decoder.layers.0.self_attn")
               or r.name.endswith("decoder.layers.1.self_attn")]
    steps = DECODER_IDS.shape[1]
    for i, record in enumerate(decoder):
        # main stream + 2 predict streams: 3 × 3 rows, keys main + own predict stream
        assert record.shape == (2, 2, 3 * steps, 3 * steps)
        main, predict = contexts[i]
        context = torch.cat([main.reshape(2, steps, -1), predict.reshape(2, 2 * steps, -1)], 1)
        torch.testing.assert_close(_dense_times_values(record, values[i], 2), context,
                                   atol=1e-5, rtol=1e-4)


def test_bigbird_block_sparse_maps_reproduce_the_block_sparse_attention():
    model = _bigbird_pegasus()
    ids = torch.randint(5, 90, (2, 32), generator=torch.Generator().manual_seed(4))

    def forward(x):
        return model(input_ids=x, decoder_input_ids=DECODER_IDS).logits[:, -1, 7].sum()

    records, values, contexts = _record_with_values(model, forward, [ids], [
        (layer.self_attn.self.value, layer.self_attn.output, "pre")
        for layer in model.model.encoder.layers])
    encoder = [r for r in records if r.name.startswith("model.encoder.")]
    assert len(encoder) == 2
    for i, record in enumerate(encoder):
        assert len(record.parts) > 1  # the block-sparse pieces of one call, folded
        assert record.shape == (2, 2, 32, 32)
        torch.testing.assert_close(_dense_times_values(record, values[i], 2), contexts[i],
                                   atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------ nothing silent
class _TokenAttention(nn.Module):
    def __init__(self, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.qkv = heads, nn.Linear(width, 3 * width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(dim=-1)
        return x + (attention @ v).transpose(1, 2).reshape(b, n, c)


class _ChannelAttention(_TokenAttention):
    """DaViT's channel attention (Florence-2): a softmax over channel groups, not tokens."""

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 4, 1)
        attention = (q @ k.transpose(-1, -2) / n ** 0.5).softmax(dim=-1)  # (B, H, c/H, c/H)
        return x + (attention @ v).permute(0, 3, 1, 2).reshape(b, n, c)


class _AttentionPool(nn.Module):
    """Attention pooling: a softmax over tokens with no query tokens."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.score = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        weights = self.score(x).squeeze(-1).softmax(dim=-1)  # (B, n)
        return (weights[..., None] * x).sum(dim=1)


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.tokens = _TokenAttention()
        self.channels = _ChannelAttention()
        self.pool = _AttentionPool()
        self.head = nn.Linear(16, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.pool(self.channels(self.tokens(self.embed(ids)))))


def _explain_with_warnings(model, ids):
    """The model's explanation of ``ids`` (target 1) and the warning messages it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = HeterogenousAttentionAttribution(model, model=model).explain(ids, target=1)
    return explanation, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_softmaxes_that_are_not_token_attention_are_reported_by_module():
    torch.manual_seed(0)
    model = _Mixed().eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(5))
    explainer = HeterogenousAttentionAttribution(model, model=model)
    with pytest.warns(UserWarning) as caught:
        explanation = explainer.explain(ids, target=1)
    messages = [str(w.message) for w in caught]
    channel = [m for m in messages if "'channels'" in m]
    pool = [m for m in messages if "'pool'" in m]
    assert channel and "not over tokens" in channel[0], messages
    assert pool and "(2, 6)" in pool[0], messages
    assert [c.name for c in explanation.calls] == ["tokens"]
    assert explanation.relevance["text"].abs().sum() > 0
    # once per explainer, not per call
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        explainer.explain(ids, target=1)
    assert not [w for w in again if "'channels'" in str(w.message) or "'pool'" in str(w.message)]


def test_packed_vision_tower_folds_one_map_per_image_into_a_block_diagonal_map():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from arch_zoo import ARCHS, IMAGE_TOKEN

    arch = ARCHS["qwen2_vl"]()
    model = arch.model
    image = [96] + [IMAGE_TOKEN] * 4 + [95]
    ids = torch.tensor([[1, *image, *image, 10, 11, 12]])  # one example, two images
    pixels = torch.randn(32, 96, generator=torch.Generator().manual_seed(6))
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])
    extra = (grid, torch.ones_like(ids), (ids == IMAGE_TOKEN).int())

    def forward(i, px, g, mask, types):
        return model(input_ids=i, pixel_values=px, image_grid_thw=g, attention_mask=mask,
                     mm_token_type_ids=types).logits[:, -1]

    records = _record(model, lambda i, px: forward(i, px, *extra)[:, 7].sum(), [ids, pixels],
                      batch=1)
    vision = [r for r in records if ".visual." in r.name]
    assert vision and all(r.layout is not None and r.layout.kind == "packed" for r in vision)
    for record in vision:
        first, second = record.parts  # one interface call per image
        expected = torch.block_diag(first.attention[0, 0], second.attention[0, 0])
        torch.testing.assert_close(record.attention[0, 0], expected, atol=0, rtol=0)
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    attribution = explainer.attribute((ids, pixels.clone()), target=7,
                                      additional_forward_args=extra)
    assert attribution[1].shape == pixels.shape
    assert attribution[1][:16].abs().sum() > 0 and attribution[1][16:].abs().sum() > 0


# ------------------------------------------------------------------------------ generic checks
def _swinv2():
    from transformers import Swinv2Config, Swinv2ForImageClassification

    torch.manual_seed(0)
    config = Swinv2Config(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                          num_heads=[2, 2], window_size=2, num_labels=3)
    return Swinv2ForImageClassification(config).eval()


def _donut():
    from transformers import (
        DonutSwinConfig,
        MBartConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    torch.manual_seed(0)
    encoder = DonutSwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                              num_heads=[2, 2], window_size=2)
    decoder = MBartConfig(vocab_size=99, d_model=32, decoder_layers=2, encoder_layers=2,
                          decoder_attention_heads=2, decoder_ffn_dim=37, is_decoder=True,
                          add_cross_attention=True, max_position_embeddings=64)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    return VisionEncoderDecoderModel(config).eval()


PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
MASK = torch.ones_like(IDS)
MASK[1, -5:] = 0  # example 1 padded: 11 real tokens


def _image_case(build):
    model = build()
    return model, (lambda x: model(pixel_values=x).logits), (PIXELS,), (), 1, {
        r"attention": "A"}, None


def _seq2seq_case(build, **kw):
    model = build()

    def forward(ids, mask, decoder):
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder,
                     **kw).logits[:, -1]

    types = {r"(encoder_attn|cross_attn|EncDecAttention)": "B",
             r"encoder\.(layers|block)\.\d+\.": "A",
             r"decoder\.(layers|block)\.0\.(self|layer\.0)": "A",
             r"decoder\.(layers|block)\.1\.(self|layer\.0)": "C"}
    return model, forward, (IDS,), (MASK, DECODER_IDS), 7, types, 0


def _donut_case():
    model = _donut()

    def forward(pixels, decoder):
        return model(pixel_values=pixels, decoder_input_ids=decoder).logits[:, -1]

    types = {r"encoder_attn": "B", r"encoder\.encoder\.": "A",
             r"decoder\.layers\.0\.self_attn": "A", r"decoder\.layers\.1\.self_attn": "C"}
    return model, forward, (PIXELS,), (DECODER_IDS,), 7, types, None


def _bigbird_case():
    model = _bigbird_pegasus()
    ids = torch.randint(5, 90, (2, 32), generator=torch.Generator().manual_seed(4))

    def forward(ids, decoder):
        return model(input_ids=ids, decoder_input_ids=decoder).logits[:, -1]

    types = {r"encoder_attn": "B", r"encoder\.layers\.\d+\.": "A",
             r"decoder\.layers\.0\.self_attn": "A"}
    return model, forward, (ids,), (DECODER_IDS,), 7, types, None


def _vitdet():
    from transformers import VitDetConfig, VitDetModel

    torch.manual_seed(0)
    config = VitDetConfig(image_size=32, pretrain_image_size=32, patch_size=4, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=2, window_size=4,
                          window_block_indices=[0], use_relative_position_embeddings=True)
    return VitDetModel(config).eval()


def _vitdet_case():
    model = _vitdet()

    def forward(pixels):  # a pooled feature map as class scores
        return model(pixel_values=pixels).last_hidden_state.mean(dim=(2, 3))

    return model, forward, (PIXELS,), (), 1, {r"attention": "A"}, None


def _timesformer_case():
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    torch.manual_seed(0)
    config = TimesformerConfig(image_size=16, patch_size=8, num_frames=2, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                               num_labels=3)
    model = TimesformerForVideoClassification(config).eval()
    video = torch.randn(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    # divided space-time attention: time over (B·patches) sequences of frames, then space over
    # (B·frames) sequences of patches (tiles: each example's frames read as one sequence)
    return model, (lambda v: model(pixel_values=v).logits), (video,), (), 1, {
        r"attention": "A"}, None


CASES = {
    "timesformer": _timesformer_case,
    "vitdet": _vitdet_case,
    "donut": _donut_case,
    "bigbird_pegasus": _bigbird_case,
    "swin": lambda: _image_case(lambda: _swin()[0]),
    "swinv2": lambda: _image_case(_swinv2),
    "led": lambda: _seq2seq_case(_led),
    "longt5_local": lambda: _seq2seq_case(lambda: _longt5("local")),
    "longt5_tglobal": lambda: _seq2seq_case(lambda: _longt5("transient-global")),
    "prophetnet": lambda: _seq2seq_case(_prophetnet),
}


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", sorted(CASES))
def test_layout_families_pass_the_generic_checks(name):
    import re

    model, forward, inputs, extra, target, types, padded_input = CASES[name]()
    with torch.no_grad():
        forward(*inputs, *extra)
    hooks, training = _hooks(model), model.training
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    explanation = explainer.explain(inputs, target=target, additional_forward_args=extra or None)
    (attribution,) = explainer.attribute(inputs, target=target,
                                         additional_forward_args=extra or None)
    assert _hooks(model) == hooks and model.training == training
    for call in explanation.calls:  # the family's own type table
        expected = [t for pattern, t in types.items() if re.search(pattern, call.name)]
        assert expected[:1] == [call.type], (call.name, call.type, expected)
    assert any(c.name for c in explanation.calls)
    for source, relevance in explanation.relevance.items():
        assert relevance.abs().sum(dim=1).gt(0).all(), f"source '{source}' is all zero"
    assert attribution.shape == inputs[0].shape
    for index in range(2):  # a batch equals its examples one at a time
        one = explainer.explain(tuple(x[index:index + 1] for x in inputs), target=target,
                                additional_forward_args=tuple(x[index:index + 1]
                                                              for x in extra) or None)
        for source, relevance in explanation.relevance.items():
            torch.testing.assert_close(one.relevance[source][0], relevance[index], atol=2e-5,
                                       rtol=1e-4)
    if padded_input is not None:  # padding gets zero, the real tokens equal the unpadded run
        real = int(MASK[1].sum())
        padded = attribution[1, real:]
        assert padded.abs().sum() == 0
        short = explainer.attribute(IDS[1:, :real], target=target,
                                    additional_forward_args=(MASK[1:, :real], DECODER_IDS[1:]))
        torch.testing.assert_close(attribution[1:, :real], short, atol=2e-5, rtol=1e-4)


def test_led_relevance_equals_the_relevance_of_dense_maps_recomputed_from_its_projections(
        monkeypatch):
    from captum_hetattn.engine import reduce as attribution

    model = _led()
    window = model.config.attention_window[0] // 2
    heads, n = 2, IDS.shape[1]
    projections: dict[str, list[Tensor]] = {"query": [], "key": []}
    for layer in model.led.encoder.layers:
        attention = layer.self_attn.longformer_self_attn
        for name in projections:
            getattr(attention, name).register_forward_hook(
                # a copy: LED scales its query vectors in place right after
                lambda m, a, out, name=name: projections[name].append(out.detach().clone()))

    def forward(ids, decoder):
        return model(input_ids=ids, decoder_input_ids=decoder).logits[:, -1]

    ours = HeterogenousAttentionAttribution(forward, model=model).explain(
        IDS, target=7, additional_forward_args=(DECODER_IDS,), correction="none")
    original = attribution.Capture._reduce
    layer_of = iter(range(100))

    def dense_reference(self, record):  # softmax(q·k/√d) over the band, from the projections
        if record.layout is None:
            return original(self, record)
        key = (record.name, record.call_index)
        i = next(layer_of) % len(model.led.encoder.layers)
        q = projections["query"][-len(model.led.encoder.layers) + i].transpose(0, 1)
        k = projections["key"][-len(model.led.encoder.layers) + i].transpose(0, 1)
        q = q.reshape(2, n, heads, -1).transpose(1, 2) / (q.shape[-1] // heads) ** 0.5
        k = k.reshape(2, n, heads, -1).transpose(1, 2)
        positions = torch.arange(n)
        band = (positions[:, None] - positions[None, :]).abs() <= window
        scores = (q @ k.transpose(-1, -2)).masked_fill(~band, float("-inf"))
        self.key_mass[key] = scores.softmax(dim=-1).sum(dim=(1, 2))
        return scores.softmax(dim=-1).mean(dim=1)

    monkeypatch.setattr(attribution.Capture, "_reduce", dense_reference)
    reference = HeterogenousAttentionAttribution(forward, model=model).explain(
        IDS, target=7, additional_forward_args=(DECODER_IDS,), correction="none")
    assert ours.relevance["source"].abs().sum() > 0
    torch.testing.assert_close(ours.relevance["source"], reference.relevance["source"],
                               atol=1e-6, rtol=1e-5)


def test_vitdet_windows_over_a_channels_first_grid_with_a_fused_projection():
    # ViTDet: layer 0 attends within 4×4 windows of the 8×8 patch grid, its layer input is a
    # (B, C, h, w) feature map and one qkv projection computes queries and keys
    model = _vitdet()
    records = _record(model, lambda x: model(pixel_values=x).last_hidden_state.sum(), [PIXELS])
    windowed, full = records
    assert windowed.layout is not None and windowed.layout.kind == "windowed"
    assert full.layout is None and windowed.shape == full.shape == (2, 2, 64, 64)
    y, x = torch.arange(64) // 8, torch.arange(64) % 8
    window = (y // 4) * 2 + x // 4
    outside = window[:, None] != window[None, :]
    assert windowed.attention[..., outside].abs().max() == 0
    torch.testing.assert_close(windowed.attention.sum(-1), torch.ones(2, 2, 64))
    (part,) = windowed.parts  # (B·windows, H, 16, 16), window-major, row-major inside
    first_window = (window == 0).nonzero().flatten()
    torch.testing.assert_close(windowed.attention[0][:, first_window][:, :, first_window],
                               part.attention[0], atol=0, rtol=0)


def test_a_model_without_token_attention_gets_one_clear_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), _ChannelAttention(), _AttentionPool(),
                          nn.Linear(16, 3)).eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match=r"no attention map over the model's tokens could be "
                                         r"recorded.*'1': .*not over tokens"):
        HeterogenousAttentionAttribution(model, model=model).explain(ids, target=1)


class _FusedAttention(_TokenAttention):
    """Hand-written attention through the fused kernel: no map exists to record."""

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + out.transpose(1, 2).reshape(b, n, c)


def test_fused_attention_in_a_hand_written_module_is_captured():
    """A hand-written module calling F.scaled_dot_product_attention (used to be reported as
    a fused kernel with no map, suggesting attn_implementation='eager', which does not apply to
    it): its map is computed as the kernel defines it and recorded (capture/backends/sdpa.py),
    equal to the same module with an explicit softmax."""
    torch.manual_seed(0)
    model = _Mixed().eval()
    model.tokens = _FusedAttention()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(5))
    explanation, messages = _explain_with_warnings(model, ids)
    assert not any("scaled_dot_product_attention" in m for m in messages), messages
    assert [c.name for c in explanation.calls] == ["tokens"]
    explicit = _Mixed().eval()
    explicit.load_state_dict(model.state_dict())
    reference, _ = _explain_with_warnings(explicit, ids)
    torch.testing.assert_close(explanation.relevance, reference.relevance)


def test_channel_attention_with_as_many_channels_as_tokens_is_not_taken_for_token_attention():
    # 8 tokens and channel groups of 8: the maps look like (B, H, n, n) over the tokens
    torch.manual_seed(0)
    model = _Mixed().eval()
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(5))
    explanation, messages = _explain_with_warnings(model, ids)
    assert [c.name for c in explanation.calls] == ["tokens"]
    assert any("'channels'" in m and "not over tokens" in m for m in messages), messages


def test_florence2_channel_attention_is_left_out_and_its_windows_are_laid_out():
    import transformers as tf

    torch.manual_seed(0)
    config = tf.Florence2VisionConfig(
        depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
        patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 2], num_groups=[2, 2],
        window_size=2, projection_dim=32, drop_path_rate=0.0)
    model = tf.Florence2VisionBackbone(config).eval()  # stage 2: 16 tokens, groups of 16

    def forward(pixels):
        return model(pixels).last_hidden_state.flatten(2).mean(-1)[:, :3]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = HeterogenousAttentionAttribution(forward, model=model).explain(
            PIXELS, target=1)
    assert [c.name for c in explanation.calls] == ["blocks.0.0.spatial_block.window_attn",
                                                    "blocks.1.0.spatial_block.window_attn"]
    reported = {m for m in ("blocks.0.0.channel_block.channel_attn",
                            "blocks.1.0.channel_block.channel_attn")
                if any(f"'{m}'" in str(w.message) for w in caught)}
    assert len(reported) == 2
    assert explanation.relevance["image"].abs().sum(dim=1).gt(0).all()


def test_timesformer_explains_both_its_time_and_its_space_attention():
    model, forward, inputs, *_ = _timesformer_case()
    records = _record(model, lambda v: forward(v)[:, 1].sum(), list(inputs))
    kinds = [(r.name.split(".")[-2], r.layout.kind if r.layout else None) for r in records]
    # time: a permutation of the layer's tokens; space: 2 frames × (1 + 4 patches) per example
    assert kinds == [("temporal_attention", "windowed"), ("attention", "tiled")] * 2, kinds
    space = records[1]
    assert space.shape == (2, 2, 10, 10)
    # a frame's tokens attend within the frame only
    frame = torch.arange(10) // 5
    assert space.attention[..., frame[:, None] != frame[None, :]].abs().max() == 0


def test_packed_vision_tower_of_a_batch_splits_its_rows_by_example():
    # Qwen2-VL packs every example's image into one sequence (batch 1 for the vision tower);
    # with the pixel values traced, the split by example is confirmed and each example's rows
    # become its own stream rows: the batch equals its examples one at a time
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from arch_zoo import ARCHS, IMAGE_TOKEN

    model = ARCHS["qwen2_vl"]().model
    image = [96] + [IMAGE_TOKEN] * 4 + [95]
    ids = torch.tensor([[1, *image, 10, 11, 12], [1, *image, 20, 21, 22]])
    pixels = torch.randn(32, 96, generator=torch.Generator().manual_seed(6))  # 16 rows each
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])
    extra = (grid, torch.ones_like(ids), (ids == IMAGE_TOKEN).int())

    def forward(i, px, g, mask, types):
        return model(input_ids=i, pixel_values=px, image_grid_thw=g, attention_mask=mask,
                     mm_token_type_ids=types).logits[:, -1]

    explainer = HeterogenousAttentionAttribution(forward, model=model)
    both = explainer.explain((ids, pixels), target=7, additional_forward_args=extra)
    assert both.relevance["image"].shape == (2, 16)
    for b in range(2):
        one = explainer.explain((ids[b:b + 1], pixels[16 * b:16 * (b + 1)]), target=7,
                                additional_forward_args=tuple(x[b:b + 1] for x in extra))
        for source, relevance in both.relevance.items():
            torch.testing.assert_close(one.relevance[source][0], relevance[b], atol=2e-5,
                                       rtol=1e-4)
    _, pixel_attr = explainer.attribute((ids, pixels), target=7, additional_forward_args=extra)
    assert pixel_attr.shape == pixels.shape
    assert pixel_attr[:16].abs().sum() > 0 and pixel_attr[16:].abs().sum() > 0


def test_a_layer_pattern_of_the_inferred_graph_skips_the_calls_left_out():
    # layers.0.attn is token attention, layers.1.attn channel attention: the inferred node
    # "layers.*.attn" must not expect the left-out one
    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.layers = nn.ModuleList([nn.Module(), nn.Module()])
            self.layers[0].attn, self.layers[1].attn = _TokenAttention(), _ChannelAttention()
            self.head = nn.Linear(16, 3)

        def forward(self, ids):
            x = self.embed(ids)
            for layer in self.layers:
                x = layer.attn(x)
            return self.head(x.mean(dim=1))

    torch.manual_seed(0)
    model = Blocks().eval()
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(5))
    explanation, messages = _explain_with_warnings(model, ids)
    assert [c.name for c in explanation.calls] == ["layers.0.attn"]
    assert any("'layers.1.attn'" in m for m in messages), messages
