r"""Stream and source naming, and the checks that streams and calls agree.

- **towers**: a module path before its layer index (:func:`tower_of`), per stream the tower of
  the calls that write it (:func:`stream_towers`); layer patterns (:func:`layer_pattern`);
- **stream names**: the graph's names, checked against the data flow (a graph that puts two
  token sequences in one stream, or one in two, is an error naming the module); streams the graph
  does not name get names from their module paths and inputs (:func:`name_streams`);
- **sources**: the input modalities, as columns of the streams, named (:func:`name_sources`);
- **sizes**: every call sees as many tokens in a stream as the stream has (:func:`check_sizes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import Tensor

from captum_hetattn.binding.dataflow import DataFlow, FlowStream
from captum_hetattn.capture import AttentionRecord
from captum_hetattn.graph.nodes import BoundNode

_LAYER_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def layer_pattern(name: str) -> str:
    """``encoder.block.3.layer.0.SelfAttention`` → ``encoder.block.*.layer.0.SelfAttention``."""
    return _LAYER_INDEX.sub(".*", name, count=1)


def tower_of(name: str) -> str:
    """The path before the layer index (the whole name for a module outside a layer list)."""
    match = _LAYER_INDEX.search(name)
    return name[: match.start()] if match else name



def stream_towers(records: Sequence[AttentionRecord], flow: DataFlow) -> dict[int, str]:
    r"""Per data-flow stream, the tower of the calls whose queries it holds (the last one's, for
    a stream several towers write): the module paths :func:`name_streams` reads keywords from.

    Args:
        records: the recorded calls, in call order.
        flow: their :func:`~captum_hetattn.binding.dataflow.analyse` result.

    Returns:
        Stream index → tower (streams no call queries are left out).
    """
    return {c.query: tower_of(records[i].name) for i, c in enumerate(flow.calls)}


@dataclass(frozen=True)
class BoundSource:
    """An input modality: ``columns`` of ``stream``, fed by model inputs ``inputs``; ``parts``
    lists every ``(stream, columns)`` that holds it (several streams built from one input)."""

    name: str
    stream: str
    columns: Tensor
    inputs: tuple[int, ...]
    parts: tuple[tuple[str, Tensor], ...] = ()


# --------------------------------------------------------------------------- stream names
def graph_stream_names(
    bound: Sequence[tuple[int, BoundNode]],
    records: Sequence[AttentionRecord],
    flow: DataFlow | None,
) -> dict[int, str]:
    """Data-flow stream index → the graph's name for it, checked against the data flow (the
    streams the graph does not name are named by :func:`name_streams`)."""
    if flow is None:
        return {}
    names: dict[int, str] = {}
    origin: dict[str, str] = {}
    for index, node in bound:
        call = flow.calls[index]
        for side, stream, name in (("query", call.query, node.query), ("key", call.key, node.key)):
            where = f"module '{records[index].name}' [call {records[index].call_index}]"
            if stream in names and names[stream] != name:
                raise ValueError(
                    f"the graph puts the {side} tokens of {where} in stream '{name}', but they "
                    f"are the tokens of stream '{names[stream]}' ({origin[names[stream]]})"
                )
            owner = next((s for s, n in names.items() if n == name), None)
            if owner is not None and owner != stream:
                raise ValueError(
                    f"the graph's stream '{name}' holds two different token sequences: the "
                    f"{side} tokens of {where} and those of {origin[name]}; give them two streams"
                )
            names[stream] = name
            origin.setdefault(name, where)
    return names



def _keyword_table() -> list[tuple[re.Pattern[str], str]]:
    table = resources.files("captum_hetattn.graph.presets").joinpath("stream_keywords.json")
    text = table.read_text()
    return [(re.compile(pattern), name) for pattern, name in json.loads(text)["keywords"]]


def _input_kind(tensor: Any) -> str | None:
    if not isinstance(tensor, Tensor):
        return None
    if not tensor.is_floating_point():
        return "text"
    if tensor.dim() >= 4:
        return "image"
    if tensor.dim() == 2:
        return "audio"  # a waveform (B, samples)
    return None


_GENERIC_NAMES = frozenset({"source", "target"})


def name_streams(
    flow: DataFlow, known: Mapping[int, str], inputs: Sequence[Any], towers: Mapping[int, str]
) -> dict[int, str]:
    r"""Names for the streams ``known`` leaves unnamed: the first keyword of
    ``stream_keywords.json`` that matches the stream's module paths (``source`` / ``target``,
    the generic encoder / decoder words, only after ``image`` for a stream fed by an image),
    else the kind of the input that feeds it (ids → ``text``, images → ``image``), ``joint`` for
    a stream fed by two inputs, else ``stream<i>``; a junction-only stream is
    ``<origin>_tokens``."""
    names = dict(known)
    taken = set(names.values())
    keywords = _keyword_table()
    for stream in flow.streams:
        if stream.index in names or (stream.fresh is not None and not stream.fresh.any()
                                     and not stream.calls):
            continue
        path = towers.get(stream.index, stream.tower)
        matched = [name for pattern, name in keywords if pattern.search(path)]
        sources = [s for s in flow.sources if s.stream == stream.index]
        kinds = sorted({_input_kind(inputs[p]) for source in sources for p in source.inputs
                        if 0 <= p < len(inputs)} - {None})
        # an image or audio input names its stream before the generic encoder/decoder words
        candidates = [n for n in matched if n not in _GENERIC_NAMES]
        candidates += [k for k in kinds if k != "text"]
        candidates += [n for n in matched if n in _GENERIC_NAMES]
        if len(sources) > 1:
            candidates.append("joint")
        candidates += kinds
        origin = _only_origin(flow, stream)
        if origin in names and not sources and all(c in _GENERIC_NAMES for c in candidates):
            # a later stage of one stream (Swin's merged patches): named after the first
            candidates = [_stage_name(names[origin], taken)]
        name = next((c for c in candidates if c not in taken), None)
        if (name is None or name in _GENERIC_NAMES) and not sources:
            # a copy of a stream, or two streams added (BridgeTower's link towers): a stage
            # of the first origin already named
            first = next((names[j.origin] for j in flow.junctions
                          if j.into == stream.index and j.origin in names), None)
            name = _stage_name(first, taken) if first is not None else name
        name = name or f"stream{stream.index}"
        names[stream.index] = name
        taken.add(name)
    for stream in flow.streams:
        if stream.index not in names:
            junction = next((j for j in flow.junctions if j.into == stream.index), None)
            base = names.get(junction.origin, "stream") if junction else "stream"
            name = f"{base}_tokens"
            while name in taken:
                name += "_"
            names[stream.index] = name
            taken.add(name)
    return names


def _only_origin(flow: DataFlow, stream: FlowStream) -> int | None:
    """The one stream all of a stream's rows come from through junctions, if so."""
    if stream.fresh is None or bool(stream.fresh.any()):
        return None
    origins = {j.origin for j in flow.junctions if j.into == stream.index}
    return origins.pop() if len(origins) == 1 else None


