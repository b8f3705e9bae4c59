r"""Trace one recorded forward: lay out its calls over their tokens, then read its data flow.

:func:`trace` is the first step of binding: :func:`~captum_hetattn.binding.layouts.canonicalise`
folds every call that is not one dense map over its hidden states (windows, packed towers, banded
maps), then :func:`~captum_hetattn.binding.dataflow.analyse` finds the streams, junctions and
sources of the forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from captum_hetattn.binding.dataflow import DataFlow, analyse
from captum_hetattn.binding.layout_cache import LayoutCache
from captum_hetattn.binding.layouts import canonical_batch, canonicalise
from captum_hetattn.binding.lifts import with_lifts
from captum_hetattn.binding.probe_budget import guarded
from captum_hetattn.binding.streams import tower_of
from captum_hetattn.capture import AttentionRecorder

__all__ = ["trace"]


def trace(
    recorder: AttentionRecorder,
    inputs: Sequence[Any],
    map_inputs: bool = False,
    batch: int | None = None,
    layouts: LayoutCache | None = None,
) -> DataFlow:
    r"""The data flow of the forward just recorded by ``recorder`` (``record_io=True``), called
    inside its context.

    Args:
        recorder: the recorder of the forward, still inside its context.
        inputs: the model inputs by position (float ones traced).
        map_inputs: see :func:`~captum_hetattn.binding.dataflow.analyse`.
        batch: the number of examples (default: the batch of the first batched input).
        layouts: the explainer's cache of token layouts (``None``: every call probed).

    Returns:
        The :class:`~captum_hetattn.binding.dataflow.DataFlow`, with ``left_out`` the
        ``(module, reason)`` of softmaxes that are not attention over tokens.

    Raises:
        ValueError: nothing over the model's tokens could be recorded.
    """
    batch = batch if batch is not None else canonical_batch(inputs)
    with recorder.muted():
        left_out = canonicalise(recorder, batch, inputs, layouts) if batch is not None else []
        records = recorder.records
        if not records and (left_out or recorder.skipped):
            reasons: dict[str, list[str]] = {}  # every module named, once per reason
            for name, why in [(r.name, why) for r, why in left_out] + list(recorder.skipped):
                if name not in reasons.setdefault(why, []):
                    reasons[why].append(name)
            raise ValueError(
                "no attention map over the model's tokens could be recorded, so there is "
                "nothing to propagate: " + "; ".join(
                    ", ".join(f"'{n}'" for n in names[:8])
                    + (f" and {len(names) - 8} more" if len(names) > 8 else "") + f": {why}"
                    for why, names in reasons.items())
            )
        repeated: list[tuple[int, str]] = []
        flow = analyse(
            records, list(inputs), recorder.embeddings, [tower_of(r.name) for r in records],
            map_inputs=map_inputs, batch=batch,
            dependence=guarded(with_lifts(
                layouts.dependences(batch, inputs) if layouts is not None else None,
                recorder.lifts, repeated), [r.name for r in records]),
            lifts=recorder.lifts,
        )
    flow.left_out = [(record.name, reason) for record, reason in left_out]
    flow.left_out += recorder.skipped
    flow.repeated = repeated
    return flow
