r"""transformers' ``AttentionInterface``: models whose attention modules dispatch through
``ALL_ATTENTION_FUNCTIONS`` (the model files that define ``eager_attention_forward``).

A function is registered in ``transformers.AttentionInterface`` (and a mask function in
``AttentionMaskInterface``, otherwise causal masks are silently dropped: the boolean mask sdpa
builds for configs that ran sdpa, made additive where the eager function gets it, the eager one
for the others) under a neutral key that is then set as the attention implementation of the
configs those modules read. The function
delegates to the model file's *own* eager attention (the default that the module passes to
``get_interface``), so position biases, GQA or soft-capping stay exact, and records the weights
that function returns (the tensor the attention output is computed from); with ``flash`` it runs
the call through :class:`~captum_hetattn.capture.backends.flash.FlashBackend` instead.
"""

from __future__ import annotations

from contextlib import ExitStack
from itertools import count
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from captum_hetattn.capture.backends.base import Backend, clear_empty_rows, masked_keys
from captum_hetattn.capture.backends.softmax import SoftmaxMode
from captum_hetattn.capture.introspect import configs_of, hf_eager_function, set_implementation
from captum_hetattn.capture.session import Session

if TYPE_CHECKING:
    from captum_hetattn.capture.backends.flash import FlashBackend
    from captum_hetattn.capture.recorder import AttentionRecorder

_KEY_COUNTER = count()


class InterfaceBackend(Backend):
    r"""Records the plan's ``interface`` modules through a registered attention function.

    Args:
        recorder: the recorder the maps go to.
        session: the running recording.
        flash: the flash backend, with ``flash=True``.
    """

    def __init__(self, recorder: AttentionRecorder, session: Session,
                 flash: FlashBackend | None = None) -> None:
        super().__init__(recorder, session)
        self.flash = flash

    def install(self, stack: ExitStack) -> None:
        r"""Register the attention function (and the eager mask function) under a fresh key
        and name it in the interface modules' configs, until ``stack`` closes."""
        plan = self.session.plan
        assert plan.interfaces is not None
        attention_interface, mask_interface, eager_mask = plan.interfaces
        # A fresh neutral key per recording: nested/concurrent recorders never share an entry.
        key = f"hetattn_record_{next(_KEY_COUNTER)}"
        attention_interface.register(key, self._hf_attention)
        stack.callback(attention_interface._global_mapping.pop, key, None)
        if mask_interface is not None:
            # Without it the mask builders return no mask for an unknown key: causal masks
            # would be silently dropped.
            sdpa = {id(cfg) for cfg in configs_of(self.recorder.model, plan.interface)
                    if cfg._attn_implementation_internal == "sdpa"}
            mask_interface.register(key, _mask_as_before(eager_mask, sdpa))
            stack.callback(mask_interface._global_mapping.pop, key, None)
        set_implementation(stack, self.recorder.model, plan.interface, key)

    def _hf_attention(self, module: nn.Module, query, key, value, attention_mask, **kwargs):
        # (named as before the split: tracebacks and tests know the interception by this name)
        eager = hf_eager_function(type(module))
        if eager is None:  # pragma: no cover - only modules with one are routed here
            raise RuntimeError(f"{type(module).__name__} has no eager attention function; "
                               "record it with backend='softmax'")
        # a boolean mask (the model's own kind under sdpa) made additive; the rows it hides
        # wholly are zero in the output, as sdpa gives them
        unseen = _unseen_rows(attention_mask)
        attention_mask = _additive(attention_mask, query.dtype)
        session = self.session
        # sparse (indexer) attention hands its selected keys to non-eager kernels only: the
        # eager function would ignore them and attend to every key (padding is read from the
        # dense mask: a key no query selected is not padding)
        dense_mask = _module_mask(session, module, attention_mask)
        attention_mask, kwargs = _with_sparse_indices(attention_mask, key, kwargs)
        session.interface_dispatched.add(id(module))
        states = None
        if session.record_io and session.frames and session.frames[-1].module is module:
            # keys the module computed from something it was not handed (Segformer reduces
            # its hidden states before the keys): the per-head key states stand for them
            session.frames[-1].inner_key = key
            states = (query, key)
        dropout = kwargs.get("dropout", 0.0)
        flash = self.flash
        made = len(self.recorder.records)
        result = None
        if (flash is not None and _maps_large(query, key)
                and flash.can_flash(module, attention_mask, dropout, kwargs)):
            session.in_interface += 1  # its softmax and sdpa are not calls of their own
            try:
                result = flash.call(module, eager, query, key, value, attention_mask, kwargs,
                                    states)
            finally:
                session.in_interface -= 1
        if result is None:  # the model file's eager function (called here: its errors'
            catch: list[Tensor] = []  # frames stay the model's, capture/errors.py)
            eager_mask, empty = _without_empty_rows(attention_mask)
            eager_mask = _float32_floor(eager_mask)
            session.in_interface += 1
            try:
                if module.training and isinstance(dropout, float) and dropout > 0.0:
                    # The returned weights are dropped out: catch the softmax before the dropout
                    with SoftmaxMode(lambda out, dim, scores: catch.append(out)):
                        result = eager(module, query, key, value, eager_mask, **kwargs)
                else:
                    result = eager(module, query, key, value, eager_mask, **kwargs)
            finally:
                session.in_interface -= 1
            result = (_zero_rows(result[0], empty), result[1])  # as the kernel gives them
            self._keep_eager_map(module, result[1], catch, attention_mask, states)
        self._dense_padding(made, dense_mask, attention_mask)
        self._own_call(module, states, made)
        return _zero_rows(result[0], unseen), result[1]

    def _keep_eager_map(self, module: nn.Module, weights: Any, catch: list[Tensor],
                        attention_mask: Any, states: Any) -> None:
        r"""Record the map the eager function returned (or the softmax caught before its
        dropout), its wholly hidden rows zero and its padding read from ``attention_mask``."""
        if not isinstance(weights, Tensor) or not self.session.in_scope(module):
            return
        matching = [t for t in catch if t.shape == weights.shape]
        live = matching[-1] if matching else weights
        kept = live.detach()
        if isinstance(attention_mask, Tensor) and attention_mask.dim() == kept.dim():
            # rows that hide every key record zero, as the flash capture's (no keys, no share)
            kept = clear_empty_rows(kept, attention_mask[..., : kept.shape[-1]])
        record = self.recorder._add_map(module, live, kept)
        if record is not None:
            record.masked_keys = masked_keys(attention_mask, kept.shape[0])
        if record is not None and states is not None:
            record.states = states

    def _dense_padding(self, made: int, dense: Tensor | None, mask: Tensor | None) -> None:
        r"""The padding of the calls just recorded read from the mask before an indexer's
        selection was folded in, by the kernel or by the module itself (Qwen4-Exp's indexed
        attention hides the keys no query selected in the mask it hands on): a key no query
        selected is not padding."""
        if dense is mask:
            return
        for record in self.recorder.records[made:]:
            if record.masked_keys is not None:
                dense_keys = masked_keys(dense, record.masked_keys.shape[0])
                record.masked_keys = None if dense_keys is None or dense_keys.shape != \
                    record.masked_keys.shape else dense_keys & record.masked_keys

    def _own_call(self, module: nn.Module, states: tuple[Tensor, Tensor] | None,
                  made: int) -> None:
        """A module that hands the same queries and keys to the attention function twice in
        one call (DiffLlama's differential attention: one map, two halves of the values) makes
        two calls, not two parts of one (parts are folded into one map: their maps would add
        up to twice the softmax); the recorder names such modules."""
        records = self.recorder.records
        if states is None or len(records) != made + 1:
            return
        new = records[-1]
        same = [r for r in records[:-1] if r.call_id == new.call_id and r.states is not None
                and r.states[0] is states[0] and r.states[1] is states[1]]
        if same:
            new.call_id = next(self.session.call_ids)
            name = self.session.name_of(self.session.owner(module))
            if name not in self.session.repeated:
                self.session.repeated.append(name)



