r"""Layers laid out alike within one forward (``binding.layouts.alike_key``): a call that looks
like one laid out earlier in the same forward (another layer of the same stack) takes that
placement after the check a cached placement passes, instead of probing. The layouts and the
explanations equal fresh probes of every layer, to the bit; a layer that looks alike but reads
its tokens differently is caught by the check and probed afresh.
"""

from __future__ import annotations

import pytest
import torch
from test_layout_cache import TARGET, _assert_same, _layouts
from test_score_reads import CASES

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.binding import layout_cache, layouts
from captum_hetattn.binding.layout_cache import LayoutCache

torch.set_num_threads(1)



def _swin():
    r"""Swin with four blocks in its second stage: two unshifted, two shifted, alike."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    config = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 4],
                        num_heads=[2, 2], window_size=2, num_labels=3)
    model = SwinForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def forward(x):
        return model(pixel_values=x).logits

    return model, forward, (pixels,), ()


ALL = {**CASES, "swin": _swin}


def _counting(monkeypatch) -> list[str]:
    """The calls probed (``layouts._place``), by module name."""
    probed: list[str] = []
    place = layouts._place

    def counted(group, batch, inputs):
        probed.append(group[0].name)
        return place(group, batch, inputs)

    monkeypatch.setattr(layouts, "_place", counted)
    return probed


@pytest.mark.parametrize("name", list(ALL))
def test_layers_alike_are_laid_out_once_and_equal_fresh_probes(name, monkeypatch):
    model, forward, inputs, extra = ALL[name]()
    probed = _counting(monkeypatch)
    fresh = _layouts(model, forward, inputs, extra, None)  # no cache: every call probed
    every = list(probed)
    probed.clear()
    reused = _layouts(model, forward, inputs, extra, LayoutCache())
    assert len(probed) < len(every)  # some layer took an earlier layer's placement
    assert set(every) - set(probed)
    _assert_same(reused, fresh)


@pytest.mark.parametrize("name", list(ALL))
def test_explanations_with_layers_alike_equal_fresh_ones(name, monkeypatch):
    model, forward, inputs, extra = ALL[name]()
    got = HeterogenousAttentionAttribution(forward, model=model).explain(
        inputs, target=TARGET, additional_forward_args=extra or None)
    # the same explanation with every call probed afresh
    monkeypatch.setattr(layouts, "_like_earlier", lambda *a, **k: (None, None))
    want = HeterogenousAttentionAttribution(forward, model=model).explain(
        inputs, target=TARGET, additional_forward_args=extra or None)
    assert got.relevance.keys() == want.relevance.keys()
    for source, relevance in want.relevance.items():
        assert torch.equal(got.relevance[source], relevance)


def test_a_layer_alike_that_reads_other_tokens_is_probed_afresh(monkeypatch):
    model, forward, inputs, extra = CASES["led"]()
    attention = model.led.encoder.layers[1].self_attn.longformer_self_attn
    # the second layer's keys read the previous token: same shapes, another layout
    handle = attention.key.register_forward_hook(lambda m, a, out: out.roll(1, dims=0))
    try:
        probed = _counting(monkeypatch)
        fresh = _layouts(model, forward, inputs, extra, None)
        every = len(probed)
        probed.clear()
        reused = _layouts(model, forward, inputs, extra, LayoutCache())
    finally:
        handle.remove()
    assert len(probed) == every  # the alike layer's check failed: probed
    _assert_same(reused, fresh)
    first, second = fresh[0], fresh[1]  # the two encoder layers: other key tokens
    assert ".layers.0." in first[0] and ".layers.1." in second[0]
    assert first[3].shape != second[3].shape or not torch.equal(first[3], second[3])


def test_the_alike_key_leaves_out_the_layer_number_only():
    model, forward, inputs, extra = CASES["led"]()
    keys: list[tuple] = []
    original = layouts.alike_key

    def spy(group):
        keys.append((group[0].name, original(group)))
        return keys[-1][1]

    layouts.alike_key = spy
    try:
        _layouts(model, forward, inputs, extra, LayoutCache())
    finally:
        layouts.alike_key = original
    encoder = [k for n, k in keys if ".encoder." in n]
    decoder = [k for n, k in keys if ".decoder." in n]
    assert len(encoder) >= 2 and encoder[0] == encoder[1]
    assert decoder and all(k != encoder[0] for k in decoder)


def _silencing(monkeypatch, first_only: bool) -> list[int]:
    """Every check's pushes, with one responding entry of each push silenced (as a sum that
    cancels exactly would be) — on the first push of each check only, or on all of them."""
    silenced: list[int] = []
    pushes = layout_cache._pushes

    def silencing(intos, origin):
        push = pushes(intos, origin)
        if push is None:
            return None
        calls = [0]

        def silenced_push(plane):
            out = push(plane)
            calls[0] += 1
            if (calls[0] == 1 or not first_only) and out[0] is not None:
                flat = out[0].reshape(-1).clone()
                on = flat.nonzero().flatten()
                flat[on[on.numel() // 2]] = False
                silenced.append(int(on[on.numel() // 2]))
                out = [flat.view_as(out[0]), *out[1:]]
            return out

        return silenced_push

    monkeypatch.setattr(layout_cache, "_pushes", silencing)
    # no fingerprint: a warm call would otherwise skip the passes this silences
    monkeypatch.setattr(layout_cache, "fingerprint", lambda *args, **kwargs: None)
    return silenced


def test_a_check_asks_again_where_a_response_cancelled(monkeypatch):
    model, forward, inputs, extra = CASES["longt5_tglobal"]()
    cache = LayoutCache()
    fresh = _layouts(model, forward, inputs, extra, cache)
    misses = cache.misses
    silenced = _silencing(monkeypatch, first_only=True)
    again = _layouts(model, forward, inputs, extra, cache)
    assert silenced and cache.misses == misses  # the second push answered: no probe
    _assert_same(again, fresh)


def test_a_check_whose_entry_stays_silent_fails(monkeypatch):
    model, forward, inputs, extra = CASES["longt5_tglobal"]()
    cache = LayoutCache()
    fresh = _layouts(model, forward, inputs, extra, cache)
    misses = cache.misses
    silenced = _silencing(monkeypatch, first_only=False)
    again = _layouts(model, forward, inputs, extra, cache)
    assert silenced and cache.misses > misses  # silent for real: probed afresh
    _assert_same(again, fresh)
