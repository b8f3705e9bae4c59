r"""Attention with the fast kernel in the forward and the map built inside the backward.

Eager capture keeps every call's ``(B, H, n_q, n_k)`` map alive from the forward to the backward
(the backward of ``A @ V`` needs it), so memory grows with ``L · H · n²``. Here the forward runs
``F.scaled_dot_product_attention`` (which keeps only ``Q, K, V`` and the output) and the backward
recomputes, one call at a time, ``A = softmax(Q Kᵀ · scale + mask)`` and takes
``G = ∂y/∂A = dO · Vᵀ`` from the output gradient — exactly the pair the eager capture records —
hands both to a callback (which reduces them at once) and returns the usual gradients of
``Q, K, V`` (and of an additive mask that requires grad, such as a learned position bias).

The callback runs once per call, inside the backward, so a callback that reduces the maps at once
leaves at most one call's maps alive at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Sink = Callable[[Tensor, Tensor], None]


def attention_map(query: Tensor, key: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    r"""``softmax(Q Kᵀ · scale + mask)`` in (at least) float32, cast back to the query's dtype
    (as the transformers eager attention functions compute it)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    dtype = torch.promote_types(query.dtype, torch.float32)  # float64 stays float64
    return torch.softmax(scores, dim=-1, dtype=dtype).to(query.dtype)


class FlashAttention(torch.autograd.Function):
    r"""``sdpa(Q, K, V, mask, scale)`` whose backward calls ``sink(A, G)``.

    ``probe`` is a scalar that requires grad: asking ``torch.autograd.grad`` for it makes a
    backward run through this call without keeping any map (its gradient is 0).
    """

    @staticmethod
    def forward(ctx, query, key, value, mask, probe, scale, sink):  # noqa: D102
        ctx.save_for_backward(query, key, value, mask)
        ctx.scale, ctx.sink = scale, sink
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        query, key, value, mask = ctx.saved_tensors
        attention = attention_map(query, key, mask, ctx.scale)
        gradient = torch.matmul(grad_output, value.transpose(-1, -2))  # ∂y/∂A = dO · Vᵀ
        grad_value = torch.matmul(attention.transpose(-1, -2), grad_output)
        grad_scores = attention * (gradient - (gradient * attention).sum(-1, keepdim=True))
        grad_query = torch.matmul(grad_scores, key) * ctx.scale
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), query) * ctx.scale
        grad_mask = None
        if mask is not None and ctx.needs_input_grad[3]:
            grad_mask = _sum_to(grad_scores, mask.shape)
        ctx.sink(attention.detach(), gradient.detach())
        return grad_query, grad_key, grad_value, grad_mask, torch.zeros(()), None, None


def _sum_to(gradient: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to ``shape``."""
    while gradient.dim() > len(shape):
        gradient = gradient.sum(0)
    for dim, size in enumerate(shape):
        if size == 1 and gradient.shape[dim] != 1:
            gradient = gradient.sum(dim, keepdim=True)
    return gradient