def _maps_large(query: Any, key: Any) -> bool:
    r"""Whether the call's maps reach :data:`~captum_hetattn.capture.FLASH_MIN_ENTRIES` entries
    (``B · H · n_q · n_k``, heads of the queries): the flash capture pays from there on."""
    from captum_hetattn import capture  # the package's value now: setting it there works

    if not (isinstance(query, Tensor) and isinstance(key, Tensor) and query.dim() == 4
            and key.dim() == 4):
        return True  # not the usual layout: flash decides (it checks the call itself)
    batch, heads, n_query = query.shape[:3]
    return batch * heads * n_query * key.shape[2] >= capture.FLASH_MIN_ENTRIES


def _mask_as_before(eager_mask: Any, sdpa: set[int]) -> Any:
    r"""The mask function of the recording key: the boolean mask ``sdpa`` would build for the
    configs in ``sdpa`` (made additive where the eager function gets it, :func:`_additive`),
    the eager one for the others. A model's code between the mask builder and its attention
    sees the mask it sees without us: NemotronAsr's streaming encoder turns the mask with
    ``logical_not()`` into a fill of its position scores, which an additive mask (0 where a
    key is seen) inverts into one that hides every key."""
    from transformers.masking_utils import sdpa_mask

    def mask(*args: Any, **kwargs: Any) -> Any:
        if id(kwargs.get("config")) not in sdpa:
            return eager_mask(*args, **kwargs)
        kwargs.pop("dtype", None)
        kwargs["allow_is_causal_skip"] = False  # the eager function has no is_causal
        return sdpa_mask(*args, **kwargs)

    return mask


