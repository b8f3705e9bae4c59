r"""Independent checks of one explained type: each returns ``(verdict, detail)`` with verdict
``"ok"``, ``"fail"`` (the explanation is wrong: the type counts as silent) or ``"n/a"`` (the check
does not apply here; the detail says why).

- :func:`eager_maps`: every recorded map ``A`` and gradient ``∇A`` equals a softmax output of the
  model run with ``attn_implementation="eager"`` and its ``autograd.grad`` (the softmax collector
  of ``tests/test_capture.py``), or, where that eager function is not the model's default one,
  of its default run with each sdpa call written out as a softmax;
- :func:`paper_rule`: for single-stream models, the relevance recomputed from scratch from the
  recorded maps (``R ← R + mean_h(∇A⁺ ⊙ A) R``, read with the readout weights);
- :func:`batch_equals_singles`, :func:`padding_is_zero`, :func:`restored`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

Verdict = tuple[str, str]


def state(model: nn.Module) -> tuple:
    r"""What an explanation must leave as it was: hooks, attention implementations, the
    training flag, ``requires_grad`` flags and no ``.grad`` written."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())
    implementations = tuple(
        getattr(getattr(m, "config", None), "_attn_implementation_internal", None)
        for m in model.modules())
    flags = tuple(p.requires_grad for p in model.parameters())
    grads = any(p.grad is not None for p in model.parameters())
    return hooks, implementations, model.training, flags, grads


def restored(before: tuple, model: nn.Module) -> Verdict:
    after = state(model)
    names = ("hooks", "attention implementation", "training flag", "requires_grad", ".grad")
    changed = [name for name, a, b in zip(names, before, after, strict=True) if a != b]
    return ("fail", "changed: " + ", ".join(changed)) if changed else ("ok", "")


def _close(a: Tensor, b: Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    if a.shape != b.shape:
        return False
    scale = float(b.abs().max()) if b.numel() else 0.0
    if scale != scale or scale == float("inf"):
        return False  # a non-finite reference equals nothing
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol + 1e-5 * scale))


def padding_is_zero(explanation: Any, case: Any) -> Verdict:
    r"""Tokens the attention mask hides get exactly zero relevance (ids inputs with a mask)."""
    if case.mask is None:
        return "n/a", "no attention mask"
    hits = [name for name, rel in explanation.relevance.items() if rel.shape == case.mask.shape]
    if not hits:
        return "n/a", "no source shaped like the mask"
    for name in hits:
        masked = explanation.relevance[name][case.mask == 0]
        if bool((masked != 0).any()):
            if _reads_masked_ids(case):
                return "n/a", ("the model's scores change with the ids its mask hides (it reads "
                               "them: Canine's strided convolution over left padding)")
            return "fail", f"source '{name}': masked tokens get {masked.abs().max():.3g}"
    return "ok", ""


def _reads_masked_ids(case: Any) -> bool:
    r"""Whether the model's scores depend on the ids at the tokens the mask hides (then those
    tokens may rightly get relevance)."""
    ids = case.inputs[0] if case.inputs else None
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.shape != case.mask.shape:
        return False
    hidden = case.mask == 0
    other = ids.clone()
    other[hidden] = 5 + (ids[hidden] + 7) % 80  # ordinary ids, each another than before
    with torch.no_grad():
        torch.manual_seed(0)
        before = case.forward_func(*case.inputs, *case.additional_forward_args)
        torch.manual_seed(0)
        after = case.forward_func(other, *case.inputs[1:], *case.additional_forward_args)
    return not torch.allclose(before, after, rtol=1e-5, atol=1e-7)


