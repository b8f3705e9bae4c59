r"""Attention with the fast kernel in the forward and the map built inside the backward.

Eager capture keeps every call's ``(B, H, n_q, n_k)`` map alive from the forward to the backward
(the backward of ``A @ V`` needs it), so memory grows with ``L · H · n²``. Here the forward runs
``F.scaled_dot_product_attention`` (which keeps only ``Q, K, V`` and the output) and the backward
recomputes, one call at a time, ``A = softmax(Q Kᵀ · scale + mask)`` and takes
``G = ∂y/∂A = dO · Vᵀ`` from the output gradient — exactly the pair the eager capture records —
hands both to a callback (which reduces them at once) and returns the usual gradients of
``Q, K, V`` (and of an additive mask that requires grad, such as a learned position bias).

The callback runs inside the backward, per call and chunk of heads, so a callback that reduces the
maps at once leaves at most one chunk of one call's maps alive at a time.
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
    r"""``sdpa(Q, K, V, mask, scale)`` whose backward calls ``sink(A, G, first_head, heads)``.

    The backward runs over chunks of heads (``chunk`` heads at a time; all at once when
    ``None``), so it holds one chunk's ``(B, chunk, n_q, n_k)`` temporaries at a time; the sink
    gets each chunk's maps with the index of its first head and the total head count.
    ``probe`` is a scalar that requires grad: asking ``torch.autograd.grad`` for it makes a
    backward run through this call without keeping any map (its gradient is 0).
    """

    @staticmethod
    def forward(ctx, query, key, value, mask, probe, scale, sink, chunk=None):  # noqa: D102
        ctx.save_for_backward(query, key, value, mask)
        ctx.scale, ctx.sink, ctx.chunk = scale, sink, chunk
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        query, key, value, mask = ctx.saved_tensors
        heads = query.shape[1]
        chunk = heads if ctx.chunk is None else max(1, min(int(ctx.chunk), heads))
        grad_query, grad_key, grad_value = (torch.empty_like(t) for t in (query, key, value))
        grad_mask = None
        wants_mask = mask is not None and ctx.needs_input_grad[3]
        for first in range(0, heads, chunk):
            part = slice(first, first + chunk)
            head_mask = None
            if mask is not None:
                head_mask = mask[:, part] if mask.dim() == 4 and mask.shape[1] == heads else mask
            q, k, v, d_out = query[:, part], key[:, part], value[:, part], grad_output[:, part]
            attention = attention_map(q, k, head_mask, ctx.scale)
            gradient = torch.matmul(d_out, v.transpose(-1, -2))  # ∂y/∂A = dO · Vᵀ
            grad_value[:, part] = torch.matmul(attention.transpose(-1, -2), d_out)
            grad_scores = attention * (gradient - (gradient * attention).sum(-1, keepdim=True))
            grad_query[:, part] = torch.matmul(grad_scores, k) * ctx.scale
            grad_key[:, part] = torch.matmul(grad_scores.transpose(-1, -2), q) * ctx.scale
            if wants_mask:
                if mask.dim() == 4 and mask.shape[1] == heads and heads > 1:
                    if grad_mask is None:
                        grad_mask = torch.zeros_like(mask)
                    grad_mask[:, part] = _sum_to(grad_scores, grad_mask[:, part].shape)
                else:
                    partial = _sum_to(grad_scores, mask.shape)
                    grad_mask = partial if grad_mask is None else grad_mask + partial
            ctx.sink(attention.detach(), gradient.detach(), first, heads)
            del attention, gradient, grad_scores
        return grad_query, grad_key, grad_value, grad_mask, torch.zeros(()), None, None, None


def _sum_to(gradient: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to ``shape``."""
    while gradient.dim() > len(shape):
        gradient = gradient.sum(0)
    for dim, size in enumerate(shape):
        if size == 1 and gradient.shape[dim] != 1:
            gradient = gradient.sum(dim, keepdim=True)
    return gradient