def _additive(mask: Any, dtype: torch.dtype) -> Any:
    r"""A boolean mask (``True``: the key is seen) as the additive one ``eager_mask`` builds."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        return mask
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min)


def _unseen_rows(mask: Any) -> Tensor | None:
    r"""``(B, heads | 1, n_q)``: the query rows a 4-D boolean mask hides wholly; sdpa gives
    them zero (a wholly padded TimesFM patch, a left-padded query), not the uniform row of the
    additive mask's finite minimum. ``None`` without any."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 4:
        return None
    empty = ~mask.any(dim=-1)
    return empty if bool(empty.any()) else None


def _zero_rows(output: Any, empty: Tensor | None) -> Any:
    r"""``output`` ``(B, n_q, heads, d)`` with the query rows ``empty`` marks
    (``(B, heads | 1, n_q)``) set to zero, where laid out so."""
    if empty is None or not isinstance(output, Tensor) or output.dim() != 4:
        return output
    rows = empty.transpose(1, 2)[..., None]  # (B, n_q, heads | 1, 1) like the output
    if rows.shape[1] != output.shape[1] or rows.shape[2] not in (1, output.shape[2]):
        return output
    return output.masked_fill(rows, 0.0)


def _module_mask(session: Session, module: nn.Module, mask: Any) -> Any:
    r"""The ``attention_mask`` ``module`` was handed (additive), where it is laid out like the
    mask it hands the attention function (``mask``): what the module hides itself on top
    (a selection of keys) is no padding; else ``mask``."""
    frame = session.frames[-1] if session.frames else None
    if frame is None or frame.module is not module or not isinstance(mask, Tensor):
        return mask
    given = frame.mask
    if not isinstance(given, Tensor) or given.dim() != 4 or mask.dim() != 4:
        return mask
    if given.shape[-2:] != mask.shape[-2:] or given.shape[0] not in (1, mask.shape[0]):
        return mask
    if given.is_floating_point():
        low = given <= torch.finfo(given.dtype).min / 2
        if not bool(((given == 0) | low).all()):
            return mask  # not a plain additive mask (a bias, 0/1 weights): says nothing here
    elif given.dtype != torch.bool:
        return mask
    return _additive(given, mask.dtype if mask.is_floating_point() else torch.float32)


def _without_empty_rows(mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """``mask`` with its query rows whose every key is ``-inf`` made 0, and those rows
    (``(B, heads | 1, n_q)``); ``(mask, None)`` without any. The eager softmax of such a row is
    NaN, in the forward and the backward, which a model built for sdpa (which gives the row
    zero) then carries on (NemotronAsr's streaming encoder: its explain read NaN where its own
    forward is finite); made finite, and its output row zeroed, the call is the kernel's."""
    if not isinstance(mask, Tensor) or not mask.is_floating_point() or mask.dim() != 4:
        return mask, None
    empty = torch.isneginf(mask).all(-1)
    if not bool(empty.any()):
        return mask, None
    return mask.masked_fill(empty[..., None], 0.0), empty


def _float32_floor(mask: Any) -> Any:
    r"""A float64 additive mask with its values below float32's lowest raised to it. Eager
    functions take the softmax in float32 (``softmax(..., dtype=torch.float32)``): float64's
    lowest there is ``-inf``, and a row it hides wholly (a left-padded query, a patch no byte
    feeds) turns NaN, in the forward and the backward, where the model's own sdpa gives the
    row of the finite mask. Floored, the row is what a float32 model computes."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.float64:
        return mask
    return mask.clamp(min=torch.finfo(torch.float32).min)


def _with_sparse_indices(mask: Tensor | None, key: Tensor, kwargs: dict) -> tuple[Any, dict]:
    r"""``(mask, kwargs)`` with an ``indices`` kwarg (``(B, n_q, top_k)`` key indices an indexer
    selected: DeepSeek-V3.2, Dots 3, GLM-MoE-DSA, which build this very mask themselves under
    ``"eager"`` / ``"sdpa"`` and pass the indices to other kernels) folded into the mask: every
    key not selected is hidden, as those models' eager path does."""
    indices = kwargs.get("indices")
    if not isinstance(indices, Tensor):
        return mask, kwargs
    batch, n_query = indices.shape[0], indices.shape[1]
    hidden = torch.ones(batch, n_query, key.shape[-2], dtype=torch.bool, device=key.device)
    hidden = hidden.scatter(-1, indices.long(), False).unsqueeze(1)
    if mask is None:
        mask = torch.zeros(hidden.shape, dtype=key.dtype, device=key.device)
    if mask.dtype == torch.bool:
        mask = mask & ~hidden
    else:
        mask = mask.masked_fill(hidden, torch.finfo(mask.dtype).min)
    return mask, {**kwargs, "indices": None}
