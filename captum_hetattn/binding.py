r"""Match recorded attention calls to the nodes of a layer graph.

The junction between :mod:`captum_hetattn.capture` (what the model ran) and
:mod:`captum_hetattn.graph` (what the explanation expects): every bound node must have been called,
with maps whose sizes agree with its streams. Calls the graph does not list (e.g. a language model
head that the graph leaves out) are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from captum_hetattn.capture import AttentionRecord
from captum_hetattn.graph import BoundNode, LayerGraph


@dataclass(frozen=True)
class BoundCall:
    """A graph node together with the recorded call it describes."""

    node: BoundNode
    record: AttentionRecord


@dataclass(frozen=True)
class BoundRecording:
    """Recorded calls in graph order (parallel groups as tuples) and the size of every stream."""

    steps: tuple[tuple[BoundCall, ...], ...]
    sizes: dict[str, int]


def bind_records(
    graph: LayerGraph, records: Sequence[AttentionRecord], module_names: Iterable[str]
) -> BoundRecording:
    r"""Pair every node of ``graph`` (bound to ``module_names``) with its recorded call.

    Args:
        graph: the layer graph.
        records: :attr:`AttentionRecorder.records` of one forward (and backward) pass.
        module_names: the model's qualified module names (``named_modules()``).

    Returns:
        A :class:`BoundRecording`.

    Raises:
        ValueError: a node that matches no module, a node whose module was never called (or not
            as often as its ``call_index`` says), a self node recorded as cross-attention or the
            reverse, or map sizes that disagree with a stream's size — naming node and module.
    """
    by_call = {(record.name, record.call_index): record for record in records}
    calls_per_module: dict[str, int] = {}
    for record in records:
        calls_per_module[record.name] = calls_per_module.get(record.name, 0) + 1
    sizes: dict[str, int] = {}
    size_origin: dict[str, str] = {}
    steps: list[tuple[BoundCall, ...]] = []
    for step in graph.bind(module_names):
        group = []
        for node in step:
            record = by_call.get((node.name, node.call_index or 0))
            if record is None:
                ran = calls_per_module.get(node.name, 0)
                raise ValueError(
                    f"{node.label} was never called in the recorded forward pass"
                    + (f" (it ran {ran} time(s))" if ran else "")
                    + "; check the graph against the model and the inputs"
                )
            if record.role != ("cross" if node.is_cross else "self"):
                raise ValueError(
                    f"{node.label} is a {'cross' if node.is_cross else 'self'}-attention node "
                    f"but the recorded call is {record.role}-attention"
                )
            for stream, size in ((node.query, record.n_query), (node.key, record.n_key)):
                if stream not in sizes:
                    sizes[stream], size_origin[stream] = size, node.label
                elif sizes[stream] != size:
                    raise ValueError(
                        f"{node.label} sees {size} tokens in stream '{stream}', but "
                        f"{size_origin[stream]} saw {sizes[stream]}"
                    )
            group.append(BoundCall(node, record))
        steps.append(tuple(group))
    return BoundRecording(steps=tuple(steps), sizes=sizes)
