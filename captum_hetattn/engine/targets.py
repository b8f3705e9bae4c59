r"""Targets: one score function per target (``target`` / ``objective``, or each entry of
``targets`` explained from one forward), :func:`generation_targets` for a ``generate()``
output, and the stacking of one explanation per target into one with a target dimension."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from captum_hetattn.engine.checks import check_call
from captum_hetattn.engine.readout import is_int
from captum_hetattn.engine.report import Report
from captum_hetattn.engine.result import Explanation
from captum_hetattn.objectives import Objective, Target, evaluate_objective, resolve_objective

Score = Callable[[Any], Tensor]


def plain_indices(value: Any) -> Any:
    """NumPy integer scalars (``np.int64(3)``, what ``array.argmax()`` gives) as Python ints,
    inside tuples and lists too, so that a target or readout index from NumPy is taken like
    an int; everything else unchanged (and checked as given)."""
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "dtype") and getattr(
            value, "ndim", None) == 0 and value.dtype.kind in "iu":
        return int(value)
    if isinstance(value, tuple):
        return tuple(plain_indices(v) for v in value)
    if isinstance(value, list):
        return [plain_indices(v) for v in value]
    return value


def score_functions(model: nn.Module, report: Report, inputs: tuple[Tensor, ...],
                    target: Target, objective: Objective | None, readout: Any, targets: Any
                    ) -> list[Score]:
    r"""One score function, or one per entry of ``targets``, each checked with the call.

    Args:
        model: the module explained (checked too).
        report: where the warnings go.
        inputs: the formatted inputs.
        target, objective, readout, targets: the call's arguments.
    """
    if targets is None:
        check_call(model, report, inputs, target, objective, readout)
        return [resolve_objective(target, objective)]
    if target is not None or objective is not None:
        raise ValueError("give targets=[...] or target / objective, not both")
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or (
            isinstance(targets, tuple) and targets and is_int(targets[0])):
        raise TypeError(
            "targets must be a list of targets (each an int, a tuple such as (position, "
            f"token), a tensor or a per-example list), got {targets!r}")
    if not targets:
        raise ValueError("targets is empty: give at least one target")
    out = []
    for index, each in enumerate(targets):
        if each is None:
            raise ValueError(f"targets[{index}] is None")
        try:
            check_call(model, report, inputs, each, None, readout)
        except (ValueError, TypeError) as err:
            raise type(err)(f"targets[{index}]: {err}") from err
        out.append(resolve_objective(each, None))
    return out


def score(score_fn: Callable[[Any], Tensor], output: Any, index: int | None) -> Tensor:
    """The objective on the output; an error names the entry of ``targets`` at fault."""
    if index is None:
        return evaluate_objective(score_fn, output)
    try:
        return evaluate_objective(score_fn, output)
    except (ValueError, TypeError, IndexError) as err:
        raise type(err)(f"targets[{index}]: {err}") from err


def stack_targets(explanations: list[Explanation]) -> Explanation:
    """One explanation per target → one with a target dimension after the batch."""
    first = explanations[0]

    def stack(field_name: str) -> dict[str, Tensor]:
        return {key: torch.stack([getattr(e, field_name)[key] for e in explanations], 1)
                for key in getattr(first, field_name)}

    return replace(first, relevance=stack("relevance"), readout=stack("readout"),
                   stream_relevance=stack("stream_relevance"), own=stack("own"),
                   readout_token=torch.stack([e.readout_token for e in explanations], 1))


def split_targets(explanation: Explanation) -> list[Explanation]:
    """The inverse of :func:`stack_targets`: one explanation per target."""
    count = explanation.readout_token.shape[1]

    def pick(values: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
        return {key: value[:, k] for key, value in values.items()}

    return [replace(explanation, relevance=pick(explanation.relevance, k),
                    readout=pick(explanation.readout, k),
                    stream_relevance=pick(explanation.stream_relevance, k),
                    own=pick(explanation.own, k),
                    readout_token=explanation.readout_token[:, k]) for k in range(count)]


def generation_targets(generated: Tensor, start: int, *, shift: int = 1) -> list[list[tuple]]:
    r"""Targets that explain every generated token of a ``generate()`` output, for
    ``targets=...``: ``K = n − start`` targets, target ``k`` being, for every example ``b``,
    ``(start + k − shift, generated[b, start + k])`` — the logits row that predicted that
    token (``shift=1`` for decoder-only and seq2seq models run on the output itself as
    decoder input; ``shift=0`` where row ``i`` predicts token ``i``).

    Args:
        generated: ``(B, n)`` token ids, such as ``model.generate(...)`` returns.
        start: the first position to explain (the prompt's length for a decoder-only model,
            1 after a seq2seq decoder's start token).
        shift: how far the logits row lies before the token it predicts.

    Returns:
        A list of ``K`` per-example target lists.

    Examples::

        >>> out = model.generate(input_ids, max_new_tokens=8)
        >>> targets = generation_targets(out, start=input_ids.shape[1])
        >>> explanation = explainer.explain(out, targets=targets)  # (B, K, n) relevance
    """
    if not isinstance(generated, Tensor) or generated.dim() != 2:
        raise TypeError("generated must be a (batch, length) tensor of token ids")
    if not 0 <= start - shift < generated.shape[1] or start >= generated.shape[1]:
        raise ValueError(
            f"start={start} (shift={shift}) leaves no generated token to explain in "
            f"{generated.shape[1]} positions")
    return [[(position - shift, int(token)) for token in generated[:, position].tolist()]
            for position in range(start, generated.shape[1])]
