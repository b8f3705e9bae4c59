r"""Token layouts found once per call signature (``binding.layout_cache``): a cached layout
equals a fresh probe, a changed shape or mask pattern probes afresh, and a cached placement that
no longer holds is caught by its check and probed afresh (never folded with a stale map).

Swin (windows from per-head states), LED (bands and global rows caught at the softmax) and
LongT5 (transient-global block aggregates).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_layouts import _led as _led_model
from test_layouts import _longt5 as _longt5_model

from captum_hetattn import AttentionRecorder, HeterogenousAttentionAttribution
from captum_hetattn.binding import trace
from captum_hetattn.binding.layout_cache import LayoutCache, Placement

torch.set_num_threads(1)


def _swin(image: int = 32):
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    config = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2],
                        num_heads=[2, 2], window_size=2, num_labels=3)
    model = SwinForImageClassification(config).eval()
    pixels = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(1))

    def forward(x):
        return model(pixel_values=x).logits

    return model, forward, (pixels,), ()


def _led():
    model = _led_model()
    ids = torch.randint(5, 90, (2, 16), generator=torch.Generator().manual_seed(2))
    decoder = torch.randint(5, 90, (2, 3), generator=torch.Generator().manual_seed(3))
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1

    def forward(i, d, g):
        return model(input_ids=i, decoder_input_ids=d, global_attention_mask=g).logits[:, -1]

    return model, forward, (ids,), (decoder, glob)


def _longt5():
    model = _longt5_model("transient-global")
    ids = torch.randint(5, 90, (2, 16), generator=torch.Generator().manual_seed(2))
    decoder = torch.randint(5, 90, (2, 3), generator=torch.Generator().manual_seed(3))

    def forward(i, d):
        return model(input_ids=i, decoder_input_ids=d).logits[:, -1]

    return model, forward, (ids,), (decoder,)


MODELS = {"swin": _swin, "led": _led, "longt5": _longt5}
TARGET = 2  # a class of Swin's three, a token of the seq2seq vocabularies with a gradient


def _layouts(model, forward, inputs, extra, cache):
    """The laid-out calls' (name, kind, raw_index, dense_index, weight, maps, gradients, and
    each entry's query and key token and the diagonal entries: a cached placement keeps them)
    of one recorded forward (raw parts kept: no reduce)."""
    traced = [x.detach().requires_grad_() if x.is_floating_point() else x for x in inputs]
    with torch.enable_grad(), AttentionRecorder(model, record_io=True,
                                                keep_layouts=True) as recorder:
        score = forward(*traced, *extra)[:, TARGET].sum()
        trace(recorder, [*traced, *extra], layouts=cache)
        recorder.compute_gradients(score)
    return [(r.name, r.layout.kind, r.layout.raw_index, r.layout.dense_index, r.layout.weight,
             r.attention, r.gradient, *r.layout.tokens())
            for r in recorder.records if r.layout is not None]


def _assert_same(got, want):
    assert len(got) == len(want) and got
    for a, b in zip(got, want, strict=True):
        assert a[:2] == b[:2]
        for x, y in zip(a[2:], b[2:], strict=True):
            assert (x is None) == (y is None)
            assert x is None or torch.equal(x, y)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_cached_layout_equals_a_fresh_probe(name):
    model, forward, inputs, extra = MODELS[name]()
    fresh = _layouts(model, forward, inputs, extra, None)
    cache = LayoutCache()
    first = _layouts(model, forward, inputs, extra, cache)
    assert cache.misses > 0 and cache.hits == 0
    misses = cache.misses
    # other values, same shapes and mask pattern: every call from the cache
    other = tuple(x + 0.5 if x.is_floating_point() else x for x in inputs)
    cached = _layouts(model, forward, inputs, extra, cache)
    _layouts(model, forward, other, extra, cache)
    assert cache.misses == misses and cache.hits >= 2 * misses
    _assert_same(first, fresh)
    _assert_same(cached, fresh)


@pytest.mark.parametrize("name", list(MODELS))
def test_explanations_from_cached_layouts_equal_fresh_ones(name):
    model, forward, inputs, extra = MODELS[name]()
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    runs = [explainer.explain(inputs, target=TARGET, additional_forward_args=extra or None)
            for _ in range(2)]
    assert explainer.layouts.hits > 0
    fresh = HeterogenousAttentionAttribution(forward, model=model)
    want = fresh.explain(inputs, target=TARGET, additional_forward_args=extra or None)
    for run in runs:
        assert run.relevance.keys() == want.relevance.keys()
        for source, relevance in want.relevance.items():
            assert torch.equal(run.relevance[source], relevance)


def test_a_changed_shape_probes_afresh():
    model, forward, inputs, extra = _swin()
    cache = LayoutCache()
    _layouts(model, forward, inputs, extra, cache)
    misses = cache.misses
    _, _, (smaller,), _ = _swin(image=16)  # the same model, a 4×4 token grid
    got = _layouts(model, forward, (smaller,), extra, cache)
    assert cache.misses > misses
    _assert_same(got, _layouts(model, forward, (smaller,), extra, None))
    one = (inputs[0][:1],)  # another batch
    misses = cache.misses
    got = _layouts(model, forward, one, extra, cache)
    assert cache.misses > misses
    _assert_same(got, _layouts(model, forward, one, extra, None))


def test_a_changed_mask_pattern_probes_afresh():
    model, forward, inputs, (decoder, glob) = _led()
    cache = LayoutCache()
    _layouts(model, forward, inputs, (decoder, glob), cache)
    misses = cache.misses
    moved = torch.zeros_like(glob)
    moved[:, 5] = 1  # as many global tokens, elsewhere: the same shapes
    got = _layouts(model, forward, inputs, (decoder, moved), cache)
    assert cache.misses > misses
    _assert_same(got, _layouts(model, forward, inputs, (decoder, moved), None))


def _corrupt(cache: LayoutCache) -> int:
    """Move every cached layout's entries one token along (a stale map); how many."""
    count = 0
    for key, (value, size) in list(cache._placements.items()):
        if not isinstance(value, Placement) or value.layout is None:
            continue
        layout = value.layout
        _, _, _, n = layout.dense_shape
        row = layout.dense_index.div(n, rounding_mode="floor")
        shifted = row * n + (layout.dense_index + 1) % n
        sources = None
        if value.sources is not None:
            sources = tuple([torch.where(s >= 0, (s + 1) % (s.max() + 1), s) for s in side]
                            for side in value.sources)
        stale = dataclasses.replace(value, layout=dataclasses.replace(layout,
                                    dense_index=shifted), sources=sources)
        cache._placements[key] = (stale, size)
        count += 1
    return count