def _stage_name(base: str, taken: set[str]) -> str:
    stem = re.sub(r"_\d+$", "", base)
    number = 2
    while f"{stem}_{number}" in taken:
        number += 1
    return f"{stem}_{number}"



# --------------------------------------------------------------------------- sources
def name_sources(
    flow: DataFlow, names: Mapping[int, str], inputs: Sequence[Any]
) -> dict[str, BoundSource]:
    """One source per stream named like the stream; split streams name theirs by input kind.

    Streams built from the same inputs (BridgeTower's text tower and its cross-modal copy, both
    from the ids) hold one source: its relevance is the sum over those streams.
    """
    out: dict[str, BoundSource] = {}
    taken = set(names.values())
    by_stream: dict[int, list[Any]] = {}
    for source in flow.sources:
        by_stream.setdefault(source.stream, []).append(source)
    by_inputs: dict[tuple[int, ...], str] = {}
    for stream, group in by_stream.items():
        for k, source in enumerate(group):
            same = by_inputs.get(source.inputs) if source.inputs != (-1,) else None
            if same is not None and len(out[same].columns) == len(source.columns):
                first = out[same]
                out[same] = BoundSource(first.name, first.stream, first.columns, first.inputs,
                                        (*first.parts, (names[stream], source.columns)))
                continue
            if len(group) == 1:
                name = names[stream]
            else:
                kinds = [_input_kind(inputs[p]) for p in source.inputs if 0 <= p < len(inputs)]
                kind = next((k for k in kinds if k), None)
                free = {kind, "image"} - (taken - {names[stream]}) - set(out)
                if kind and kind in free:
                    name = kind
                elif "image" in free and any(p >= 0 for p in source.inputs):
                    name = "image"
                else:
                    name = f"{names[stream]}_{k}"
            out[name] = BoundSource(name, names[stream], source.columns, source.inputs,
                                    ((names[stream], source.columns),))
            by_inputs.setdefault(source.inputs, name)
    return out


def graph_sources(sizes: Mapping[str, int]) -> dict[str, BoundSource]:
    """Without a data flow: one source per stream, named like it, over all its columns."""
    return {s: BoundSource(s, s, torch.arange(n), (), ((s, torch.arange(n)),))
            for s, n in sizes.items()}


# --------------------------------------------------------------------------- sizes
def check_sizes(
    records: Sequence[AttentionRecord],
    bound: Sequence[tuple[int, BoundNode]],
    streams_of: Callable[[int, BoundNode], tuple[str, str]],
    sizes: dict[str, int],
) -> None:
    r"""Every bound call sees as many query and key tokens as its streams have.

    Args:
        records: the recorded calls, in call order.
        bound: ``(record index, node)`` of the calls a node describes, in call order.
        streams_of: the ``(query, key)`` stream names of a bound call.
        sizes: stream name → size (the data flow's); a stream not in it takes the size of the
            first call that sees it (added to ``sizes``).

    Raises:
        ValueError: a call whose map disagrees with a stream's size, naming the node, module
            and stream.
    """
    seen_by: dict[str, str] = {}  # streams sized here: the node that sized them
    for index, node in bound:
        record = records[index]
        for stream, size in zip(streams_of(index, node), (record.n_query, record.n_key),
                                strict=True):
            if stream not in sizes:
                sizes[stream], seen_by[stream] = size, node.label
            elif sizes[stream] != size and stream in seen_by:
                raise ValueError(
                    f"{node.label} sees {size} tokens in stream '{stream}', but "
                    f"{seen_by[stream]} saw {sizes[stream]}"
                )
            elif sizes[stream] != size:
                raise ValueError(
                    f"{node.label}: module '{record.name}' sees {size} tokens in stream "
                    f"'{stream}', which has {sizes[stream]}"
                )