def unpadded_example(case: Any, index: int) -> Any:
    r"""Example ``index`` with its padding cut off, on either side (every tensor laid out like
    the mask sliced), or ``None`` where it has none (or holes)."""
    mask = case.mask[index].bool()
    kept = mask.nonzero().flatten()
    if len(kept) in (0, mask.shape[0]) or int(kept[-1] - kept[0]) + 1 != len(kept):
        return None
    start, stop = int(kept[0]), int(kept[-1]) + 1
    one = case.example(index)
    cut = lambda t: t[:, start:stop] if isinstance(t, Tensor) and t.shape[:2] == (  # noqa: E731
        1, mask.shape[0]) else t
    if all(cut(t) is t for t in one.inputs):
        return None  # the mask is not laid out over an input (TimesFM's patches of a series)
    return type(one)(one.model_type, one.head, one.class_name, one.model, one.forward_func,
                     tuple(cut(t) for t in one.inputs),
                     tuple(cut(t) for t in one.additional_forward_args), one.target,
                     cut(one.mask), one.notes, one.types)


def unpadded_equals(explanation: Any, case: Any, explain: Any) -> Verdict:
    r"""§9: a padded example's real tokens get the relevance of the same example without its
    padding — where the model's own scores for the two agree (positions that ignore the pads,
    masks that hide them wholly)."""
    if case.mask is None or case.mask.dim() != 2:
        return "n/a", "no attention mask"
    compared = 0
    for index in range(case.mask.shape[0]):
        short = unpadded_example(case, index)
        if short is None:
            continue
        with torch.no_grad():
            torch.manual_seed(0)
            padded = case.forward_func(*case.example(index).inputs,
                                       *case.example(index).additional_forward_args)
            torch.manual_seed(0)
            alone = short.forward_func(*short.inputs, *short.additional_forward_args)
        if padded.shape != alone.shape or not torch.allclose(padded, alone, rtol=1e-4,
                                                             atol=1e-5):
            continue  # the model itself reads its pads (or their count): no reference
        single = explain(short)
        for name, relevance in explanation.relevance.items():
            other = single.relevance.get(name)
            if relevance.shape[1:] != case.mask.shape[1:] or other is None:
                continue
            start = int(case.mask[index].bool().nonzero()[0])
            row = relevance[index:index + 1, start:start + other.shape[1]]
            if not _close(other, row, rtol=1e-3, atol=2e-5):
                diff = float((other - row).abs().max())
                return "fail", f"example {index}, source '{name}': differs from its unpadded " \
                               f"run by {diff:.3g}"
            compared += 1
    return ("ok", f"{compared} compared") if compared else ("n/a", "no padded example the "
                                                                   "model reads alike")


def finite_and_nonzero(explanation: Any) -> Verdict:
    if not explanation.relevance:
        return "fail", f"no source at all (streams {dict(explanation.streams)})"
    for name, relevance in explanation.relevance.items():
        if not bool(torch.isfinite(relevance).all()):
            return "fail", f"source '{name}' is not finite"
    raw = {name: rel + _own_of(explanation, name) for name, rel in explanation.relevance.items()}
    zero = [name for name, rel in raw.items() if bool((rel.abs().sum(-1) == 0).any())]
    if zero and len(zero) == len(raw):
        return "fail", f"every source is all zero for some example: {zero}"
    return "ok", (f"all-zero source(s) {zero}" if zero else "")


def _own_of(explanation: Any, source: str) -> Tensor:
    stream = explanation.sources.get(source)
    own = explanation.own.get(stream)
    rel = explanation.relevance[source]
    return own if own is not None and own.shape == rel.shape else torch.zeros_like(rel)


def batch_equals_singles(batch: Any, singles: list[Any]) -> Verdict:
    for index, single in enumerate(singles):
        for name, relevance in batch.relevance.items():
            alone = single.relevance.get(name)
            if alone is None:
                return "fail", f"example {index} alone has no source '{name}'"
            row = relevance[index:index + 1]
            if alone.shape[1] < row.shape[1] and bool((row[:, alone.shape[1]:] == 0).all()):
                row = row[:, :alone.shape[1]]  # a smaller example's slots past its tokens: zero
            if alone.shape[1] != row.shape[1]:  # a padded example alone keeps its pads
                return "n/a", f"source '{name}' has {alone.shape[1]} tokens alone"
            if not _close(alone, row, rtol=1e-3, atol=2e-5):
                diff = float((alone - row).abs().max())
                return "fail", f"example {index}, source '{name}': differs by {diff:.3g}"
    return "ok", ""


