r"""A check on the assembled explanation: an example that every source explains with zeros.

An explanation whose every source is all zero for one example says nothing about it, while a
user reads "nothing mattered": a score that does not depend on that example's attention, calls
left out of the explanation, or the read tokens' own share kept apart. It is warned about by
example and source, never returned silently.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from captum_hetattn.engine.report import Report


def zero_examples(relevance: Mapping[str, Tensor]) -> list[int]:
    """The examples whose relevance is exactly zero in every source (none without sources)."""
    zero = None
    for value in relevance.values():
        if value.dim() == 0:
            continue
        none = (value.detach().reshape(value.shape[0], -1) == 0).all(1)
        zero = none if zero is None else zero & none
    return [] if zero is None else zero.nonzero().flatten().tolist()


def warn_zero_examples(relevance: Mapping[str, Tensor], report: Report,
                       include_own: bool) -> None:
    r"""Warns, naming the example(s) and the sources, where every source is all zero for an
    example (for each example of the batch, or only for some).

    Args:
        relevance: per source, the ``(B, ...)`` relevance of the explanation.
        report: where the warning goes (once per explainer and example).
        include_own: whether the read tokens' own share is in the relevance.
    """
    examples = zero_examples(relevance)
    if not examples:
        return
    batch = next(iter(relevance.values())).shape[0]
    which = f"example(s) {examples}" + (" (every example)" if len(examples) == batch else "")
    report.warn_each("zero-example", [str(e) for e in examples], lambda new: (
        f"the explanation of {which} is exactly zero in every source ({sorted(relevance)}): "
        "it says nothing about them, not that nothing mattered: their score may not depend on "
        "the attention (a constant or saturated score), the calls that would carry relevance "
        "may be missing from the explanation (see the warnings above), their maps' gradient "
        "may be (nearly) zero, which the gradient correction counts as zero (correction='none' "
        "keeps the maps)"
        + ("" if include_own else
           ", or the read tokens attend only to themselves (include_own=True shows their own "
           "share)")
    ))
