r"""Captum's ``infidelity`` and ``sensitivity_max`` on any attribution, with sensible defaults.

Attention-based relevance is not on the scale of the model output, so infidelity is computed
with ``normalize=True`` (Captum rescales the attributions by the best least-squares factor).
Integer inputs (token ids) cannot be perturbed by Gaussian noise: explain float inputs
(embeddings, features, pixels) or pass a ``perturb_func`` that keeps the dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor


def gaussian_perturbation(scale: float = 0.05) -> Callable[..., Any]:
    """Captum-style perturbation: noise ``I`` (σ = ``scale``) and the perturbed inputs ``x − I``."""

    def perturb(*inputs: Tensor) -> tuple[Any, Any]:
        for tensor in inputs:
            if not tensor.is_floating_point():
                raise TypeError(
                    f"cannot add Gaussian noise to a {tensor.dtype} input; attribute float "
                    "inputs (embeddings, features, pixels) or pass perturb_func"
                )
        noise = tuple(torch.randn_like(t) * scale for t in inputs)
        perturbed = tuple(t - n for t, n in zip(inputs, noise, strict=True))
        return (noise[0], perturbed[0]) if len(inputs) == 1 else (noise, perturbed)

    return perturb


def infidelity_score(
    forward_func: Callable[..., Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    attributions: Tensor | tuple[Tensor, ...],
    *,
    target: Any = None,
    additional_forward_args: Any = None,
    perturb_func: Callable[..., Any] | None = None,
    n_perturb_samples: int = 10,
) -> Tensor:
    r"""Captum's infidelity, ``normalize=True``; ``(B,)``, lower is better."""
    return infidelity(
        forward_func,
        perturb_func or gaussian_perturbation(),
        inputs,
        attributions,
        additional_forward_args=additional_forward_args,
        target=target,
        n_perturb_samples=n_perturb_samples,
        normalize=True,
    )


def sensitivity_score(
    attribute: Callable[..., Any],
    inputs: Tensor | tuple[Tensor, ...],
    *,
    target: Any = None,
    additional_forward_args: Any = None,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 5,
) -> Tensor:
    r"""Captum's ``sensitivity_max`` of an ``attribute`` function; ``(B,)``, lower is better."""
    return sensitivity_max(
        attribute,
        inputs,
        target=target,
        additional_forward_args=additional_forward_args,
        perturb_radius=perturb_radius,
        n_perturb_samples=n_perturb_samples,
    )