def paper_rule(explanation: Any) -> Verdict:
    r"""Single-stream models: ``R = I`` (zero on learned parameter tokens), then per call
    ``R ← R + mean_h((∇A)⁺ ⊙ A) · R``;
    ``w_xᵀ R`` equals the stream's relevance plus the read tokens' own share."""
    if len(explanation.streams) != 1 or len(explanation.relevance) != 1:
        return "n/a", f"{len(explanation.streams)} streams"
    if explanation.call_maps is None or not explanation.call_maps:
        return "n/a", "no call maps"
    (stream, tokens), = explanation.streams.items()
    if any(c.query != stream or c.key != stream for c in explanation.call_maps):
        return "n/a", "a call reads another stream"
    weights = explanation.readout.get(stream)
    if weights is None:
        return "n/a", "no readout weights"
    batch = weights.shape[0]
    relevance = torch.eye(tokens, dtype=torch.float64).expand(batch, tokens, tokens).clone()
    learned = getattr(explanation, "parameter_tokens", {}).get(stream)
    if learned is not None:  # learned parameter tokens start with no input relevance (§11)
        relevance = relevance * (~learned).double()[:, None, :]
    for call in explanation.call_maps:
        attention, gradient = call.attention.double(), call.gradient.double()
        if attention.shape[-2:] != (tokens, tokens):
            return "n/a", f"call {call.name} is {tuple(attention.shape)} over {tokens} tokens"
        mixed = (gradient.clamp(min=0) * attention).mean(dim=1)
        relevance = relevance + mixed @ relevance
    expected = torch.einsum("bi,bij->bj", weights.double(), relevance)
    (source,) = explanation.relevance
    got = explanation.stream_relevance.get(stream, explanation.relevance[source]).double()
    got = got + explanation.own.get(stream, torch.zeros_like(got)).double()
    if not _close(got, expected, rtol=1e-4, atol=1e-7):
        return "fail", f"differs from the rule by {float((got - expected).abs().max()):.3g} " \
                       f"(scale {float(expected.abs().max()):.3g})"
    return "ok", ""


def _eager_configs(model: nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(config, "_attn_implementation_internal"):
            seen[id(config)] = config
            for name in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, name, None)
                if hasattr(sub, "_attn_implementation_internal"):
                    seen[id(sub)] = sub
    return list(seen.values())


def _real_queries(attention: Tensor, mask: Tensor | None) -> Tensor | float:
    r"""Rows of padded queries are left out of the comparison: a model may give them any row
    (DeBERTa: uniform over every key), every capture records a row that sees no key as zero,
    and no real token reads them."""
    if mask is None or attention.shape[-2] != mask.shape[1]:
        return 1.0
    return mask.bool()[:, None, :, None].to(attention.dtype)


def _real_keys(attention: Tensor, mask: Tensor | None) -> Tensor | float:
    r"""Columns of padded keys are left out of the gradient comparison only: the map is zero
    there (compared), so ``A ⊙ ∇A`` is zero whatever ``∇A`` is, and ``∇A`` there is the padded
    token's value, which a model may compute any way (the eager row of a wholly padded TimesFM
    patch is uniform, sdpa's is zero)."""
    if mask is None or attention.shape[-1] != mask.shape[1]:
        return 1.0
    return mask.bool()[:, None, None, :].to(attention.dtype)


