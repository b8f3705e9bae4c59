"""Flash capture at the speed of a backward pass (issue 20, item 3): the CPU kernel's own
forward and backward, maps rebuilt from its log-sum-exp, chunks written into reused memory and
reduced in the gradient's memory, class verdicts kept per model. Each shortcut is compared with
the path it replaces."""

import pytest
import torch
import torch.nn.functional as F

from captum_hetattn import HeterogenousAttentionAttribution
from captum_hetattn.capture.backends import flash as flash_module
from captum_hetattn.capture.backends import flash_blocks
from captum_hetattn.capture.backends.flash import FlashAttention, Workspace, attention_map
from captum_hetattn.engine import reduce as reduce_module
from captum_hetattn.rules.ops import corrected

MIN = torch.finfo(torch.float32).min


def _states(seed=0, batch=2, heads=4, n=23, d=8):
    g = torch.Generator().manual_seed(seed)
    # (B, n, H, d) transposed, as transformers hands them over (not contiguous)
    return [torch.randn(batch, n, heads, d, generator=g).transpose(1, 2) for _ in range(3)]


def _masks(batch=2, heads=4, n=23):
    g = torch.Generator().manual_seed(5)
    hidden_row = torch.zeros(batch, 1, n, n)
    hidden_row[0, 0, 3] = float("-inf")  # one query that sees no key
    padding = torch.zeros(batch, 1, 1, n)
    padding[1, ..., -4:] = MIN  # the last keys of example 1 are padding
    return {"none": None, "additive": torch.randn(batch, 1, n, n, generator=g),
            "per head": torch.randn(batch, heads, n, n, generator=g),
            "hidden row": hidden_row, "padding": padding}


def _run(query, key, value, mask, chunk, fused, monkeypatch, sink_result=True, workspace=None):
    """Forward and backward through FlashAttention: output, q/k/v gradients, the sink's chunks."""
    monkeypatch.setattr(flash_module, "_fused_cpu", lambda *a: fused)
    leaves = [t.detach().requires_grad_() for t in (query, key, value)]
    chunks = []

    def sink(attention, gradient, first, heads):
        chunks.append((first, attention.clone(), gradient.clone(), attention, gradient))
        return sink_result

    probe = torch.zeros((), requires_grad=True)
    output = FlashAttention.apply(*leaves, mask, probe, 0.35, sink, chunk, workspace)
    output.backward(torch.randn(output.shape, generator=torch.Generator().manual_seed(9)))
    return output.detach(), [t.grad for t in leaves], chunks


