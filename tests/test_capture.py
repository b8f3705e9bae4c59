r"""Tests of :mod:`captum_hetattn.capture` on tiny random models of every supported family.

References are computed independently of the recorder: the model's own eager attention
(``output_attentions=True`` where the model returns maps, a plain softmax collector for the full
list) and, for ``nn.MultiheadAttention``, a hand-written re-implementation with the same weights.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tiny_models import BUILDERS, HIDDEN, run
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from captum_hetattn.capture import AttentionRecord, AttentionRecorder

TOL = 1e-6
S, X = "self", "cross"


# ------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------


class SoftmaxCollector(TorchFunctionMode):
    """Collects every 4-D softmax output, in order (the test's own, minimal interception)."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") == "softmax" and out.dim() == 4:
            self.maps.append(out)
        return out


class ManualMHA(nn.Module):
    """``nn.MultiheadAttention`` (batch_first) written out by hand, keeping its probabilities."""

    def __init__(self, mha: nn.MultiheadAttention, sink: list[Tensor]) -> None:
        super().__init__()
        self.mha, self.sink = mha, sink
        self.batch_first = mha.batch_first  # read by nn.TransformerEncoder.forward

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        m = self.mha
        heads, dim = m.num_heads, m.embed_dim // m.num_heads
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
        b_q, b_k, b_v = m.in_proj_bias.chunk(3)

        def split(x: Tensor) -> Tensor:
            return x.view(x.shape[0], x.shape[1], heads, dim).transpose(1, 2)

        q, k, v = split(F.linear(query, w_q, b_q)), split(F.linear(key, w_k, b_k)), split(
            F.linear(value, w_v, b_v)
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim)
        for mask, index in ((attn_mask, ...), (key_padding_mask, (slice(None), None, None))):
            if mask is None:
                continue
            mask = mask[index]
            scores = scores.masked_fill(mask, -math.inf) if mask.dtype == torch.bool else (
                scores + mask
            )
        probs = scores.softmax(-1)
        self.sink.append(probs)
        out = (probs @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
        return m.out_proj(out), None


def manual_torch_reference(model: nn.Module, inputs: dict) -> tuple[Any, list[Tensor]]:
    reference = copy.deepcopy(model)
    sink: list[Tensor] = []
    for module in list(reference.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, name, ManualMHA(child, sink))
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fast path reads MHA attributes
    try:
        out = run(reference, inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    return out, sink


# ------------------------------------------------------------------------------------------
# per-family expectations
# ------------------------------------------------------------------------------------------


def project(t: Tensor) -> Tensor:
    """A fixed random linear objective, one scalar per example."""
    weights = torch.randn(t.shape, generator=torch.Generator().manual_seed(7))
    return (t * weights).flatten(1).sum(1)


def interleave(a, b) -> list:
    return [x for pair in zip(a, b, strict=True) for x in pair]


def seq2seq(o) -> list:
    return [*o.encoder_attentions, *interleave(o.decoder_attentions, o.cross_attentions)]


@dataclass
class Family:
    objective: Callable[[Any], Tensor]
    # the model's own output_attentions, aligned with the recorded calls (None: not returned)
    returned: Callable[[Any], list[Tensor | None]] | None
    roles: list[str]
    backends: frozenset[str]
    off_path: tuple[int, ...] = ()  # records whose map cannot reach the objective


HF, SOFTMAX, MHA = frozenset({"hf"}), frozenset({"softmax"}), frozenset({"mha"})
ENC_DEC_ROLES = [S, S, S, X, S, X]


def _hidden(o):
    return project(o.last_hidden_state)


FAMILIES: dict[str, Family] = {
    "bert": Family(_hidden, lambda o: list(o.attentions), [S, S], HF),
    "roberta": Family(_hidden, lambda o: list(o.attentions), [S, S], HF),
    "vit": Family(_hidden, lambda o: list(o.attentions), [S, S], HF),
    "deit": Family(_hidden, lambda o: list(o.attentions), [S, S], HF),
    "clip": Family(
        lambda o: project(o.logits_per_image),
        lambda o: [*o.vision_model_output.attentions, *o.text_model_output.attentions],
        [S] * 4,
        HF,
    ),
    "bart": Family(_hidden, seq2seq, ENC_DEC_ROLES, HF),
    "t5": Family(_hidden, seq2seq, ENC_DEC_ROLES, HF),
    "whisper": Family(_hidden, seq2seq, ENC_DEC_ROLES, HF),
    # DETR's first decoder self-attention mixes all-zero query contents: no gradient.
    "detr": Family(_hidden, seq2seq, ENC_DEC_ROLES, HF, off_path=(2,)),
    "vision_encoder_decoder": Family(lambda o: project(o.logits), seq2seq, ENC_DEC_ROLES, HF),
    # output_attentions of LXMERT misses the image->text direction and the x-layers' self maps;
    # with the language output as objective the last x-layer's image side is off the path.
    "lxmert": Family(
        lambda o: project(o.language_output),
        lambda o: [
            *o.language_attentions,
            *o.vision_attentions,
            o.cross_encoder_attentions[0], None, None, None,
            o.cross_encoder_attentions[1], None, None, None,
        ],
        [S, S, S, X, X, S, S, X, X, S, S],
        SOFTMAX,
        off_path=(8, 10),
    ),
    "visual_bert": Family(_hidden, lambda o: list(o.attentions), [S, S], SOFTMAX),
    "vilt": Family(_hidden, lambda o: list(o.attentions), [S, S], SOFTMAX),
    # BLIP returns only the vision tower's maps.
    "blip": Family(
        lambda o: project(o.itm_score),
        lambda o: [*o.attentions, None, None, None, None],
        [S, S, S, X, S, X],
        SOFTMAX,
    ),
    # The Q-Former lists its cross maps in `attentions` too (and again in `cross_attentions`).
    "blip2_qformer": Family(_hidden, lambda o: list(o.attentions), [S, X, S, X], HF),
    "perceiver": Family(
        _hidden, lambda o: [*o.cross_attentions, *o.attentions], [X, S, S], SOFTMAX
    ),
    "torch_transformer": Family(project, None, ENC_DEC_ROLES, MHA),
}

assert set(FAMILIES) == set(BUILDERS)


def reference(family: str, model: nn.Module, inputs: dict):
    """(maps, gradients, returned maps, gradients w.r.t. the returned maps) of the eager model."""
    spec = FAMILIES[family]
    if spec.returned is None:
        out, maps = manual_torch_reference(model, inputs)
        returned: list[Tensor | None] = []
    else:
        with SoftmaxCollector() as collector:
            out = run(model, inputs, output_attentions=True)
        maps = collector.maps
        returned = spec.returned(out)
    objective = spec.objective(out).sum()
    grads = torch.autograd.grad(objective, maps, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(m) if g is None else g for m, g in zip(maps, grads, strict=True)]
    present = [t for t in returned if t is not None]
    returned_grads = iter(
        torch.autograd.grad(objective, present, allow_unused=True) if present else []
    )
    aligned_grads = [None if t is None else next(returned_grads) for t in returned]
    aligned_grads = [
        torch.zeros_like(t) if t is not None and g is None else g
        for t, g in zip(returned, aligned_grads, strict=True)
    ]
    return maps, grads, returned, aligned_grads


def record(family: str, model: nn.Module, inputs: dict, usage: str = "B", **kwargs):
    spec = FAMILIES[family]
    with AttentionRecorder(model, **kwargs) as rec:
        out = run(model, inputs)
        if usage == "B":
            rec.compute_gradients(spec.objective(out))
        else:
            spec.objective(out).sum().backward()
    return rec


def max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def zero_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


# ------------------------------------------------------------------------------------------
# every family: maps, gradients, roles, backends
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_records_equal_the_models_own_eager_attention(family):
    spec = FAMILIES[family]
    model, inputs = BUILDERS[family]()
    maps, grads, returned, returned_grads = reference(family, model, inputs)
    zero_grads(model)

    rec = record(family, model, inputs)

    assert rec.active_backends == spec.backends
    assert len(rec.records) == len(maps) == len(spec.roles)
    names = dict(model.named_modules())
    for i, (r, a, g) in enumerate(zip(rec.records, maps, grads, strict=True)):
        assert r.name in names, r.name
        assert max_diff(r.attention, a) <= TOL, (i, r.name)
        assert max_diff(r.gradient, g) <= TOL, (i, r.name)
        assert (r.batch_size, r.num_heads, r.n_query, r.n_key) == tuple(a.shape)
    assert [r.role for r in rec.records] == spec.roles
    for i, (t, g) in enumerate(zip(returned, returned_grads, strict=True)):
        if t is not None:
            assert max_diff(rec.records[i].attention, t) <= TOL, (i, rec.records[i].name)
            assert max_diff(rec.records[i].gradient, g) <= TOL, (i, rec.records[i].name)
    for i, r in enumerate(rec.records):
        assert (r.gradient.abs().max().item() == 0) == (i in spec.off_path), (i, r.name)
    # usage B computes no parameter gradient
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_backward_and_compute_gradients_agree(family):
    model, inputs = BUILDERS[family]()
    by_backward = record(family, model, inputs, usage="A")
    zero_grads(model)
    by_grad = record(family, model, inputs, usage="B")
    assert [(r.name, r.call_index, r.role) for r in by_backward.records] == [
        (r.name, r.call_index, r.role) for r in by_grad.records
    ]
    for a, b in zip(by_backward.records, by_grad.records, strict=True):
        assert torch.equal(a.attention, b.attention)
        assert max_diff(a.gradient, b.gradient) <= TOL
    assert all(p.grad is None for p in model.parameters())


def test_lxmert_visual_attention_runs_twice_text_to_image_first():
    model, inputs = BUILDERS["lxmert"]()
    rec = record("lxmert", model, inputs)
    calls = [r for r in rec.records if r.name == "encoder.x_layers.0.visual_attention.att"]
    assert [(r.call_index, r.role) for r in calls] == [(0, X), (1, X)]
    n_text, n_image = inputs["input_ids"].shape[1], inputs["visual_feats"].shape[1]
    assert (calls[0].n_query, calls[0].n_key) == (n_text, n_image)
    assert (calls[1].n_query, calls[1].n_key) == (n_image, n_text)
    # the self-attention modules of the x-layer run through the same class: roles by input
    assert {r.role for r in rec.records if "self_att" in r.name} == {S}


@pytest.mark.parametrize(
    ("family", "cross_names"),
    [
        ("bart", ["decoder.layers.0.encoder_attn", "decoder.layers.1.encoder_attn"]),
        ("t5", [f"decoder.block.{i}.layer.1.EncDecAttention" for i in range(2)]),
        ("whisper", ["decoder.layers.0.encoder_attn", "decoder.layers.1.encoder_attn"]),
        ("detr", ["decoder.layers.0.encoder_attn", "decoder.layers.1.encoder_attn"]),
    ],
)
def test_decoder_cross_attention_role(family, cross_names):
    model, inputs = BUILDERS[family]()
    rec = record(family, model, inputs)
    assert [r.name for r in rec.records if r.role == X] == cross_names


# ------------------------------------------------------------------------------------------
# default (sdpa) models: the recording switches to the eager maps and switches back
# ------------------------------------------------------------------------------------------


def config_implementations(model: nn.Module) -> dict[int, str | None]:
    found: dict[int, Any] = {}

    def add(cfg):
        if cfg is not None and id(cfg) not in found and hasattr(cfg, "_attn_implementation"):
            found[id(cfg)] = cfg
            for key in getattr(cfg, "sub_configs", {}) or {}:
                add(getattr(cfg, key, None))

    for module in model.modules():
        add(getattr(module, "config", None))
    return {i: cfg._attn_implementation for i, cfg in found.items()}


@pytest.mark.parametrize("family", ["bert", "clip", "bart", "t5", "vision_encoder_decoder"])
def test_sdpa_model_records_the_eager_maps_and_keeps_sdpa(family):
    eager_model, inputs = BUILDERS[family]()
    sdpa_model, _ = BUILDERS[family](attn_implementation=None)
    before = config_implementations(sdpa_model)
    assert "sdpa" in before.values()
    eager = record(family, eager_model, inputs)
    sdpa = record(family, sdpa_model, inputs)
    assert config_implementations(sdpa_model) == before
    assert len(eager.records) == len(sdpa.records)
    # causal masks survive (GPT-2 and CLIP text are causal; a dropped mask changes the maps)
    for a, b in zip(eager.records, sdpa.records, strict=True):
        assert max_diff(a.attention, b.attention) <= TOL, a.name
        assert max_diff(a.gradient, b.gradient) <= TOL, a.name


def test_explicit_softmax_backend_on_an_interface_model():
    model, inputs = BUILDERS["bert"](attn_implementation=None)
    auto = record("bert", model, inputs)
    soft = record("bert", model, inputs, backend="softmax")
    assert soft.active_backends == SOFTMAX and auto.active_backends == HF
    assert model.config._attn_implementation == "sdpa"
    for a, b in zip(auto.records, soft.records, strict=True):
        assert (a.name, a.role) == (b.name, b.role)
        assert max_diff(a.attention, b.attention) <= TOL
        assert max_diff(a.gradient, b.gradient) <= TOL


def test_explicit_hf_and_mha_backends_and_their_errors():
    model, inputs = BUILDERS["bert"]()
    assert record("bert", model, inputs, backend="hf").active_backends == HF
    with pytest.raises(ValueError, match="backend='mha'.*BertModel"):
        AttentionRecorder(model, backend="mha").__enter__()
    torch_model, torch_inputs = BUILDERS["torch_transformer"]()
    rec = record("torch_transformer", torch_model, torch_inputs, backend="mha")
    assert rec.active_backends == MHA and len(rec.records) == 6
    with pytest.raises(ValueError, match="backend='hf'.*TinyTorchTransformer"):
        AttentionRecorder(torch_model, backend="hf").__enter__()
    lxmert, _ = BUILDERS["lxmert"]()
    with pytest.raises(ValueError, match="backend='hf'"):
        AttentionRecorder(lxmert, backend="hf").__enter__()


# ------------------------------------------------------------------------------------------
# restoration
# ------------------------------------------------------------------------------------------


def registry_keys() -> set[str]:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return set(AttentionInterface._global_mapping) | set(AttentionMaskInterface._global_mapping)


def state(model: nn.Module) -> dict[str, Any]:
    hook_dicts = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks_with_kwargs",
        "_backward_hooks",
        "_backward_pre_hooks",
    )
    return dict(
        hooks=[(n, d, len(getattr(m, d))) for n, m in model.named_modules() for d in hook_dicts],
        training=[(n, m.training) for n, m in model.named_modules()],
        requires_grad=[(n, p.requires_grad) for n, p in model.named_parameters()],
        implementations=config_implementations(model),
        registry=registry_keys(),
        fastpath=torch.backends.mha.get_fastpath_enabled(),
        modes=torch._C._len_torch_function_stack(),
    )


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name


RESTORE_FAMILIES = ["bert", "clip", "vision_encoder_decoder", "lxmert", "blip", "torch_transformer"]


@pytest.mark.parametrize("family", RESTORE_FAMILIES)
def test_everything_restored_after_a_recording(family):
    model, inputs = BUILDERS[family]()
    model.train()  # the flag must survive as it is, whatever it is
    before = state(model)
    rec = record(family, model, inputs, usage="A")
    assert rec.records and rec.maps == []
    assert state(model) == before
    assert_no_hooks(model)
    assert all("hetattn" not in key for key in registry_keys())


class Boom(Exception):
    pass


@pytest.mark.parametrize("family", RESTORE_FAMILIES)
def test_everything_restored_when_the_with_block_raises(family):
    model, inputs = BUILDERS[family]()
    before = state(model)
    with pytest.raises(Boom), AttentionRecorder(model):
        run(model, inputs)
        raise Boom
    assert state(model) == before
    assert_no_hooks(model)


@pytest.mark.parametrize("family", RESTORE_FAMILIES)
def test_everything_restored_when_the_forward_raises_midway(family):
    model, inputs = BUILDERS[family]()
    before = state(model)
    # a user hook that fails in the middle of the model, right after an attention module
    victims = [m for n, m in model.named_modules() if re.search("attn|attention", n, re.I)]
    victim = victims[len(victims) // 2]

    def fail(*_):
        raise Boom

    handle = victim.register_forward_hook(fail)
    try:
        with pytest.raises(Boom), AttentionRecorder(model) as rec:
            run(model, inputs)
    finally:
        handle.remove()
    assert rec.records  # some maps were recorded before the failure
    assert state(model) == before
    assert_no_hooks(model)


def test_everything_restored_when_the_forward_gets_bad_inputs():
    model, inputs = BUILDERS["bert"](attn_implementation=None)
    before = state(model)
    with pytest.raises((RuntimeError, TypeError, ValueError)), AttentionRecorder(model):
        model(input_ids=inputs["input_ids"].float())
    assert state(model) == before
    torch_model, torch_inputs = BUILDERS["torch_transformer"]()
    before = state(torch_model)
    bad = dict(torch_inputs, src_key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises((RuntimeError, AssertionError)), AttentionRecorder(torch_model):
        torch_model(**bad)
    assert state(torch_model) == before


@pytest.mark.parametrize("family", ["bert", "lxmert"])
def test_everything_restored_when_the_backward_raises(family):
    model, inputs = BUILDERS[family]()
    before = state(model)

    def failing_reduce(record: AttentionRecord) -> Tensor:
        raise Boom

    with pytest.raises(Boom), AttentionRecorder(model, reduce=failing_reduce):
        out = run(model, inputs)
        FAMILIES[family].objective(out).sum().backward()
    assert state(model) == before
    assert_no_hooks(model)


def test_tensor_hooks_are_gone_after_exit():
    model, inputs = BUILDERS["bert"]()
    with AttentionRecorder(model) as rec:
        out = run(model, inputs)
        out.last_hidden_state.sum().backward(retain_graph=True)
    kept = [r.gradient.clone() for r in rec.records]
    (out.last_hidden_state**2).sum().backward()  # outside the context: must not reach records
    assert all(torch.equal(a, r.gradient) for a, r in zip(kept, rec.records, strict=True))


# ------------------------------------------------------------------------------------------
# reduce, modules, off-path maps, checkpointing, MHA semantics, errors
# ------------------------------------------------------------------------------------------


def gae_reduce(r: AttentionRecord) -> Tensor:
    return (r.gradient * r.attention).clamp(min=0).mean(dim=1)


@pytest.mark.parametrize("family", ["bert", "lxmert", "torch_transformer"])
@pytest.mark.parametrize("usage", ["A", "B"])
def test_reduce_drops_maps_and_keeps_the_reduced_value(family, usage):
    model, inputs = BUILDERS[family]()
    full = record(family, model, inputs)
    zero_grads(model)
    reduced = record(family, model, inputs, usage=usage, reduce=gae_reduce)
    assert len(full.records) == len(reduced.records)
    for f, r in zip(full.records, reduced.records, strict=True):
        assert r.attention is None and r.gradient is None
        assert r.shape == f.shape and r.n_query == f.n_query
        assert max_diff(r.reduced, gae_reduce(f)) <= TOL
    for i in FAMILIES[family].off_path:  # maps with no gradient were reduced too, with G = 0
        assert torch.count_nonzero(reduced.records[i].reduced) == 0


def test_maps_off_the_path_get_zero_gradients():
    model, inputs = BUILDERS["bert"]()
    with AttentionRecorder(model) as rec:
        out = model(**inputs, output_hidden_states=True)
        rec.compute_gradients(project(out.last_hidden_state), retain_graph=True)
        assert all(r.gradient.abs().sum() > 0 for r in rec.records)
        rec.compute_gradients(project(out.hidden_states[1]))  # after layer 0 only: overwrites
    first, second = rec.records
    assert first.gradient.abs().sum() > 0
    assert torch.count_nonzero(second.gradient) == 0 and second.gradient.shape == second.shape
    with AttentionRecorder(model) as rec:
        out = model(**inputs, output_hidden_states=True)
        project(out.hidden_states[1]).sum().backward()
    assert torch.count_nonzero(rec.records[1].gradient) == 0  # filled at the end of backward


def test_modules_restricts_and_names_the_innermost_listed_module():
    model, inputs = BUILDERS["bert"]()
    rec = record("bert", model, inputs, modules=["encoder.layer.1.attention.self"])
    assert [r.name for r in rec.records] == ["encoder.layer.1.attention.self"]
    rec = record("bert", model, inputs, modules=["encoder.layer.0.attention", "encoder.layer.1"])
    assert [r.name for r in rec.records] == ["encoder.layer.0.attention", "encoder.layer.1"]
    lxmert, lx_inputs = BUILDERS["lxmert"]()
    rec = record("lxmert", lxmert, lx_inputs, modules=["encoder.x_layers.1"])
    assert [r.call_index for r in rec.records] == [0, 1, 2, 3]
    assert [r.role for r in rec.records] == [X, X, S, S]


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_does_not_duplicate_records(reentrant):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    model = BertModel(config)
    _, inputs = BUILDERS["bert"]()
    plain = record("bert", model, inputs, usage="A")
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": reentrant}
    )
    model.train()  # transformers only checkpoints in training mode
    calls = []
    handle = model.encoder.layer[0].attention.self.register_forward_pre_hook(
        lambda *_: calls.append(1)
    )
    embeds = model.embeddings.word_embeddings(inputs["input_ids"]).detach().requires_grad_()
    ckpt_inputs = dict(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
    with AttentionRecorder(model) as rec:
        out = model(**ckpt_inputs)
        project(out.last_hidden_state).sum().backward()
    handle.remove()
    assert len(calls) == 2  # the layer really ran again in the backward
    with AttentionRecorder(model) as ref:
        out = model.eval()(**ckpt_inputs)
        project(out.last_hidden_state).sum().backward()
    assert [(r.name, r.call_index) for r in rec.records] == [
        (r.name, r.call_index) for r in plain.records
    ]
    for a, b in zip(rec.records, ref.records, strict=True):
        assert max_diff(a.attention, b.attention) <= TOL
        assert max_diff(a.gradient, b.gradient) <= TOL
        assert a.gradient.abs().sum() > 0


def test_attention_dropout_in_training_records_the_pre_dropout_softmax():
    model, inputs = BUILDERS["bert"]()
    model.config.attention_probs_dropout_prob = 0.5
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.5
    model.train()
    with SoftmaxCollector() as collector:
        out = run(model, inputs)
    grads = torch.autograd.grad(project(out.last_hidden_state).sum(), collector.maps)
    rec = record("bert", model, inputs)
    assert model.training
    for r, a, g in zip(rec.records, collector.maps, grads, strict=True):
        assert max_diff(r.attention.sum(-1), torch.ones_like(r.attention.sum(-1))) <= 1e-5
        assert max_diff(r.attention, a) <= TOL and max_diff(r.gradient, g) <= TOL


class MHAUser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: Tensor, y: Tensor):
        _, averaged = self.attn(x, y, y)  # need_weights=True, averaged: the default
        out, none = self.attn(x, x, x, need_weights=False)
        _, per_head = self.attn(x, y, y, average_attn_weights=False)
        return out, averaged, none, per_head


def test_mha_callers_get_what_they_asked_for():
    torch.manual_seed(0)
    model = MHAUser().eval()
    x, y = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    expected = model(x, y)
    with AttentionRecorder(model) as rec:
        got = model(x, y)
        rec.compute_gradients(got[0].sum())
    assert got[2] is None and expected[2] is None
    for a, b in zip(expected, got, strict=True):
        if a is not None:
            assert max_diff(a, b) <= TOL
    assert [(r.name, r.call_index, r.role) for r in rec.records] == [
        ("attn", 0, X), ("attn", 1, S), ("attn", 2, X)
    ]
    assert max_diff(rec.records[2].attention, expected[3]) <= TOL
    assert rec.records[1].gradient.abs().sum() > 0
    assert torch.count_nonzero(rec.records[0].gradient) == 0


def test_unbatched_mha_and_no_grad_forward():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2).eval()
    x = torch.randn(3, 8)
    with AttentionRecorder(mha) as rec:
        out, _ = mha(x, x, x)
        rec.compute_gradients(out.sum())
    assert rec.records[0].shape == (1, 2, 3, 3)
    no_grad_objective = pytest.raises(ValueError, match="objective does not require grad")
    with no_grad_objective, AttentionRecorder(mha) as rec, torch.no_grad():
        out, _ = mha(x, x, x)
        rec.compute_gradients(out.sum())
    assert torch.count_nonzero(rec.records[0].gradient) == 0  # zeros, filled on exit
    scale = torch.ones(1, requires_grad=True)
    no_grad_maps = pytest.raises(ValueError, match="none of the recorded attention maps requires")
    with no_grad_maps, AttentionRecorder(mha) as rec:
        with torch.no_grad():
            out, _ = mha(x, x, x)
        rec.compute_gradients((out * scale).sum())


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        AttentionRecorder("bert")  # type: ignore[arg-type]
    model, _ = BUILDERS["bert"]()
    with pytest.raises(ValueError, match="unknown backend 'flash'.*auto, hf, softmax, mha"):
        AttentionRecorder(model, backend="flash")
    with pytest.raises(ValueError, match="BertModel has no module named 'encoder.layer.7'"):
        AttentionRecorder(model, modules=["encoder.layer.0", "encoder.layer.7"])
    with pytest.raises(TypeError, match="reduce"):
        AttentionRecorder(model, reduce=3)  # type: ignore[arg-type]


def test_warns_when_nothing_was_recorded():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    expected = pytest.warns(RuntimeWarning, match="no attention maps were recorded for Sequential")
    with expected, AttentionRecorder(model):
        model(torch.randn(2, 4))


class Mixed(nn.Module):
    """An interface model, a hand-written one and an nn.MultiheadAttention side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.bert, self.bert_inputs = BUILDERS["bert"]()
        self.lxmert, self.lxmert_inputs = BUILDERS["lxmert"]()
        self.mha = nn.MultiheadAttention(HIDDEN, 2, batch_first=True)

    def forward(self) -> Tensor:
        text = self.bert(**self.bert_inputs).last_hidden_state
        lang = self.lxmert(**self.lxmert_inputs).language_output
        return self.mha(text, lang, lang)[0]



def test_auto_combines_the_backends_without_recording_a_call_twice():
    torch.manual_seed(0)
    model = Mixed().eval()
    with AttentionRecorder(model) as rec:
        rec.compute_gradients(project(model()))
    assert rec.active_backends == HF | SOFTMAX | MHA
    names = [r.name for r in rec.records]
    assert len(names) == 2 + 11 + 1 and len(set(zip(names, [r.call_index for r in rec.records],
                                                          strict=True))) == 14
    assert names[0].startswith("bert.") and names[2].startswith("lxmert.") and names[-1] == "mha"
    assert rec.records[-1].role == X


def test_interface_module_with_a_foreign_config_falls_back_to_softmax():
    from types import SimpleNamespace

    model, inputs = BUILDERS["bert"]()
    reference = record("bert", model, inputs)
    attention = model.encoder.layer[1].attention.self
    attention.config = SimpleNamespace(_attn_implementation="eager")  # cannot be switched
    rec = record("bert", model, inputs)
    assert rec.active_backends == HF | SOFTMAX
    for a, b in zip(reference.records, rec.records, strict=True):
        assert a.name == b.name and max_diff(a.gradient, b.gradient) <= TOL


def test_warns_about_interface_modules_that_bypassed_the_interface():
    model, inputs = BUILDERS["bert"]()
    attention = model.encoder.layer[1].attention.self
    shared, private = attention.config, copy.deepcopy(attention.config)

    def swap(module, args):  # registered before the recorder's hooks: runs first
        module.config = private

    handle = attention.register_forward_pre_hook(swap)
    try:
        with pytest.warns(RuntimeWarning, match="1 attention module.*encoder.layer.1.attention"):
            record("bert", model, inputs)
    finally:
        handle.remove()
        attention.config = shared