def _match_call(call: Any, maps: list[Tensor], grads: list[Tensor | None],
                real: Tensor | float, keys: Tensor | float = 1.0) -> Verdict:
    r"""One recorded call against the eager softmaxes: one of the same shape, or the first
    ``n_key`` columns of a wider one (attention sinks: a softmax over the keys and a learned
    sink column that is dropped), must equal its map and its gradient."""
    shape = call.attention.shape
    exact = [(m, g) for m, g in zip(maps, grads, strict=True) if m.shape == shape]
    wider = [(m[..., :shape[-1]], None if g is None else g[..., :shape[-1]])
             for m, g in zip(maps, grads, strict=True)
             if m.dim() == 4 and m.shape[:-1] == shape[:-1] and m.shape[-1] > shape[-1]]
    for candidates in (exact, wider):
        match = [(m, g) for m, g in candidates if _close(call.attention * real, m * real)]
        if not match:
            continue
        if any(_close(call.gradient * real * keys,
                      (torch.zeros_like(m) if g is None else g) * real * keys,
                      rtol=1e-3, atol=1e-8) for m, g in match):
            return "ok", ""
        return "fail", f"{call.name}[{call.call_index}]: its gradient is not the eager one"
    if exact:
        return "fail", f"{call.name}[{call.call_index}]: no eager softmax equals its map"
    return "n/a", "no eager softmax of its shape"


def eager_maps(explanation: Any, case: Any) -> Verdict:
    r"""Every recorded ``A`` / ``∇A`` equals a softmax output of the eager model and its
    gradient; a recorded map with no eager softmax of its shape is counted as unverified. Where
    transformers' eager attention computes another function than the model's default sdpa run
    (a mask whose meaning differs between the two: Grounding-DINO's boolean text mask), or no
    eager softmax equals a map, the reference is the model's own default run with each
    ``F.scaled_dot_product_attention`` call written out (:func:`_sdpa_written_out`)."""
    from test_capture import SoftmaxCollector

    configs = _eager_configs(case.model)
    previous = [c._attn_implementation_internal for c in configs]
    with torch.no_grad():
        torch.manual_seed(0)
        default_scores = case.forward_func(*case.inputs, *case.additional_forward_args)
    try:
        for config in configs:
            config._attn_implementation_internal = "eager"
        collector = SoftmaxCollector()
        with collector:
            scores, maps, grads = _maps_and_gradients(case, lambda: collector.maps)
    finally:
        for config, implementation in zip(configs, previous, strict=True):
            config._attn_implementation_internal = implementation
    if not torch.allclose(scores.detach(), default_scores, rtol=1e-4, atol=1e-5):
        # transformers' own eager attention computes another function for this model (e.g. a
        # streaming mask it applies only under sdpa): it is no reference for the maps
        verdict: Verdict = ("n/a", "the model's eager attention gives other scores than its "
                                   "default one")
    else:
        verdict = _compare_calls(explanation, case, maps, grads)
    if verdict[0] == "ok":
        return verdict
    sdpa = _sdpa_written_out(explanation, case, default_scores)
    return sdpa if sdpa is not None and sdpa[0] == "ok" else verdict


def target_score(scores: Tensor, target: Any) -> Tensor:
    r"""``(B,)``: Captum's ``target`` read off ``(B, ...)`` scores without Captum — an int or a
    tuple indexes every example alike, a list gives each example its own."""
    if isinstance(target, list):
        rows = torch.arange(scores.shape[0])
        return torch.stack([scores[(int(i), *(t if isinstance(t, tuple) else (t,)))]
                            for i, t in zip(rows, target, strict=True)])
    return scores[(slice(None), *(target if isinstance(target, tuple) else (target,)))]