@pytest.mark.parametrize("mask_name", list(_masks()))
@pytest.mark.parametrize("chunk", [None, 3, 1])
def test_kernel_backward_equals_the_rebuilt_backward(mask_name, chunk, monkeypatch):
    query, key, value = _states()
    mask = _masks()[mask_name]
    out_f, grads_f, chunks_f = _run(query, key, value, mask, chunk, True, monkeypatch,
                                    workspace=Workspace())
    out_e, grads_e, chunks_e = _run(query, key, value, mask, chunk, False, monkeypatch)
    # the output is the kernel's, bit for bit what F.scaled_dot_product_attention gives
    assert torch.equal(out_f, F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                             scale=0.35))
    for got, expected in zip(grads_f, grads_e, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert [c[0] for c in chunks_f] == [c[0] for c in chunks_e]
    for (_, a_f, g_f, _, _), (_, a_e, g_e, _, _) in zip(chunks_f, chunks_e, strict=True):
        torch.testing.assert_close(a_f, a_e, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(g_f, g_e, atol=1e-7, rtol=1e-5)
    if mask_name == "hidden row":  # the query that sees no key records a zero row
        assert not chunks_f[0][1][0, :, 3].any()


def test_the_kernel_path_is_taken_on_the_cpu_in_float32():
    query, key, value = _states()
    assert flash_module._fused_cpu(query, key, value, None, 0.35)
    assert flash_module._fused_cpu(query, key, value, _masks()["padding"], 0.35)
    assert not flash_module._fused_cpu(query.double(), key.double(), value.double(), None, 0.35)
    learned = torch.zeros(2, 1, 23, 23, requires_grad=True)  # a bias that needs its gradient
    assert not flash_module._fused_cpu(query, key, value, learned, 0.35)


def test_chunks_reuse_memory_only_when_the_sink_keeps_none(monkeypatch):
    query, key, value = _states(heads=4)
    _, _, consumed = _run(query, key, value, None, 1, True, monkeypatch, sink_result=True,
                          workspace=Workspace())
    pointers = {c[3].data_ptr() for c in consumed}
    assert len(consumed) == 4 and len(pointers) == 1  # one memory, chunk after chunk
    _, _, kept = _run(query, key, value, None, 1, True, monkeypatch, sink_result=None,
                      workspace=Workspace())
    assert len({c[3].data_ptr() for c in kept}) == 4
    for _, attention, gradient, live_attention, live_gradient in kept:  # nothing overwritten
        assert torch.equal(attention, live_attention) and torch.equal(gradient, live_gradient)


@pytest.mark.parametrize("correction", ["pos", "abs", "full", "none"])
@pytest.mark.parametrize("heads", [1, 3])
def test_reduction_in_the_gradients_memory_is_the_same_to_the_bit(correction, heads):
    g = torch.Generator().manual_seed(1)
    attention = torch.rand(2, heads, 5, 7, generator=g)
    gradient = torch.randn(2, heads, 5, 7, generator=g)
    expected = corrected(attention, gradient, correction).sum(dim=1)
    assert torch.equal(reduce_module._corrected_sum(attention, gradient.clone(), correction),
                       expected)
    total = torch.randn(2, 5, 7, generator=g)
    summed = reduce_module._corrected_sum(attention, gradient.clone(), correction, total.clone())
    assert torch.equal(summed, total + expected)


def test_nonzero_reads_like_any():
    for tensor in (torch.zeros(3, 4), torch.tensor([0.0, -2.0]), torch.tensor([0.0, 3.0]),
                   torch.tensor([0.0, float("nan")]), torch.zeros(0)):
        assert reduce_module._nonzero(tensor) == bool(tensor.any())


def _bert(padding, length=19):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, vocab_size=99, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(5, 99, (2, length), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, length - padding:] = 0  # example 1's last ``padding`` tokens
    return model, ids, mask


@pytest.mark.parametrize("padding", [False, True])
def test_relevance_on_the_kernel_path_equals_the_rebuilt_path(padding, monkeypatch, count_flash):
    model, ids, mask = _bert(5 if padding else 0)

    def explain():
        explainer = HeterogenousAttentionAttribution(
            lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model)
        return explainer.explain(ids, target=1, additional_forward_args=(mask,))

    rebuilt_maps = []
    lse_map = flash_module.lse_map
    monkeypatch.setattr(flash_module, "lse_map",
                        lambda *a, **k: rebuilt_maps.append(1) or lse_map(*a, **k))
    fused = explain()
    assert count_flash and rebuilt_maps  # flash capture, on the kernel's path
    monkeypatch.setattr(flash_module, "_fused_cpu", lambda *a: False)
    rebuilt = explain()
    for name, value in rebuilt.relevance.items():
        torch.testing.assert_close(fused.relevance[name], value, atol=1e-6, rtol=1e-5)
    for name, value in rebuilt.padding.items():
        assert torch.equal(fused.padding[name], value)
    if padding:
        assert any(bool(p.any()) for p in fused.padding.values())


def test_class_verdicts_are_kept_for_the_models_life(monkeypatch):
    checks = []
    original = flash_module.FlashBackend._reproduces

    def counted(self, module, *args, **kwargs):
        checks.append(type(module).__name__)
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(flash_module.FlashBackend, "_reproduces", counted)
    model, ids, mask = _bert(0)
    explainer = HeterogenousAttentionAttribution(lambda i: model(input_ids=i).logits,
                                                 model=model)
    first = explainer.attribute(ids, target=1)
    assert checks == ["BertSelfAttention"]  # the first call of the class, once
    again = HeterogenousAttentionAttribution(lambda i: model(input_ids=i).logits, model=model)
    torch.testing.assert_close(again.attribute(ids, target=1), first)
    assert checks == ["BertSelfAttention"]  # same model, another explainer: kept
    other, _, _ = _bert(0)
    HeterogenousAttentionAttribution(lambda i: other(input_ids=i).logits,
                                     model=other).attribute(ids, target=1)
    assert checks == ["BertSelfAttention"] * 2  # another model is checked again


def test_class_check_compares_maps_at_spread_rows():
    rows = flash_module._spread(1000)
    assert rows[0] == 0 and rows[-1] == 999 and len(rows) == flash_module.CHECK_ROWS
    assert flash_module._spread(flash_module.CHECK_ROWS) is None
    query, key, _ = _states(n=300)
    full = attention_map(query, key, None, 0.35)
    picked = flash_module._spread(300)
    assert torch.equal(flash_module._rows(full, picked),
                       attention_map(flash_module._rows(query, picked), key, None, 0.35))
    mask = torch.zeros(2, 1, 1, 300)  # broadcast over the rows: kept whole
    assert flash_module._rows(mask, picked) is mask


def test_class_check_of_a_long_input_runs_the_eager_function_on_spread_rows(monkeypatch,
                                                                           count_flash):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, vocab_size=99, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(5, 99, (1, 300), generator=torch.Generator().manual_seed(3))
    seen = []
    original = flash_module.FlashBackend._reproduces

    def watched(self, module, eager, query, *args, **kwargs):
        def eager_rows(module, query, *rest, **named):
            seen.append(query.shape[-2])
            return eager(module, query, *rest, **named)

        return original(self, module, eager_rows, query, *args, **kwargs)

    monkeypatch.setattr(flash_module.FlashBackend, "_reproduces", watched)
    flash = HeterogenousAttentionAttribution(lambda i: model(input_ids=i).logits, model=model,
                                             capture="flash").explain(ids, target=1)
    assert seen == [flash_module.CHECK_ROWS]  # the check: spread rows, not all 300
    assert len(count_flash) == 2  # and it passed: both calls through flash capture
    eager_run = HeterogenousAttentionAttribution(lambda i: model(input_ids=i).logits,
                                                 model=model, capture="eager").explain(ids,
                                                                                       target=1)
    for name, value in eager_run.relevance.items():
        torch.testing.assert_close(flash.relevance[name], value, atol=1e-5, rtol=1e-4)


def test_row_blocks_cover_the_rows_with_no_short_block():
    blocks = flash_module._row_blocks(100, 20)
    assert [(b.start, b.stop) for b in blocks] == [(0, 20), (20, 40), (40, 60), (60, 80),
                                                   (80, 100)]
    blocks = flash_module._row_blocks(70, 20)  # a last block of 10 rows joins the one before
    assert [(b.start, b.stop) for b in blocks] == [(0, 20), (20, 40), (40, 70)]
    assert [(b.start, b.stop) for b in flash_module._row_blocks(70, 1)] == [
        (s, s + flash_module.MIN_ROWS) for s in range(0, 48, flash_module.MIN_ROWS)] + [(48, 70)]
    assert [(b.start, b.stop) for b in flash_module._row_blocks(9, None)] == [(0, 9)]
    assert [(b.start, b.stop) for b in flash_module._row_blocks(9, 4)] == [(0, 9)]


def _reduced(query, key, value, mask, chunk, rows, correction, narrow=False):
    """``Ā`` and what the reduction notes (key mass zeros, causal, no gradient) of one flash
    call on the kernel's path, its chunks handed over whole (``rows=None``) or in row blocks
    (with ``narrow``, over the leading keys their rows see); last, the blocks' (rows, keys)."""
    from captum_hetattn.capture import AttentionRecord

    batch, heads, n = query.shape[:3]
    capture = reduce_module.Capture(correction)
    key_ = ("a", 0)
    capture.corrections[key_] = correction
    capture.mass_of.add(key_)
    record = AttentionRecord(name="a", call_index=0, role=None, attention=None, gradient=None,
                             shape=(batch, heads, n, n))
    reduced, rows_seen = [], []

    def sink(attention, gradient, first, count, row=0):
        rows_seen.append(attention.shape[2] if not narrow else tuple(attention.shape[2:]))
        done = capture.reduce_heads(record, attention, gradient, first, count, row)
        if done is not None:
            reduced.append(done.clone())
        return True

    leaves = [t.detach().requires_grad_() for t in (query, key, value)]
    output = FlashAttention.apply(*leaves, mask, torch.zeros((), requires_grad=True), 0.35,
                                  sink, chunk, Workspace(), rows,
                                  (lambda: capture.takes_narrow_blocks(record)) if narrow else None)
    output.backward(torch.randn(output.shape, generator=torch.Generator().manual_seed(9)))
    assert len(reduced) == 1
    return (reduced[0], capture.key_mass[key_] == 0, key_ in capture.causal,
            key_ in capture.no_gradient, rows_seen)


@pytest.mark.parametrize("mask_name", list(_masks()))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [None, 3, 1])
def test_reduction_in_blocks_of_rows_is_the_same_to_the_bit(mask_name, causal, chunk):
    n = 70
    query, key, value = _states(n=n)
    mask = _masks(n=n)[mask_name]
    if causal:
        upper = torch.full((n, n), float("-inf")).triu(1)[None, None]
        mask = upper if mask is None else mask + upper
    for correction in ("pos", "abs", "full", "none"):
        whole = _reduced(query, key, value, mask, chunk, None, correction)
        assert set(whole[-1]) == {n}
        for rows in (16, 23):
            blocks = _reduced(query, key, value, mask, chunk, rows, correction)
            assert max(blocks[-1]) < n  # row blocks were handed over
            assert torch.equal(blocks[0], whole[0])
            assert torch.equal(blocks[1], whole[1]) and blocks[2:4] == whole[2:4]
        assert whole[2] == causal
        if mask_name == "padding":
            assert whole[1][1, -4:].all() and not whole[1][0].any()


@pytest.mark.parametrize("mask_name", list(_masks()))
@pytest.mark.parametrize("causal", [False, True])
def test_blocks_over_the_keys_their_rows_see_give_the_same_reduction_to_the_bit(mask_name,
                                                                                causal):
    n = 70
    query, key, value = _states(n=n)
    mask = _masks(n=n)[mask_name]
    if causal:
        upper = torch.full((n, n), MIN).triu(1)[None, None]
        mask = upper if mask is None else mask + upper.clamp(min=MIN / 2)
    for correction in ("pos", "abs", "full", "none"):
        whole = _reduced(query, key, value, mask, 3, None, correction)
        narrow = _reduced(query, key, value, mask, 3, 16, correction, narrow=True)
        assert torch.equal(narrow[0], whole[0])
        assert torch.equal(narrow[1], whole[1]) and narrow[2:4] == whole[2:4]
        widths = [keys for _, keys in narrow[-1]]
        if causal:  # each block builds the keys up to its end (per chunk of heads)
            assert widths == [16, 32, 48, 70] * 2
        else:
            assert set(widths) == {n}


def test_a_block_with_a_row_that_sees_no_key_is_built_over_every_key():
    blocks = [slice(0, 16), slice(16, 32), slice(32, 50)]
    mask = torch.full((50, 50), MIN).triu(1)[None, None].repeat(2, 1, 1, 1)
    assert flash_module.key_extents(mask, blocks, 50) == [16, 32, 50]
    mask[:, :, 20] = MIN  # query 20 sees no key in any example: its row is the mask's softmax
    assert flash_module.key_extents(mask, blocks, 50) == [16, 50, 50]
    assert flash_module.key_extents(None, blocks, 50) == [50] * 3


def test_the_hidden_querys_row_is_zero_in_its_block():
    n = 70
    query, key, value = _states(n=n)
    mask = torch.zeros(2, 1, n, n)
    mask[0, 0, 40] = float("-inf")  # a query in the third block sees no key
    reduced = _reduced(query, key, value, mask, None, 16, "none")[0]
    assert not reduced[0, 40].any() and reduced[0, 39].any() and reduced[1, 40].any()


@pytest.mark.parametrize("options", [{}, {"return_maps": True}])
def test_relevance_from_row_blocks_equals_whole_chunks(options, monkeypatch, count_flash):
    model, ids, mask = _bert(7, length=45)
    blocks = []
    on_flash = flash_module.FlashBackend._on_flash

    def watched(self, entry, attention, *args):
        blocks.append(attention.shape[2])
        return on_flash(self, entry, attention, *args)

    monkeypatch.setattr(flash_module.FlashBackend, "_on_flash", watched)

    def explain():
        explainer = HeterogenousAttentionAttribution(
            lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model)
        return explainer.explain(ids, target=1, additional_forward_args=(mask,), **options)

    whole = explain()
    assert count_flash and set(blocks) == {45}
    blocks.clear()
    monkeypatch.setattr(flash_module, "ROW_BUDGET", 1)  # blocks of MIN_ROWS rows
    rows = explain()
    assert set(blocks) == {16, 29}
    for name, value in whole.relevance.items():
        assert torch.equal(rows.relevance[name], value)
    for name, value in whole.padding.items():
        assert torch.equal(rows.padding[name], value)
    if options.get("return_maps"):
        assert whole.maps and all(torch.equal(rows.maps[k], v) for k, v in whole.maps.items())


def test_the_first_layers_state_gradients_are_not_computed(monkeypatch, count_flash):
    """Nothing the gradient pass asks for lies below the first layer's queries, keys and values:
    its flash backward skips them (the kernel's backward), and the relevance is unchanged."""
    model, ids, mask = _bert(3)
    executed = flash_module._executed
    seen = []

    def watched(ctx):
        seen.append(executed(ctx)[:3])
        return seen[-1]

    def explain():
        explainer = HeterogenousAttentionAttribution(
            lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model)
        return explainer.explain(ids, target=1, additional_forward_args=(mask,))

    monkeypatch.setattr(flash_module, "_executed", watched)
    skipped = explain()
    assert count_flash and len(seen) == 2  # two layers, from the last
    assert any(seen[0]) and not any(seen[1])
    monkeypatch.setattr(flash_module, "_executed", lambda ctx: [True] * 11)  # the old backward
    every = explain()
    for name, value in every.relevance.items():
        assert torch.equal(skipped.relevance[name], value)
    for name, value in every.padding.items():
        assert torch.equal(skipped.padding[name], value)


def test_a_backward_into_the_states_still_gets_their_gradients(monkeypatch):
    """Where the states' nodes run (a backward into the inputs), both paths compute them."""
    query, key, value = _states()
    for fused in (True, False):
        _, grads, _ = _run(query, key, value, None, None, fused, monkeypatch)
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_narrow_blocks_are_cut_to_narrow_rows_and_reduce_the_same(monkeypatch):
    """Under a causal mask, blocks built over the keys their rows see are at most NARROW_ROWS
    rows (less of the hidden triangle built), and give the whole reduction to the bit."""
    n = 70
    query, key, value = _states(n=n)
    mask = torch.full((n, n), MIN).triu(1)[None, None]
    monkeypatch.setattr(flash_module, "NARROW_ROWS", 16)
    for correction in ("pos", "none"):
        whole = _reduced(query, key, value, mask, 3, None, correction)
        narrow = _reduced(query, key, value, mask, 3, 40, correction, narrow=True)
        assert torch.equal(narrow[0], whole[0]) and narrow[2:4] == whole[2:4]
        assert [keys for _, keys in narrow[-1]] == [16, 32, 48, 70] * 2
        wide = _reduced(query, key, value, mask, 3, 40, correction)  # not narrow: 40 rows
        assert wide[-1] == [40, 30] * 2


def test_a_call_reuses_the_memory_of_a_sum_the_adjoint_has_dropped(monkeypatch, count_flash):
    """With row blocks and the streaming adjoint, the second layer's sum over heads is written
    into the first one's memory (used and dropped by the adjoint), and the relevance is the
    same as with new memory for each."""
    model, ids, mask = _bert(4, length=45)
    monkeypatch.setattr(flash_module, "ROW_BUDGET", 1)  # row blocks
    total = reduce_module.Capture._total
    given = []

    def watched(self, like, shape):
        spare = self._spare
        given.append((total(self, like, shape), spare))
        return given[-1][0]

    def explain():
        explainer = HeterogenousAttentionAttribution(
            lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model)
        return explainer.explain(ids, target=1, additional_forward_args=(mask,))

    monkeypatch.setattr(reduce_module.Capture, "_total", watched)
    reused = explain()
    assert count_flash and len(given) == 2
    assert given[0][1] is None and given[1][1] is not None
    assert given[1][0].data_ptr() == given[0][0].data_ptr()  # the first call's memory
    monkeypatch.setattr(reduce_module.Capture, "_total",
                        lambda self, like, shape: like.new_empty(shape))
    fresh = explain()
    for name, value in fresh.relevance.items():
        assert torch.equal(reused.relevance[name], value)


def _causal(n, batch=1, low=MIN):
    return torch.full((n, n), low).triu(1)[None, None].repeat(batch, 1, 1, 1)


def test_causal_masks_are_read_as_the_kernels_causal_mode():
    n = 40
    flash_blocks._CAUSAL_READ = None
    assert flash_module.causal_kernel(_causal(n), n, n) == (True, False)
    assert flash_module.causal_kernel(_causal(n, low=float("-inf")), n, n) == (True, False)
    padded = _causal(n, batch=2)
    padded[1, ..., :3] = MIN  # example 1's first keys are padding: its first queries see none
    assert flash_module.causal_kernel(padded, n, n) == (False, True)
    padded[1, 0, :3, :3] = _causal(3)[0, 0]  # ... unless they see the keys up to themselves
    assert flash_module.causal_kernel(padded, n, n) == (True, True)
    leaky = _causal(n)
    leaky[..., 5, 30] = -1.0  # one later key seen
    assert flash_module.causal_kernel(leaky, n, n) == (False, True)
    assert flash_module.causal_kernel(None, n, n) == (False, False)
    assert flash_module.causal_kernel(_causal(n)[..., :30], n, 30) == (False, True)
    mask = _causal(n)
    assert flash_module.causal_kernel(mask, n, n) == (True, False)
    mask[..., 7, 9] = 0  # an in-place change is read again
    assert flash_module.causal_kernel(mask, n, n) == (False, True)


@pytest.mark.parametrize("padding", [False, True])
def test_the_causal_kernel_gives_the_masked_kernels_outputs_and_maps_to_the_bit(padding,
                                                                                monkeypatch):
    """Over more keys than the kernel's blocks (its causal mode skips whole blocks)."""
    n = 1100
    query, key, value = _states(batch=2, heads=2, n=n, d=8)
    mask = _causal(n, batch=2)
    if padding:
        mask[0, ..., 1:, 0] = MIN  # a padded key the later queries do not see
    seen = []
    read = flash_module.causal_kernel

    def watched(*args):
        seen.append(read(*args))
        return seen[-1]

    flash_blocks._CAUSAL_READ = None
    monkeypatch.setattr(flash_module, "causal_kernel", watched)
    out_c, grads_c, chunks_c = _run(query, key, value, mask, None, True, monkeypatch)
    assert seen == [(True, padding)]
    monkeypatch.setattr(flash_module, "causal_kernel", lambda *a: (False, True))  # the old path
    out_m, grads_m, chunks_m = _run(query, key, value, mask, None, True, monkeypatch)
    assert torch.equal(out_c, out_m)
    assert all(torch.equal(a, b) for a, b in zip(grads_c, grads_m, strict=True))
    assert len(chunks_c) == len(chunks_m) == 1
    assert torch.equal(chunks_c[0][1], chunks_m[0][1]) and torch.equal(chunks_c[0][2],
                                                                        chunks_m[0][2])


def _gpt2(length=45):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=99, n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(5, 99, (2, length), generator=torch.Generator().manual_seed(3))
    return model, ids


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_blocks_no_output_gradient_reaches_go_unbuilt_and_reduce_the_same(name, monkeypatch,
                                                                          count_flash):
    """Under a one-token readout the last layer's blocks without that token get no output
    gradient: they reach the reduce unbuilt (zero keys), and the relevance is the same to the
    bit as with every block built."""
    if name == "bert":
        model, ids, mask = _bert(7, length=45)

        def forward(i, m):
            return model(input_ids=i, attention_mask=m).logits
        extra, target = (mask,), 1
    else:
        model, ids = _gpt2()

        def forward(i):
            return model(input_ids=i).logits[:, -1]
        extra, target = None, 7
    monkeypatch.setattr(flash_module, "ROW_BUDGET", 1)  # blocks of MIN_ROWS rows
    monkeypatch.setattr(flash_module, "SPARSE_STATES", False)  # (the kernel's q/k/v gradients)
    widths = []
    reduce_heads = reduce_module.Capture.reduce_heads

    def watched(self, record, attention, *args):
        widths.append(attention.shape[-1])
        return reduce_heads(self, record, attention, *args)

    watched.rows = watched.keeps_no_chunk = True  # (as the method says of itself)
    monkeypatch.setattr(reduce_module.Capture, "reduce_heads", watched)

    def explain():
        explainer = HeterogenousAttentionAttribution(forward, model=model)
        return explainer.explain(ids, target=target, additional_forward_args=extra)

    unbuilt = explain()
    assert count_flash and widths.count(0) > 0 and any(widths)
    widths.clear()
    monkeypatch.setattr(flash_module, "_dead_blocks", lambda ctx, g, blocks: [False] * len(blocks))
    built = explain()
    assert 0 not in widths
    for got, expected in ((unbuilt.relevance, built.relevance),
                          (unbuilt.padding, built.padding)):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(got[key], value)


def test_a_block_without_output_gradient_is_built_where_the_reduce_cannot_settle_it():
    """Nothing settles whether a call is causal before its first block: a dead first block of
    a call without a causal mask is built."""
    from captum_hetattn.capture import AttentionRecord

    capture = reduce_module.Capture("pos")
    record = AttentionRecord(name="a", call_index=0, role=None, attention=None, gradient=None,
                             shape=(1, 2, 40, 40))
    capture.corrections[("a", 0)] = "pos"
    assert not capture.takes_dead_blocks(record, False)
    assert capture.takes_dead_blocks(record, True)
    capture.mass_of.add(("a", 0))  # its key mass is read: every block built
    assert not capture.takes_dead_blocks(record, True)


@pytest.mark.parametrize("causal", [False, True])
def test_state_gradients_from_the_live_blocks_equal_the_kernels(causal, monkeypatch):
    """Where most rows get no output gradient, the q/k/v gradients come from the rebuilt maps
    of the others: the kernel's to float rounding, and the blocks handed over the same."""
    n = 70
    query, key, value = _states(n=n)
    mask = torch.full((n, n), MIN).triu(1)[None, None] if causal else None
    d_out = torch.zeros(2, 4, n, 8)
    d_out[:, :, 20:30] = torch.randn(2, 4, 10, 8, generator=torch.Generator().manual_seed(4))
    started = []
    start = flash_module.SparseStates.start

    def watched(*args):
        started.append(start(*args))
        return started[-1]

    monkeypatch.setattr(flash_module.SparseStates, "start", staticmethod(watched))

    def run(sparse):
        monkeypatch.setattr(flash_module, "SPARSE_STATES", sparse)
        leaves = [t.detach().requires_grad_() for t in (query, key, value)]
        handed = []

        def sink(attention, gradient, first, heads, row=0):
            handed.append((first, row, attention.clone(), gradient.clone()))
            return True

        output = FlashAttention.apply(*leaves, mask, torch.zeros((), requires_grad=True), 0.35,
                                      sink, 1, Workspace(), 16, None, lambda causal: True)
        output.backward(d_out)
        return [t.grad for t in leaves], handed

    sparse, handed_sparse = run(True)
    assert started[-1] is not None
    kernel, handed_kernel = run(False)
    assert started[-1] is None
    for got, expected in zip(sparse, kernel, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert len(handed_sparse) == len(handed_kernel) == 4 * 4  # heads x blocks
    assert [b[2].shape[-1] for b in handed_sparse[:4]] == [0, n, 0, 0]  # rows 16-31 live
    for a, b in zip(handed_sparse, handed_kernel, strict=True):
        assert a[:2] == b[:2] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_relevance_with_state_gradients_from_the_live_blocks_is_the_kernels(name, monkeypatch,
                                                                            count_flash):
    model, ids = _gpt2() if name == "gpt2" else _bert(0, length=45)[:2]

    def forward(i):
        out = model(input_ids=i).logits
        return out[:, -1] if name == "gpt2" else out
    monkeypatch.setattr(flash_module, "ROW_BUDGET", 1)  # blocks of MIN_ROWS rows
    started = []
    start = flash_module.SparseStates.start
    monkeypatch.setattr(flash_module.SparseStates, "start",
                        staticmethod(lambda *a: started.append(start(*a)) or started[-1]))

    def explain(sparse):
        monkeypatch.setattr(flash_module, "SPARSE_STATES", sparse)
        return HeterogenousAttentionAttribution(forward, model=model).explain(ids, target=1)

    sparse = explain(True)
    assert count_flash and any(s is not None for s in started)
    kernel = explain(False)
    for key, value in kernel.relevance.items():
        torch.testing.assert_close(sparse.relevance[key], value, atol=1e-6, rtol=1e-5)
