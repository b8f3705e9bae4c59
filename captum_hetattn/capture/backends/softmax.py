r"""Softmax interception: hand-written attention (LXMERT, VisualBERT, ViLT, BLIP, Perceiver,
custom modules).

A :class:`torch.overrides.TorchFunctionMode` catches ``F.softmax``, ``torch.softmax``,
``Tensor.softmax`` and ``nn.Softmax`` and gives each 4-D softmax over the last dimension to the
innermost attention module running at that moment (a 3-D ``(batch * heads, n_q, n_k)`` softmax is
accepted when the module tells its head count). Deformable attention's sampling-weight softmax is
skipped. The mode puts every torch call through Python, so it is only on while a module whose
softmax is wanted runs (the plan's ``mode`` modules).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from inspect import signature
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from captum_hetattn.capture.backends.base import Backend, clear_empty_rows, masked_keys
from captum_hetattn.capture.introspect import (
    configs_of,
    head_count,
    is_sampling_attention,
    set_implementation,
)
from captum_hetattn.capture.session import Session

if TYPE_CHECKING:
    from captum_hetattn.capture.recorder import AttentionRecorder

_SOFTMAX_NAMES = frozenset({"softmax", "special_softmax", "_softmax"})
_SOFTMAX_FUNCTIONS = frozenset(
    {torch.nn.functional.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax}
)
_SDPA = torch.nn.functional.scaled_dot_product_attention
_MHA_FORWARD = torch.nn.functional.multi_head_attention_forward


def _softmax_dim(func: Callable[..., Any], args: tuple, kwargs: dict) -> int | None:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return dim if isinstance(dim, int) else None


def _ignore(*args: Any) -> None:
    """A recording's softmax callback once it is over."""


def _is_softmax(func: Callable[..., Any]) -> bool:
    try:
        if func in _SOFTMAX_FUNCTIONS:
            return True
    except TypeError:  # unhashable callables
        return False
    return getattr(func, "__name__", "") in _SOFTMAX_NAMES


class SoftmaxMode(TorchFunctionMode):
    r"""Calls ``callback(output, dim, input)`` after every softmax run while the mode is active
    (and ``on_linear(output)`` after every ``F.linear``, ``on_fused(output)`` after every
    ``F.scaled_dot_product_attention``, when given)."""

    def __init__(
        self,
        callback: Callable[[Tensor, int, Any], None],
        on_linear: Callable[[Tensor], None] | None = None,
        on_fused: Callable[[Tensor], None] | None = None,
    ) -> None:
        super().__init__()
        self._callback = callback
        self._on_linear = on_linear
        self._on_fused = on_fused
        #: ``on_sdpa(args, kwargs)``: computes a hand-called sdpa itself (its output), or
        #: ``None`` to leave it to the kernel (set by the recorder: capture/backends/sdpa.py)
        self.on_sdpa: Callable[[tuple, dict], Tensor | None] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func is _MHA_FORWARD:
            return self._multi_head_attention(func, args, kwargs)
        if func is _SDPA and self.on_sdpa is not None:
            out = self.on_sdpa(args, kwargs)
            if out is not None:
                return out
        out = func(*args, **kwargs)
        if isinstance(out, Tensor) and _is_softmax(func):
            dim = _softmax_dim(func, args, kwargs)
            if dim is not None:
                self._callback(out, dim, args[0] if args else kwargs.get("input"))
        elif self._on_linear is not None and func is torch.nn.functional.linear:
            self._on_linear(out)
        elif self._on_fused is not None and func is _SDPA and isinstance(out, Tensor):
            self._on_fused(out)
        return out


    def _multi_head_attention(self, func, args: tuple, kwargs: dict):
        """``F.multi_head_attention_forward`` (WavLM's attention, hand-written modules): the
        mode is off while it handles a call, so the softmax inside is not seen; the call runs
        with per-head weights asked for (its non-fused path), the softmax output they view is
        handed over as the call's softmax (as the ``nn.MultiheadAttention`` capture does), and
        the caller gets what it asked for."""
        bound = signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        need, average = bound.arguments["need_weights"], bound.arguments["average_attn_weights"]
        bound.arguments["need_weights"], bound.arguments["average_attn_weights"] = True, False
        output, weights = func(*bound.args, **bound.kwargs)
        if isinstance(weights, Tensor):
            # the softmax output ((batch·heads, queries, keys)) is upstream of the output
            self._callback(weights._base if weights._base is not None else weights, -1, None)
        if not need:
            return output, None
        return output, weights.mean(dim=-3) if average else weights


