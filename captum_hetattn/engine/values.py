r"""What an attention map cannot see by itself: the size of the values it mixes and how much
the attention output weighs against the residual stream (for ``weighting="value"``).

An attention call computes ``o_i = Σ_h Σ_j A_hij · v_hj W_O,h`` and its block adds ``o_i`` to
the token's own state ``x_i``. The map ``A`` says where a token looks, not how much what it
finds moves it: a key whose value vector (after the output projection) is tiny contributes
little however much attention it gets, and a token whose attention output is small next to its
residual keeps mostly its own content. :class:`ValueWatcher` sees, during the forward, the
products ``A @ V`` of every map and the linear layer that reads their output (``W_O``);
:func:`value_terms` turns them into, per bound call, the value norms ``ν_hj = ‖v_hj W_O,h‖``
and the norms ``‖o_i‖`` (attention output, without the projection's bias) and ``‖x_i‖`` (the
hidden states the queries are computed from: the residual stream in post-norm blocks, its
normalised copy in pre-norm blocks). The rules that use them are
:func:`~captum_hetattn.rules.value_weighted` and :func:`~captum_hetattn.rules.residual_shares`.

Backends: maps multiplied by ``torch.matmul`` / ``bmm`` / ``@`` (transformers' eager attention
functions, hand-written attention) and ``nn.MultiheadAttention`` (from its own projections).
A call whose product is not seen (fused kernels, ``einsum``) or whose heads are not laid out
head-major before the output projection gets a ``NotImplementedError`` naming its module.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from captum_hetattn.binding.tokens import tokens_view
from captum_hetattn.capture import AttentionRecord

_PRODUCTS = frozenset({torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm})
#: autograd nodes that only move or copy a tensor's entries (between ``A @ V`` and ``W_O``)
_MOVES = ("View", "Reshape", "Permute", "Transpose", "Clone", "Expand", "Squeeze", "Unsqueeze",
          "Alias", "AsStrided", "Flatten", "Contiguous", "ToCopy")
_HOPS = 8


@dataclass
class _Product:
    weights: Tensor
    values: Tensor
    output: Tensor
    order: int


@dataclass
class _Linear:
    input: Tensor
    weight: Tensor
    bias: Tensor | None
    output: Tensor
    order: int


@dataclass
class ValueTerms:
    r"""What :func:`value_terms` finds for one call.

    Attributes:
        norms: ``ν`` ``(B, H, n_key)``, the norm of each head's value vector after the output
            projection.
        output_norm: ``‖o_i‖`` ``(B, n_query)``, the attention output without the bias.
        input_norm: ``‖x_i‖`` ``(B, n_query)``, the hidden states the queries read.
    """

    norms: Tensor
    output_norm: Tensor
    input_norm: Tensor


class ValueWatcher(TorchFunctionMode):
    r"""Keeps the ``A @ V`` products and ``F.linear`` calls of a forward (live tensors: use it
    inside the recording and drop it after)."""

    def __init__(self) -> None:
        super().__init__()
        self.products: list[_Product] = []
        self.linears: list[_Linear] = []
        self._order = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _PRODUCTS and len(args) == 2 and isinstance(out, Tensor):
            weights, values = args
            if isinstance(weights, Tensor) and isinstance(values, Tensor) and weights.dim() >= 3:
                self._order += 1
                self.products.append(_Product(weights, values, out, self._order))
        elif func is F.linear and isinstance(out, Tensor):
            self._order += 1
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            self.linears.append(_Linear(args[0], weight, bias, out, self._order))
        return out

    def close(self) -> None:
        self.products, self.linears = [], []


def value_terms(
    record: AttentionRecord, module: nn.Module, watcher: ValueWatcher
) -> ValueTerms:
    r"""Value norms and the attention-output / input norms of one recorded call.

    Args:
        record: the call (``record_io``, inside the recording, its map not yet reduced).
        module: the module that computed it.
        watcher: the :class:`ValueWatcher` that watched the forward.

    Raises:
        NotImplementedError: naming the module, where its values or its heads' layout cannot
            be read.
    """
    name = record.name
    if record.layout is not None:
        raise NotImplementedError(
            f"weighting='value' is not available for module '{name}': its attention is laid "
            "out in windows, bands or packed sequences"
        )
    if record.query_input is None or record.attention is None:
        raise NotImplementedError(
            f"weighting='value': the hidden states of module '{name}' were not recorded"
        )
    if isinstance(module, nn.MultiheadAttention):
        norms, output = _mha_terms(module, record)
    else:
        norms, output = _product_terms(record, watcher)
    batch, _, n_query, _ = record.attention.shape
    queries = tokens_view(record.query_input.detach(), record.token_dim)
    if tuple(queries.shape[:2]) != (batch, n_query):
        raise NotImplementedError(
            f"weighting='value': the query input of module '{name}' has shape "
            f"{tuple(record.query_input.shape)}, not {n_query} tokens per example"
        )
    return ValueTerms(norms.float(), output.float().norm(dim=-1),
                      queries.float().norm(dim=-1))


def _product_terms(record: AttentionRecord, watcher: ValueWatcher) -> tuple[Tensor, Tensor]:
    assert record.attention is not None
    batch, heads, n_query, n_key = record.attention.shape
    pointer = record.attention.data_ptr()
    product = next((p for p in watcher.products if p.weights.data_ptr() == pointer
                    and p.weights.numel() == record.attention.numel()), None)
    if product is None:
        raise NotImplementedError(
            f"weighting='value': module '{record.name}' does not multiply its attention map "
            "by its values with torch.matmul / bmm, so its value vectors cannot be read"
        )
    values = product.values.detach()
    if values.numel() % (batch * heads * n_key):
        raise NotImplementedError(
            f"weighting='value': the values of module '{record.name}' have shape "
            f"{tuple(values.shape)}, which does not split into {heads} heads of {n_key} keys"
        )
    values = values.reshape(batch, heads, n_key, -1)
    head_dim = values.shape[-1]
    context = product.output.detach().reshape(batch, heads, n_query, head_dim)
    projection = _output_projection(product, watcher)
    if projection is None:
        warnings.warn(
            f"weighting='value': no linear layer reads the attention output of module "
            f"'{record.name}', so its value norms are taken without an output projection",
            RuntimeWarning, stacklevel=4,
        )
        return values.norm(dim=-1), context.transpose(1, 2).reshape(batch, n_query, -1)
    concatenated = context.transpose(1, 2).reshape(batch, n_query, heads * head_dim)
    read = projection.input.detach()
    if (read.numel() != concatenated.numel() or projection.weight.shape[-1] != heads * head_dim
            or not torch.allclose(read.reshape(concatenated.shape), concatenated,
                                  rtol=1e-4, atol=1e-6)):
        raise NotImplementedError(
            f"weighting='value': the output projection after module '{record.name}' does not "
            f"read its {heads} heads concatenated head-major, so the value vectors cannot be "
            "projected"
        )
    weight = projection.weight.detach().reshape(-1, heads, head_dim)
    norms = torch.einsum("bhkd,ohd->bhko", values, weight.to(values.dtype)).norm(dim=-1)
    return norms, F.linear(concatenated, projection.weight.detach())


def _output_projection(product: _Product, watcher: ValueWatcher) -> _Linear | None:
    """The first linear layer after the product whose input only moves its entries."""
    target = product.output.grad_fn
    if target is None:
        return None
    for linear in watcher.linears:
        if linear.order < product.order:
            continue
        node = linear.input.grad_fn
        for _ in range(_HOPS):
            if node is None:
                break
            if node is target:
                return linear
            if not any(move in type(node).__name__ for move in _MOVES):
                break
            node = node.next_functions[0][0] if node.next_functions else None
    return None


def _mha_terms(module: nn.MultiheadAttention, record: AttentionRecord
               ) -> tuple[Tensor, Tensor]:
    """``nn.MultiheadAttention`` from its own projections and its recorded inputs."""
    assert record.attention is not None
    batch, heads, _, n_key = record.attention.shape
    embed = module.embed_dim
    source = record.key_input if record.key_input is not None else record.query_input
    assert source is not None
    source = tokens_view(source.detach(), record.key_token_dim if record.key_input is not None
                         else record.token_dim)
    if module._qkv_same_embed_dim:
        weight = module.in_proj_weight[2 * embed:]
    else:
        weight = module.v_proj_weight
    bias = module.in_proj_bias[2 * embed:] if module.in_proj_bias is not None else None
    values = F.linear(source, weight, bias).detach()  # (B, n_k, E)
    head_dim = embed // heads
    values = values.reshape(batch, n_key, heads, head_dim).transpose(1, 2)
    out_weight = module.out_proj.weight.detach().reshape(-1, heads, head_dim)
    norms = torch.einsum("bhkd,ohd->bhko", values, out_weight).norm(dim=-1)
    assert record.output is not None
    output = tokens_view(record.output.detach(), record.token_dim)
    if module.out_proj.bias is not None:
        output = output - module.out_proj.bias.detach()
    return norms, output


def check_weighting(weighting: Any) -> None:
    if weighting not in (None, "value"):
        raise ValueError(f"weighting must be None or 'value', got {weighting!r}")
