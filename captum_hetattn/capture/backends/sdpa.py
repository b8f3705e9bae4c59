r"""Hand-called ``F.scaled_dot_product_attention``: hand-written attention modules that call the
fused kernel themselves (SAM's vision encoder, ``SamVisionSdpaAttention``; custom modules).

The kernel keeps no map. While such a module runs (the softmax mode is on for it), the call is
computed as the kernel defines it — ``A = softmax(Q Kᵀ · scale + mask)`` by the flash capture's
own :func:`~captum_hetattn.capture.backends.flash.attention_map` (a boolean or causal mask made
additive, grouped keys repeated), then ``A @ V`` — and ``A`` is recorded with its gradient as an
eager softmax is. What the kernel does that a map cannot say (dropout in training, inputs that
are not ``(batch, heads, tokens, dim)``) is left to the kernel, and the module is reported with
the reason.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from captum_hetattn.capture.backends.base import Backend, clear_empty_rows, masked_keys
from captum_hetattn.capture.backends.flash import attention_map

if TYPE_CHECKING:
    from contextlib import ExitStack

__all__ = ["SdpaBackend", "additive_mask"]

_SIGNATURE = inspect.Signature([
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
    for name, default in (("query", inspect.Parameter.empty), ("key", inspect.Parameter.empty),
                          ("value", inspect.Parameter.empty), ("attn_mask", None),
                          ("dropout_p", 0.0), ("is_causal", False), ("scale", None),
                          ("enable_gqa", False))])


def additive_mask(mask: Tensor | None, causal: bool, n_query: int, n_key: int,
                  like: Tensor) -> Tensor | None:
    r"""The kernel's ``attn_mask`` / ``is_causal`` as one additive mask (``-inf`` where a key
    is hidden; a boolean mask says where a key is *seen*), ``None`` without either."""
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(
            ~mask, float("-inf"))
    if causal:  # the kernel's causal mask: the upper-left triangle
        hidden = torch.ones(n_query, n_key, dtype=torch.bool, device=like.device).triu(1)
        upper = torch.zeros(n_query, n_key, dtype=like.dtype, device=like.device).masked_fill(
            hidden, float("-inf"))
        mask = upper if mask is None else mask + upper
    return mask


class SdpaBackend(Backend):
    r"""Computes and records the ``F.scaled_dot_product_attention`` calls of hand-written
    attention modules (installed as the softmax mode's ``on_sdpa``)."""

    def install(self, stack: ExitStack) -> None:
        r"""Nothing to undo: the softmax mode calls :meth:`__call__` while it is on."""

    def __call__(self, args: tuple, kwargs: dict) -> Tensor | None:
        session = self.session
        if session.in_interface or not session.frames:
            return None  # the interface's own kernel (the flash capture), or outside a module
        module = session.frames[-1].module
        if not session.in_scope(module) or id(module) in session.plan.mha:
            return None
        try:
            call = _SIGNATURE.bind(*args, **kwargs).arguments
        except TypeError:
            return None
        query, key, value = call["query"], call["key"], call["value"]
        mask = call.get("attn_mask")
        why = self._unsupported(module, query, key, value, mask, call.get("dropout_p", 0.0))
        if why is not None:
            self._skip(module, why)
            return None
        if call.get("enable_gqa", False) and key.shape[1] != query.shape[1]:
            groups = query.shape[1] // key.shape[1]
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        scale = call.get("scale")
        scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
        mask = additive_mask(mask, bool(call.get("is_causal", False)), query.shape[2],
                             key.shape[2], query)
        attention = attention_map(query, key, mask, scale)
        kept = clear_empty_rows(attention.detach(), mask)
        record = self.recorder._add_map(module, attention, kept)
        if record is not None:
            record.masked_keys = masked_keys(mask, query.shape[0])
            if session.record_io:
                record.states = (query, key)  # the per-head states, as an interface call's
        return torch.matmul(attention, value)  # as the kernel computes it

    @staticmethod
    def _unsupported(module, query, key, value, mask, dropout) -> str | None:
        if not all(isinstance(t, Tensor) and t.dim() == 4 for t in (query, key, value)):
            return ("it calls F.scaled_dot_product_attention on inputs that are not "
                    "(batch, heads, tokens, dim), so its heads and examples cannot be told "
                    "apart; pass per-head 4-D queries, keys and values")
        if module.training and dropout:
            return ("it calls F.scaled_dot_product_attention with dropout in training: "
                    "explain the model in eval() mode")
        if mask is not None and not isinstance(mask, Tensor):
            return "it calls F.scaled_dot_product_attention with a mask that is no tensor"
        return None

    def _skip(self, module, why: str) -> None:
        session = self.session
        if session.record_io:
            name = session.name_of(session.owner(module))
            if all(n != name for n, _ in self.recorder.skipped):
                self.recorder.skipped.append((name, why))