class SoftmaxBackend(Backend):
    r"""Records the softmaxes of the plan's ``softmax`` modules through :class:`SoftmaxMode`.

    Args:
        recorder: the recorder the maps go to.
        session: the running recording.
    """

    def __init__(self, recorder: AttentionRecorder, session: Session) -> None:
        super().__init__(recorder, session)
        self.depth = 0  # tracked calls running that want the mode on
        record_io = session.record_io
        self.mode = SoftmaxMode(self._on_softmax, self._on_linear if record_io else None,
                                self._on_fused if record_io else None)

    def install(self, stack: ExitStack) -> None:
        r"""Switch the plan's ``eager`` modules and the ``softmax`` modules' configs to eager,
        and make sure the mode is off when ``stack`` closes.

        Hand-written attention that picks ``F.scaled_dot_product_attention`` when its config
        says ``sdpa`` (Falcon) computes no softmax: its configs say ``eager`` while recording
        (configs of interface modules keep the recording key, which is not ``sdpa`` either).
        """
        plan, model = self.session.plan, self.recorder.model
        if plan.eager:
            set_implementation(stack, model, plan.eager, "eager")
        keep = {id(c) for c in configs_of(model, plan.interface)} if plan.interface else set()
        for cfg in configs_of(model, plan.softmax):
            if id(cfg) in keep or cfg._attn_implementation_internal in (None, "eager"):
                continue
            stack.callback(setattr, cfg, "_attn_implementation_internal",
                           cfg._attn_implementation_internal)
            cfg._attn_implementation_internal = "eager"
        stack.callback(self._unlink)  # runs after the next line's (last in, first out)
        stack.callback(self.leave, all_levels=True)

    def _unlink(self) -> None:
        """Drop the mode's callbacks (bound methods of this backend, which holds the mode): the
        cycle would keep the recorder and its records alive until a full garbage collection."""
        mode = self.mode
        mode._callback = _ignore  # type: ignore[assignment]
        mode._on_linear = mode._on_fused = mode.on_sdpa = None

    def enter(self) -> None:
        r"""A ``mode`` module starts: the mode is on from the first one."""
        self.depth += 1
        if self.depth == 1:
            self.mode.__enter__()

    def leave(self, all_levels: bool = False) -> None:
        r"""A ``mode`` module ends (``all_levels``: the recording ends): the mode is off after
        the last one."""
        if self.depth == 0:
            return
        self.depth = 0 if all_levels else self.depth - 1
        if self.depth == 0:
            self.mode.__exit__(None, None, None)

    def _skip(self, module: torch.nn.Module, out: Tensor, reason: str) -> None:
        """A softmax inside an attention module that is not recorded, kept (``record_io``) so
        that the explainer can say so instead of leaving it out silently."""
        session = self.session
        if session.record_io and session.in_scope(module):
            name = session.name_of(session.owner(module))
            self.recorder.skipped.append(
                (name, f"its softmax of shape {tuple(out.shape)} is not recorded: {reason}"))

    def _on_fused(self, out: Tensor) -> None:
        session = self.session
        if session.frames and not session.in_interface:
            module = session.frames[-1].module
            name = session.name_of(session.owner(module))
            if all(n != name for n, _ in self.recorder.skipped):
                self._skip(module, out, "it computes attention with "
                           "F.scaled_dot_product_attention, a fused kernel with no map to "
                           "record; where the model has an eager "
                           "path (attn_implementation='eager' on a transformers model whose "
                           "modules read it) build it that way, else compute this module's "
                           "attention with an explicit softmax")

    def _on_linear(self, out: Tensor) -> None:
        session = self.session
        if session.frames and not session.in_interface:
            session.frames[-1].linears.append(out)

    def _on_softmax(self, out: Tensor, dim: int, scores: Any = None) -> None:
        session = self.session
        if session.in_interface or not session.frames or not out.is_floating_point():
            return
        module = session.frames[-1].module
        if id(module) in session.plan.mha:
            return
        if is_sampling_attention(module):
            return self._skip(module, out, "it weighs sampling points (deformable attention)")
        if dim not in (-1, out.dim() - 1):
            return self._skip(module, out, f"it normalises dimension {dim}, not the last one")
        if isinstance(scores, Tensor) and _gathered_queries(scores):
            return self._skip(module, out, (
                "its query rows are a gathered selection of the tokens (Informer's ProbSparse "
                "top-u queries), not the tokens in order, so its rows cannot be read as tokens"))
        heads = head_count(module)
        raw = False
        if out.dim() == 4 and not (
            heads is not None and out.shape[1] != heads and out.shape[2] == heads
        ):
            shaped = out.detach()
        elif out.dim() == 3 and heads is not None and out.shape[0] % heads == 0:
            shaped = out.detach().view(out.shape[0] // heads, heads, *out.shape[1:])
        elif session.record_io and out.dim() >= 3:
            # banded (batch, n, heads, 2w+1) or blocked 5-D maps: raw, for the layouts to place
            shaped, raw = out.detach(), True
        else:  # (batch, n) pooling weights, (batch, n, heads, points) sampling weights
            return self._skip(module, out, "it is not a (batch, heads, queries, keys) map")
        hidden = None
        if not raw and isinstance(scores, Tensor) and scores.shape == out.shape:
            # a query row whose every score is masked has no keys: zero, as in the other captures
            shaped = clear_empty_rows(shaped, scores.detach().view(shaped.shape))
            hidden = masked_keys(scores.detach().view(shaped.shape), shaped.shape[0])
        if session.in_scope(module):
            # an interface module that ran its own code instead (caught here, so recorded)
            session.interface_dispatched.add(id(module))
            record = self.recorder._add_map(module, out, shaped)
            if record is not None:
                record.masked_keys = hidden
            if record is not None and session.record_io and isinstance(scores, Tensor):
                record.scores, record.raw, record.heads = scores, raw, heads
                record.linears = list(session.frames[-1].linears)


_THROUGH = {"ViewBackward0", "UnsafeViewBackward0", "TransposeBackward0", "ExpandBackward0",
            "CloneBackward0", "ReshapeAliasBackward0", "MulBackward0", "DivBackward0",
            "AddBackward0", "ToCopyBackward0"}


def _gathered_queries(scores: Tensor) -> bool:
    r"""Whether the scores' query operand (the first factor of the product that made them, past
    reshapes, scalings and an added mask) was taken by advanced indexing of another tensor: its
    rows are then a selection or a permutation of the tokens (Informer's ProbSparse attention
    computes ``softmax(Q[top_u] K^T)`` and scatters the rows back)."""
    node = scores.grad_fn
    for _ in range(8):  # to the product, through what keeps its rows
        if node is None or type(node).__name__ in ("BmmBackward0", "MmBackward0"):
            break
        if type(node).__name__ not in _THROUGH or not node.next_functions:
            return False
        node = node.next_functions[0][0]
    if node is None or type(node).__name__ not in ("BmmBackward0", "MmBackward0"):
        return False
    node = node.next_functions[0][0]
    for _ in range(8):  # the query factor, through reshapes only
        name = type(node).__name__ if node is not None else ""
        if name == "IndexBackward0":
            return True
        if name not in ("ViewBackward0", "UnsafeViewBackward0", "TransposeBackward0",
                        "ExpandBackward0", "CloneBackward0", "ReshapeAliasBackward0"):
            return False
        node = node.next_functions[0][0]
    return False