@pytest.mark.parametrize("name", list(MODELS))
def test_a_cached_layout_that_no_longer_holds_is_probed_afresh(name):
    model, forward, inputs, extra = MODELS[name]()
    fresh = _layouts(model, forward, inputs, extra, None)
    cache = LayoutCache()
    _layouts(model, forward, inputs, extra, cache)
    stale = _corrupt(cache)
    assert stale > 0
    misses = cache.misses
    got = _layouts(model, forward, inputs, extra, cache)
    assert cache.misses >= misses + stale  # every stale placement failed its check
    _assert_same(got, fresh)


def test_the_cache_keeps_its_bound():
    model, forward, inputs, extra = _swin()
    fresh = _layouts(model, forward, inputs, extra, None)
    cache = LayoutCache(max_entries=3)
    _layouts(model, forward, inputs, extra, cache)
    assert len(cache) == 3
    budget = max(size for _, size in cache._placements.values())
    cache = LayoutCache(max_elements=budget)
    _assert_same(_layouts(model, forward, inputs, extra, cache), fresh)
    assert 0 < cache.elements <= budget
    misses = cache.misses
    _assert_same(_layouts(model, forward, inputs, extra, cache), fresh)  # kept ones hit
    assert 0 < cache.misses - misses < misses and cache.hits > 0
    _, _, (smaller,), _ = _swin(image=16)  # another recording: the older one makes room
    _layouts(model, forward, (smaller,), extra, cache)
    assert cache.elements <= budget
    assert all(key[0] == next(iter(cache._placements))[0] for key in cache._placements)


@pytest.mark.parametrize("name", list(MODELS))
def test_layouts_read_from_digits_equal_layouts_probed_by_bit_planes(name, monkeypatch):
    """The few-product probes (ratios of responses read as the digits of a token's number)
    give the layouts the bit-plane probes give, to the bit; they fall back to bit planes where
    a row reads several tokens (LongT5's aggregates)."""
    from captum_hetattn.binding import canonical, layouts

    model, forward, inputs, extra = MODELS[name]()
    read = []
    decode = canonical._decode_by_ratio
    monkeypatch.setattr(canonical, "_decode_by_ratio",
                        lambda *a, **k: read.append(decode(*a, **k)) or read[-1])
    digits = _layouts(model, forward, inputs, extra, None)
    assert any(r is not None for r in read)
    monkeypatch.setattr(canonical, "_decode_by_ratio", lambda *a, **k: None)
    monkeypatch.setattr(layouts, "token_rows", lambda *a, **k: None)
    _assert_same(digits, _layouts(model, forward, inputs, extra, None))


@pytest.mark.parametrize("name", ["led", "longt5"])
def test_new_token_ids_of_the_same_shape_probe_afresh(name):
    """A layout can follow from the ids inside a model (a splice at placeholder ids, global
    tokens chosen from separator ids), and the check before reuse samples one plane: ids are
    part of the key, so other ids of the same shape are probed, not taken from the cache."""
    model, forward, (ids,), extra = MODELS[name]()
    cache = LayoutCache()
    _layouts(model, forward, (ids,), extra, cache)
    misses = cache.misses
    other = ids.flip(1)
    got = _layouts(model, forward, (other,), extra, cache)
    assert cache.misses > misses
    _assert_same(got, _layouts(model, forward, (other,), extra, None))
    hits = cache.hits
    _layouts(model, forward, (other,), extra, cache)  # the same ids again: from the cache
    assert cache.hits > hits
