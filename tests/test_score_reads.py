r"""Score entries read by scaled tangents (``binding.score_reads``): LED's bands and global rows
and LongT5's blocks (local and transient-global) get, from three or four products per
projection, exactly the layouts the bit-plane probes give; an entry that reads several rows is
never read (the probes take over); block aggregates spread their entries in the loop's order.
"""

from __future__ import annotations

import pytest
import torch
from test_layout_cache import _assert_same, _layouts
from test_layout_cache import _led as _led_case
from test_layouts import DECODER_IDS, IDS
from test_layouts import _longt5 as _longt5_model

from captum_hetattn.binding import layout_scores, score_reads
from captum_hetattn.binding.layout_cache import LayoutCache

torch.set_num_threads(1)


def _longt5(kind: str):
    model = _longt5_model(kind)

    def forward(i, d):
        return model(input_ids=i, decoder_input_ids=d).logits[:, -1]

    return model, forward, (IDS,), (DECODER_IDS,)


CASES = {"led": _led_case, "longt5_local": lambda: _longt5("local"),
         "longt5_tglobal": lambda: _longt5("transient-global")}


@pytest.mark.parametrize("name", list(CASES))
def test_layouts_read_from_scaled_tangents_equal_layouts_probed_by_bit_planes(name, monkeypatch):
    model, forward, inputs, extra = CASES[name]()
    found = []
    read = score_reads.read_by_scales
    monkeypatch.setattr(layout_scores, "read_by_scales",
                        lambda *a, **k: found.append(read(*a, **k)) or found[-1])
    scaled = _layouts(model, forward, inputs, extra, None)
    assert found and all(f is not None for f in found)  # every projection read by scales
    assert any(bool(f[0].any()) for f in found)
    monkeypatch.setattr(layout_scores, "read_by_scales", lambda *a, **k: None)
    _assert_same(scaled, _layouts(model, forward, inputs, extra, None))


@pytest.mark.parametrize("name", list(CASES))
def test_a_layout_cached_from_scaled_reads_equals_a_fresh_bit_plane_probe(name, monkeypatch):
    model, forward, inputs, extra = CASES[name]()
    cache = LayoutCache()
    _layouts(model, forward, inputs, extra, cache)
    misses = cache.misses
    cached = _layouts(model, forward, inputs, extra, cache)
    assert cache.misses == misses and cache.hits >= misses
    monkeypatch.setattr(layout_scores, "read_by_scales", lambda *a, **k: None)
    _assert_same(cached, _layouts(model, forward, inputs, extra, None))


def _linear_push(matrix: torch.Tensor):
    """The push of a linear map from a (rows, width) tangent to entries: ``matrix`` (entries,
    rows) contracted with the tangent's row sums against fixed column weights."""
    weights = torch.randn(4, generator=torch.Generator().manual_seed(0))
    return lambda tangent: matrix @ (tangent @ weights)


def test_each_entry_reads_its_row_and_block_exactly():
    rows = 200  # two base-64 digits
    entries = torch.randint(0, rows, (50,), generator=torch.Generator().manual_seed(1))
    matrix = torch.zeros(50, rows)
    matrix[torch.arange(50), entries] = torch.randn(50, generator=torch.Generator().manual_seed(2))
    matrix[7] = 0  # an entry that reads nothing
    direction = torch.randn(rows, 4, generator=torch.Generator().manual_seed(3))
    read = score_reads.read_by_scales(_linear_push(matrix), direction, torch.arange(rows),
                                      torch.zeros(4, dtype=torch.long))
    assert read is not None
    reached, row, block = read
    want = torch.ones(50, dtype=torch.bool)
    want[7] = False
    assert torch.equal(reached, want)
    assert torch.equal(row[want], entries[want]) and int(row[7]) == 0
    assert not bool(block.any())


def test_an_entry_that_reads_several_rows_is_not_read():
    rows = 70
    matrix = torch.zeros(3, rows)
    matrix[0, 5] = 1.0
    matrix[1, 9] = -2.0
    matrix[2, 3], matrix[2, 68] = 0.7, 1.3  # two rows: no power of two
    direction = torch.randn(rows, 4, generator=torch.Generator().manual_seed(4))
    assert score_reads.read_by_scales(_linear_push(matrix), direction, torch.arange(rows),
                                      torch.zeros(4, dtype=torch.long)) is None


def test_aggregate_pairs_follow_the_order_of_one_pass_per_aggregate_row():
    generator = torch.Generator().manual_seed(5)
    row = torch.randint(-1, 12, (300,), generator=generator)
    fresh = torch.rand(300, generator=generator) < 0.7
    members = {3: torch.tensor([0, 1, 2]), 7: torch.tensor([4, 5]), 11: torch.tensor([9]),
               20: torch.tensor([1, 2])}  # 20: no entry reads it
    entries, tokens, shares = [], [], []
    for key_row, key_tokens in members.items():
        rows = (fresh & (row == key_row)).nonzero().flatten()
        entries.append(rows.repeat_interleave(key_tokens.numel()))
        tokens.append(key_tokens.repeat(rows.numel()))
        shares.append(torch.full((rows.numel() * key_tokens.numel(),), 1 / key_tokens.numel()))
    got = score_reads.aggregate_pairs(fresh, row, members)
    for a, b in zip(got, (torch.cat(entries), torch.cat(tokens), torch.cat(shares)),
                    strict=True):
        assert torch.equal(a, b)
    for piece in (1, 5, 64):  # in pieces of whole entries: the same pairs in the same order
        pieces = list(score_reads.aggregate_pieces(fresh, row, members, piece))
        assert len(pieces) > 1
        assert all(len(p[0]) < piece + 3 for p in pieces)  # whole entries of <= 3 tokens
        for a, b in zip(got, zip(*pieces, strict=True), strict=True):
            assert torch.equal(a, torch.cat(b))


def test_a_tangent_that_cancels_on_an_entry_is_drawn_again():
    # entry 0 reads rows 0 and 1 with opposite signs: the first draw cancels there exactly
    matrix = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    draws = iter([torch.tensor([2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 5.0])])
    direction, plain = score_reads.steady_direction(lambda t: matrix @ t, lambda: next(draws))
    assert torch.equal(direction, torch.tensor([1.0, 3.0, 5.0]))
    assert torch.equal(plain != 0, torch.tensor([True, True, False]))  # entry 2 reads nothing
    draws = iter([torch.tensor([1.0, 3.0, 5.0]), torch.tensor([2.0, 2.0, 3.0])])
    direction, plain = score_reads.steady_direction(lambda t: matrix @ t, lambda: next(draws))
    assert torch.equal(direction, torch.tensor([1.0, 3.0, 5.0]))  # confirmed by the second


@pytest.mark.parametrize("name", list(CASES))
def test_layers_laid_out_alike_share_one_copy_in_the_cache(name):
    model, forward, inputs, extra = CASES[name]()
    cache = LayoutCache()
    fresh = _layouts(model, forward, inputs, extra, cache)
    kept = [p for p, _ in cache._placements.values() if getattr(p, "layout", None) is not None]
    assert len(kept) >= 2  # two encoder layers
    first = kept[0].layout
    assert all(p.layout.raw_index is first.raw_index for p in kept[1:])
    sizes = [size for p, size in cache._placements.values()
             if getattr(p, "layout", None) is not None]
    assert sizes == [first.raw_index.numel()] + [0] * (len(sizes) - 1)  # counted once
    _assert_same(_layouts(model, forward, inputs, extra, cache), fresh)
