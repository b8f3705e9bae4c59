r"""A junction's token map must fit the streams it joins, checked when it is bound: a misfit
found later, in the propagation, could name only the streams, not the module at fault."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from captum_hetattn.binding.flowdata import DataFlow
from captum_hetattn.capture import AttentionRecord
from captum_hetattn.rules import TokenMap


def _call(records: Sequence[AttentionRecord], index: int | None) -> str:
    if index is None or not 0 <= index < len(records):
        return "no attention call"
    record = records[index]
    return f"attention module '{record.name}' [call {record.call_index}]"


def check_junction_sizes(
    junctions_before: Mapping[int, Sequence[TokenMap]],
    sizes: Mapping[str, int],
    records: Sequence[AttentionRecord],
    flow: DataFlow,
    names: Mapping[int, str],
) -> None:
    r"""Every junction maps as many tokens as its streams have.

    Args:
        junctions_before: record index → the junctions applied right before that call.
        sizes: stream name → number of tokens.
        records: the recorded calls, in call order.
        flow: the data flow (the origin stream's calls).
        names: stream index → name.

    Raises:
        ValueError: naming the junction, the call it comes before and the origin stream's
            last call before it (where the tokens it maps were made).
    """
    index_of = {name: i for i, name in names.items()}
    for before, maps in junctions_before.items():
        for step in maps:
            expected = (sizes.get(step.into), sizes.get(step.origin))
            shape = tuple(step.weights.shape)
            if step.weights.dim() == 3 and shape[1:] == expected:
                continue
            origin = index_of.get(step.origin)
            made = [c for c in flow.streams[origin].calls if c < before] if origin is not None \
                else []
            raise ValueError(
                f"{step.name}, before {_call(records, before)}, maps tokens of shape {shape}, "
                f"but stream '{step.into}' has {expected[0]} tokens and stream '{step.origin}' "
                f"{expected[1]} (as {_call(records, max(made) if made else None)} sees them): "
                "the streams are not token sequences the junction joins (a stack of states per "
                "token, such as attention over depth, counted as tokens?)"
            )
