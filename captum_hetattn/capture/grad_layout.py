r"""Gradients handed to a batch norm in its input's memory layout.

torch's batch-norm backward on CPU (``native_batch_norm_backward``, train and eval, torch 2.13)
returns a wrong input gradient when the input is contiguous and the incoming gradient is
channels-last with a batch of one whose batch stride is not ``C·H·W``: e.g. a ``(1, C, H, W)``
conv → batch norm → ``flatten(2).transpose(1, 2)`` (the hybrid encoders of RT-DETR-style
detectors, OmDet-Turbo's channel projections). The stride of a size-1 dimension is arbitrary;
the result looks as if the kernel read the gradient in the input's layout, and every gradient
upstream of the norm is wrong — for an example explained alone, not in a batch (its batch
stride is then ``C·H·W``). Measured on OmDet-Turbo: the gradient of a decoder input into its
image tokens was half the batch's, so the batch and the single example got different
explanations.

While a recording runs, the output of each batch-norm module whose input is contiguous gets a
gradient hook that makes an incoming gradient contiguous too (the same values; a copy only when
it is not).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from torch import Tensor, nn

from captum_hetattn.capture.memo import modules_of


def _contiguous(grad: Tensor) -> Tensor:
    return grad if grad.is_contiguous() else grad.contiguous()


def _on_batch_norm(module: nn.Module, args: tuple, output: Any) -> None:
    inputs = args[0] if args else None
    # only a contiguous input meets the bug (a channels-last one reads the gradient right)
    if (isinstance(output, Tensor) and isinstance(inputs, Tensor) and output.requires_grad
            and inputs.dim() > 3 and inputs.is_contiguous()):
        output.register_hook(_contiguous)


def keep_batch_norm_grads_in_input_layout(stack: ExitStack, model: nn.Module) -> None:
    r"""Hook every batch-norm module of ``model`` (see the module docstring) until ``stack``
    closes."""
    for module in modules_of(model):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handle = module.register_forward_hook(_on_batch_norm)
            stack.callback(handle.remove)