def _maps_and_gradients(case: Any, maps_of: Any) -> tuple[Tensor, list[Tensor],
                                                          list[Tensor | None]]:
    """The case's scores, the maps ``maps_of()`` collected while they were computed (with
    grad) and their gradients of the target's score (NaN rows zero, as every capture has)."""
    with torch.enable_grad():
        torch.manual_seed(0)
        scores = case.forward_func(*case.inputs, *case.additional_forward_args)
    maps = [m for m in maps_of() if m.requires_grad]
    grads = torch.autograd.grad(target_score(scores, case.target).sum(), maps, allow_unused=True) \
        if maps else ()
    # a query row that sees no key is NaN under eager softmax and zero in every capture
    return (scores, [m.detach().nan_to_num(0.0) for m in maps],
            [None if g is None else g.nan_to_num(0.0) for g in grads])


def _compare_calls(explanation: Any, case: Any, maps: list[Tensor],
                   grads: list[Tensor | None]) -> Verdict:
    verified = unverified = 0
    calls = explanation.call_maps or []
    for call in calls:
        verdict = _match_call(call, maps, grads, _real_queries(call.attention, case.mask),
                              _real_keys(call.attention, case.mask))
        shape = call.attention.shape
        one_to_one = sum(m.shape == shape for m in maps) == sum(
            c.attention.shape == shape for c in calls)
        if verdict[0] == "fail" and not one_to_one:
            verdict = ("n/a", "folded from other softmaxes (a layout)")  # VideoPrism's frames
        if verdict[0] == "fail":
            return verdict
        verified, unverified = verified + (verdict[0] == "ok"), unverified + (verdict[0] != "ok")
    if not verified:
        return "n/a", f"no recorded map has an eager softmax of its shape ({unverified} calls)"
    return "ok", f"{verified} verified, {unverified} unverified"


def _sdpa_written_out(explanation: Any, case: Any, default_scores: Tensor) -> Verdict | None:
    r"""The calls checked against the model's default run with every
    ``F.scaled_dot_product_attention`` replaced by its definition (:func:`_written_out`), its
    other softmaxes collected as they are: the maps of what the model computes itself.
    ``None`` when the model calls no sdpa or that run's scores differ from the default ones."""
    from test_capture import SoftmaxCollector

    class WrittenOut(SoftmaxCollector):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") != "scaled_dot_product_attention":
                return super().__torch_function__(func, types, args, kwargs)
            self.calls += 1
            attention, output = _written_out(*args, **(kwargs or {}))
            self.maps.append(attention)
            return output

    collector = WrittenOut()
    with collector:
        scores, maps, grads = _maps_and_gradients(case, lambda: collector.maps)
    if not collector.calls or not torch.allclose(scores.detach(), default_scores, rtol=1e-4,
                                                 atol=1e-5):
        return None
    verdict = _compare_calls(explanation, case, maps, grads)
    return (verdict[0], f"{verdict[1]}, against the model's own run with its sdpa calls "
                        "written out (its eager attention computes another function)")


def _written_out(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                 enable_gqa: bool = False) -> tuple[Tensor, Tensor]:
    """``F.scaled_dot_product_attention`` by its definition: a boolean mask keeps the ``True``
    keys, a float one is added, ``is_causal`` hides later keys, a row that sees no key is zero;
    its softmax and its output."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = (t.repeat_interleave(groups, dim=-3) for t in (key, value))
    scores = query @ key.transpose(-2, -1) * (query.shape[-1] ** -0.5 if scale is None
                                              else scale)
    if is_causal:
        later = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(later, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) \
            if attn_mask.dtype == torch.bool else scores + attn_mask
    attention = torch.softmax(scores, dim=-1)
    return attention, attention.nan_to_num(0.0) @ value


def node_types(explanation: Any, case: Any) -> Verdict:
    r"""Every call has the node type the builder's table says (``tests/arch_zoo.py`` types)."""
    import re

    if not case.types:
        return "n/a", "no expected types"
    for call in explanation.calls:
        expected = [t for pattern, t in case.types.items() if re.search(pattern, call.name)]
        if expected != [call.type]:
            return "fail", f"{call.name} is typed {call.type}, expected {expected}"
    return "ok", ""
