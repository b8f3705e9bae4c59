r"""ODAM: gradient-weighted Object Detector Activation Maps (Zhao, Hsiao, Chan, TPAMI 2024).

ODAM explains one detection (one object query of a DETR, one box of a CNN detector) with the
feature map ``F`` of a layer, weighted *element-wise* by the gradient of that detection's class
score (not by the channel-pooled gradient of Grad-CAM, which blurs instances of one class
together), summed over channels, through a ReLU::

    H = ReLU( Σ_c  ∂y_(query, class) / ∂F_c  ⊙  F_c )

The paper we implement ("Generic Interpretation Approach for Transformer Models Incorporating
Heterogenous Attention Structures") uses ODAM as its second baseline for DETR. :class:`ODAM`
computes it with Captum's :class:`~captum.attr.LayerGradientXActivation` (gradient ×
activation of the layer's output) and reduces the channel dimension, so it takes Captum's
targets: ``target=(query, class)`` for a detector whose forward returns
``(B, queries, classes)`` logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import LayerGradientXActivation
from captum.log import log_usage
from torch import Tensor, nn


class ODAM(LayerGradientXActivation):
    r"""Gradient-weighted object detector activation map of one layer, per detection.

    Args:
        forward_func: the detector as a function of its inputs returning class scores, e.g.
            ``lambda pixels: detr(pixel_values=pixels).logits`` (``(B, queries, classes)``).
        layer: the module whose output is the feature map ``F``: a backbone stage
            (``(B, C, H, W)``, channels first) or an encoder layer (``(B, tokens, C)``,
            channels last).
        device_ids: as for Captum's layer attributions (``DataParallel`` models).

    Examples::

        >>> from captum_hetattn.evaluation import ODAM
        >>> odam = ODAM(lambda p: detr(pixel_values=p).logits,
        ...             detr.model.backbone.model.encoder.stages[-1])
        >>> heat = odam.attribute(pixel_values, target=(query, label))  # (B, H', W')
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: nn.Module,
        device_ids: list[int] | None = None,
    ) -> None:
        super().__init__(forward_func, layer, device_ids=device_ids, multiply_by_inputs=True)

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        *,
        channel_dim: int | None = None,
        relu: bool = True,
    ) -> Tensor:
        r"""The ODAM heat map of ``layer`` for each example's target.

        Args:
            inputs: the detector's inputs (a tensor or a tuple of tensors).
            target: Captum's target; ``(query, class)`` (or a list of them, one per example)
                for a ``(B, queries, classes)`` output.
            additional_forward_args: further arguments of ``forward_func``.
            attribute_to_layer_input: use the layer's input instead of its output as ``F``.
            channel_dim: the channel dimension of ``F`` to sum over; ``None``: 1 for a 4-D map
                ``(B, C, H, W)``, the last for a token sequence ``(B, N, C)``.
            relu: apply ODAM's ReLU (``False`` keeps the signed sum).

        Returns:
            ``F``'s shape without the channel dimension: ``(B, H, W)`` or ``(B, N)``, float.

        Raises:
            TypeError: the layer returns several tensors (pick a module with one output).
        """
        with torch.enable_grad():
            attribution = super().attribute(
                inputs, target=target, additional_forward_args=additional_forward_args,
                attribute_to_layer_input=attribute_to_layer_input,
            )
        if isinstance(attribution, (tuple, list)):
            if len(attribution) != 1:
                raise TypeError(
                    f"ODAM: the layer {type(self.layer).__name__} gives {len(attribution)} "
                    "tensors; pass a module with a single feature-map output"
                )
            attribution = attribution[0]
        if channel_dim is None:
            channel_dim = 1 if attribution.dim() == 4 else -1
        heat = attribution.detach().float().sum(dim=channel_dim)
        return (heat.clamp(min=0) if relu else heat).contiguous()


__all__ = ["ODAM"]
