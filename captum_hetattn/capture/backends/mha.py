r""":class:`torch.nn.MultiheadAttention`.

While recording, its calls get ``need_weights=True, average_attn_weights=False`` (so the
non-fused path runs and keeps the heads), the returned weights are recorded through their base
tensor (the softmax output that the attention output is computed from; the returned view itself
is off the gradient path) and the caller gets exactly what it asked for (no weights, or
head-averaged weights). The ``nn.TransformerEncoder`` fast path and nested-tensor path are
disabled while recording.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from torch import Tensor, nn

from captum_hetattn.capture.backends.base import Backend
from captum_hetattn.capture.claims import FastPath
from captum_hetattn.capture.introspect import forward_signature
from captum_hetattn.capture.session import Frame


class MhaBackend(Backend):
    r"""Records the plan's ``mha`` modules from the weights they are asked to return.

    Args:
        recorder: the recorder the maps go to.
        session: the running recording.
    """

    def install(self, stack: ExitStack) -> None:
        r"""Disable the MHA fast path (process-wide) until ``stack`` closes."""
        stack.enter_context(FastPath.disabled())

    @staticmethod
    def force_weights(module: nn.Module, args: tuple, kwargs: dict, frame: Frame):
        r"""The call's arguments with per-head weights requested (a forward pre-hook's
        result); what the caller asked for is kept on ``frame``."""
        sig = forward_signature(type(module))
        assert sig is not None
        bound = sig.bind(module, *args, **kwargs)
        frame.mha_request = (
            bool(bound.arguments.get("need_weights", True)),
            bool(bound.arguments.get("average_attn_weights", True)),
        )
        bound.arguments["need_weights"] = True
        bound.arguments["average_attn_weights"] = False
        return bound.args[1:], bound.kwargs

    def on_output(self, module: nn.Module, frame: Frame, output: Any):
        r"""Record the call's weights; returns the output the caller asked for (``None``:
        unchanged)."""
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], Tensor)):
            return None
        attn_output, weights = output
        # The returned weights are a view of the softmax output; only the base is upstream of
        # the attention output (in training with dropout it is the dropped-out tensor).
        live = weights._base if weights._base is not None else weights
        shaped = weights.detach() if weights.dim() == 4 else weights.detach().unsqueeze(0)
        if self.session.in_scope(module):
            self.recorder._add_map(module, live, shaped, frame)
        need_weights, average = frame.mha_request  # type: ignore[misc]
        if not need_weights:
            return attn_output, None
        if average:
            return attn_output, weights.mean(dim=1 if weights.dim() == 4 else 0)
        return output
