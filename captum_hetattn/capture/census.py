r"""Why attention modules left no record: the answer a recording gives when nothing (or not
everything) was recorded, module by module, for the error that names them."""

from __future__ import annotations

from collections.abc import Sequence

from captum_hetattn.capture.record import AttentionRecord
from captum_hetattn.capture.session import Session

__all__ = ["census"]


def census(session: Session, records: Sequence[AttentionRecord],
           skipped: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    r"""Why the model's attention modules left no record, after the forward.

    Args:
        session: the running recording (its plan and the modules that ran).
        records: the records made so far.
        skipped: ``(module name, reason)`` of softmaxes that were not recorded.

    Returns:
        ``(name, reason)`` per attention module of the plan that left no record, and the class
        names of calls recorded from modules outside the model (a forward that ran another
        model).
    """
    plan, skipped_by_name = session.plan, dict(skipped)
    recorded = {r.name for r in records}
    reasons = []
    answered = recorded | set(skipped_by_name)
    for key, module in plan.tracked.items():
        name = plan.names.get(key, type(module).__name__)
        if name in recorded or (plan.listed is not None and key in plan.listed and key
                                not in plan.interface | plan.softmax | plan.mha):
            continue
        if any(other.startswith(name + ".") for other in answered):
            continue  # a wrapper (BertAttention): the module inside it says why
        if key not in session.ran:
            reason = "it did not run in forward_func"
        elif name in skipped_by_name:
            reason = skipped_by_name[name]
        elif key in plan.interface:
            reason = "it ran but called no attention function of transformers' interface"
        elif key in plan.mha:
            reason = "it ran but returned no attention weights"
        else:
            reason = ("it ran but computed no softmax while it ran (a fused kernel, or the "
                      "softmax computed elsewhere)")
        reasons.append((name, reason))
    known = set(plan.names.values())
    foreign = list(dict.fromkeys(r.name for r in records if r.name not in known))
    return reasons, foreign
