r"""What the gradient explains: Captum targets and contrastive objectives (paper §5.2).

An objective maps the model output to one score per example, ``(B,)``. Captum's ``target`` (int,
tuple, tensor, list) selects one logit as usual; :class:`Contrast`, :class:`Ratio` and
:class:`RelativeContrast` compare two targets ("logical inspection": why ``a`` rather than
``b``); any callable ``output -> (B,)`` works too. Under the ``full`` correction the sign of the
relevance survives: positive = evidence for ``a``, negative = evidence for ``b``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from captum_hetattn._captum_compat import _select_targets

Target = int | tuple[int, ...] | Tensor | list[Any] | None
Objective = Callable[[Tensor], Tensor]


def check_output(output: Any) -> Tensor:
    """The model output as a tensor: a tensor as it is, a model output with a ``logits``
    tensor (a transformers ``ModelOutput`` of a classifier, a language model, a detector) at
    its logits; anything else is a ``TypeError`` that says how to wrap the model."""
    if isinstance(output, Tensor):
        if output.dim() == 0:
            raise ValueError(
                "forward_func returned a 0-d tensor (one number for the whole batch): Captum's "
                "forward_func returns one score, or one row of scores, per example (shape "
                "(batch,) or (batch, classes)); drop the .sum() / .mean() over the batch, or "
                "explain one example at a time"
            )
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    fields = [k for k, v in output.items() if isinstance(v, Tensor)] if hasattr(
        output, "items") else []
    field = f".{fields[0]}" if fields else "[0]"
    hint = f" (its tensors: {', '.join(fields)})" if fields else ""
    raise TypeError(
        f"forward_func returned {type(output).__name__}, not a tensor of scores{hint}. Wrap "
        f"the model so that it returns the scores to explain, and name the model: "
        f"HeterogenousAttentionAttribution(lambda *args: model(*args){field}, model=model)"
    )


def _check_index(index: int, size: int, what: str, output: Tensor) -> None:
    if not -size <= index < size:
        raise ValueError(
            f"target {what} {index} is out of range for model output of shape "
            f"{tuple(output.shape)} ({size} entries)"
        )


def select_target(output: Tensor, target: Target) -> Tensor:
    r"""One score per example, like Captum's ``target`` (with range checks Captum lacks).

    Args:
        output: model output ``(B, ...)``.
        target: ``None`` (output must then be ``(B,)`` or ``(B, 1)``), an int (index of dim 1),
            a tuple (indices of the dims after the batch), a ``(B,)`` tensor or a list of
            per-example ints or tuples.

    Returns:
        ``(B,)``.
    """
    output = check_output(output)
    if target is None:
        if output.dim() == 1:
            return output
        if output[0].numel() == 1:
            return output.reshape(output.shape[0])
        raise ValueError(
            f"target is required: the model output has shape {tuple(output.shape)}, more than "
            "one score per example"
        )
    per_example: list[Any]
    if isinstance(target, Tensor) and target.numel() > 1:
        per_example = target.tolist()
    elif isinstance(target, list):
        if len(target) != output.shape[0]:
            raise ValueError(
                f"target list has {len(target)} entries for a batch of {output.shape[0]}"
            )
        per_example = target
    else:
        per_example = [target.item() if isinstance(target, Tensor) else target]
    for entry in per_example:
        indices = entry if isinstance(entry, tuple) else (entry,)
        if len(indices) > output.dim() - 1:
            raise ValueError(
                f"target {entry} has {len(indices)} indices; the model output of shape "
                f"{tuple(output.shape)} has {output.dim() - 1} dimension(s) after the batch"
            )
        for dim, index in enumerate(indices, start=1):
            _check_index(int(index), output.shape[dim], f"index (dim {dim})", output)
    selected = _select_targets(output, target)
    if selected.dim() != 1:
        raise ValueError(
            f"target {target!r} selects shape {tuple(selected.shape)} from output of shape "
            f"{tuple(output.shape)}; it must select one score per example"
        )
    return selected


@dataclass(frozen=True)
class TargetObjective:
    """Captum's ``target``: the selected logit."""

    target: Target = None

    def __call__(self, output: Tensor) -> Tensor:
        return select_target(output, self.target)


@dataclass(frozen=True)
class Contrast:
    r"""``logit_a − logit_b``: evidence for ``a`` rather than ``b``.

    Args:
        a, b: Captum targets (int, tuple, tensor or list).

    Examples::

        >>> explainer.attribute(inputs, objective=Contrast(3, 5), correction="full")
    """

    a: Target
    b: Target

    def __call__(self, output: Tensor) -> Tensor:
        return select_target(output, self.a) - select_target(output, self.b)


@dataclass(frozen=True)
class Ratio:
    """``logit_a / logit_b``."""

    a: Target
    b: Target

    def __call__(self, output: Tensor) -> Tensor:
        return select_target(output, self.a) / select_target(output, self.b)


@dataclass(frozen=True)
class RelativeContrast:
    """``(logit_a − logit_b) / logit_b``."""

    a: Target
    b: Target

    def __call__(self, output: Tensor) -> Tensor:
        b = select_target(output, self.b)
        return (select_target(output, self.a) - b) / b


def resolve_objective(target: Target, objective: Objective | None) -> Objective:
    """The objective to differentiate: ``objective`` if given, else Captum's ``target``."""
    if objective is None:
        return TargetObjective(target)
    if target is not None:
        raise ValueError("give either target or objective, not both")
    if not callable(objective):
        raise TypeError(f"objective must be callable, got {type(objective).__name__}")
    return objective


def evaluate_objective(objective: Objective, output: Any) -> Tensor:
    """Apply ``objective`` and check that it gives one finite-typed score per example."""
    output = check_output(output)
    scores = objective(output)
    if not isinstance(scores, Tensor) or scores.shape != (output.shape[0],):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"the objective must return one score per example, shape ({output.shape[0]},); "
            f"got {shape}"
        )
    if not scores.requires_grad:
        raise ValueError(
            "the objective does not depend on the model's attention (its score has no gradient); "
            "check forward_func and the objective"
        )
    return scores
