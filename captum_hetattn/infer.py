r"""Infer a :class:`~captum_hetattn.graph.LayerGraph` from one recorded forward pass.

What is inferred, from the attention calls the :class:`~captum_hetattn.capture.AttentionRecorder`
sees, in call order:

- **nodes**: one per module pattern (the first numeric path segment, the layer index, becomes
  ``*``); a module that runs several times per forward gets one node per ``call_index``;
- **streams**: a call's query side continues the most recent stream with the same token count —
  unless that stream is the key side of a cross call of the same tower with that token count (a
  decoder whose length happens to equal its encoder's). Key sides that no earlier call produced
  (DETR-less Q-Former inputs, Perceiver inputs) are streams of their own. Unrelated towers that
  happen to have equal token counts are merged: pin them with ``streams={"tower.prefix": name}``;
- **parallel groups**: consecutive cross calls of one layer with swapped streams (LXMERT-style
  co-attention, both computed from the layer's inputs);
- **types** A/B/C: from the order, as :class:`LayerGraph` does for any graph;
- **readout**: the query stream of the last call whose map gets gradient from the model's
  ``logits`` (else its pooled output, else its first output; LXMERT's last vision layer does not
  reach its answer head); token ``"last"`` if that stream's self-attention is causal (upper
  triangle exactly zero), else ``0``. A model that does not return the output you explain
  (BLIP's VQA head returns no answer logits without labels) gets the readout of what it returns.

Stream names: those of the matching preset when one exists (a conflict — one inferred stream
matching two preset streams — is an error, so inference is still checked against the preset),
else the first match in ``stream_keywords.json`` on the stream's module paths, else ``stream<i>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from torch import nn

from captum_hetattn.capture import AttentionRecord, AttentionRecorder
from captum_hetattn.graph import AttentionNode, LayerGraph, _match_pattern
from captum_hetattn.presets import find_preset

_LAYER_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def layer_pattern(name: str) -> str:
    """``encoder.block.3.layer.0.SelfAttention`` → ``encoder.block.*.layer.0.SelfAttention``."""
    return _LAYER_INDEX.sub(".*", name, count=1)


def tower_of(name: str) -> str:
    """The path before the layer index (the whole name for a module outside a layer list)."""
    match = _LAYER_INDEX.search(name)
    return name[: match.start()] if match else name


@dataclass
class _Stream:
    length: int
    towers: list[str] = field(default_factory=list)
    name: str | None = None


@dataclass
class _Call:
    record: AttentionRecord
    pattern: str
    call_index: int | None
    query: _Stream
    key: _Stream


def _keyword_table() -> list[tuple[re.Pattern[str], str]]:
    text = resources.files("captum_hetattn.presets").joinpath("stream_keywords.json").read_text()
    return [(re.compile(pattern), name) for pattern, name in json.loads(text)["keywords"]]


def _assign_streams(
    records: list[AttentionRecord], pinned: Mapping[str, str]
) -> list[_Call]:
    streams: list[_Stream] = []
    by_tower: dict[tuple[str, int], _Stream] = {}
    pinned_streams: dict[str, _Stream] = {}
    # per tower, the (query, key) lengths of its cross calls, to keep a decoder apart from an
    # encoder of the same length
    self_keyed: set[tuple[str, int]] = {
        (tower_of(r.name), r.n_query)
        for r in records
        if r.role == "cross" and r.n_query == r.n_key
    }

    def stream_for(tower: str, length: int, avoid: _Stream | None) -> _Stream:
        pin = next((name for prefix, name in pinned.items() if tower.startswith(prefix)), None)
        if pin is not None:
            stream = pinned_streams.setdefault(pin, _Stream(length, name=pin))
        elif (tower, length) in by_tower:
            stream = by_tower[(tower, length)]
        else:
            candidates = [s for s in streams if s.length == length and s is not avoid]
            if (tower, length) in self_keyed:
                candidates = []
            stream = candidates[-1] if candidates else _Stream(length)
        if stream not in streams:
            streams.append(stream)
        if tower not in stream.towers:
            stream.towers.append(tower)
        by_tower[(tower, length)] = stream
        return stream

    counts: dict[str, int] = {}
    for record in records:
        counts[record.name] = counts.get(record.name, 0) + 1
    calls: list[_Call] = []
    for record in records:
        tower = tower_of(record.name)
        if record.role == "cross":
            # the key side: the latest stream of that length other than the query's own
            query = by_tower.get((tower, record.n_query))
            key_candidates = [s for s in streams if s.length == record.n_key and s is not query]
            key = key_candidates[-1] if key_candidates else None
            if key is None:
                key = _Stream(record.n_key, towers=[f"{tower}<keys>"])
                streams.append(key)
            if query is None:
                query = stream_for(tower, record.n_query, avoid=key)
        else:
            query = key = stream_for(tower, record.n_query, avoid=None)
        repeated = counts[record.name] > 1
        calls.append(
            _Call(
                record=record,
                pattern=layer_pattern(record.name),
                call_index=record.call_index if repeated else None,
                query=query,
                key=key,
            )
        )
    return calls


def _name_streams(calls: list[_Call], preset: LayerGraph | None) -> None:
    streams: list[_Stream] = []
    for call in calls:
        for stream in (call.query, call.key):
            if stream not in streams:
                streams.append(stream)
    if preset is not None:
        names = [call.record.name for call in calls]
        for node in preset.nodes:
            matched = set(_match_pattern(node.module, names).values())
            for call in calls:
                if call.record.name not in matched:
                    continue
                if node.call_index is not None and call.record.call_index != node.call_index:
                    continue
                for stream, name in ((call.query, node.query), (call.key, node.key)):
                    if stream.name is not None and stream.name != name:
                        raise ValueError(
                            f"infer_graph: call '{call.record.name}' [call "
                            f"{call.record.call_index}] puts streams '{stream.name}' and '{name}' "
                            "of the preset together; pin them with streams={tower: name}"
                        )
                    stream.name = name
    keywords = _keyword_table()
    taken = {s.name for s in streams if s.name}
    for i, stream in enumerate(streams):
        if stream.name:
            continue
        path = " ".join(stream.towers)
        name = next((name for pattern, name in keywords if pattern.search(path)), None)
        if name is None or name in taken:
            name = f"stream{i}"
        stream.name = name
        taken.add(name)


def _is_causal(record: AttentionRecord) -> bool:
    attention = record.attention
    if attention is None or attention.shape[-1] != attention.shape[-2] or attention.shape[-1] < 2:
        return False
    upper = torch.triu(torch.ones_like(attention[0, 0], dtype=torch.bool), diagonal=1)
    return bool((attention[..., upper] == 0).all())


def graph_from_records(
    records: list[AttentionRecord],
    *,
    preset: LayerGraph | None = None,
    streams: Mapping[str, str] | None = None,
    name: str = "inferred",
) -> LayerGraph:
    r"""Build a :class:`LayerGraph` from recorded attention calls (see the module docstring).

    Args:
        records: :attr:`AttentionRecorder.records` of one forward pass.
        preset: a graph whose stream names to reuse (checked for consistency).
        streams: pin towers to streams: ``{"module.path.prefix": "stream name"}``.
        name: the graph's name.
    """
    if not records:
        raise ValueError("infer_graph: the forward pass recorded no attention call")
    calls = _assign_streams(records, streams or {})
    _name_streams(calls, preset)

    steps: list[Any] = []
    seen: set[tuple[str, int | None]] = set()
    for i, call in enumerate(calls):
        identity = (call.pattern, call.call_index)
        if identity in seen:
            continue
        seen.add(identity)
        node = AttentionNode(
            call.pattern, query=call.query.name, key=call.key.name, call_index=call.call_index
        )
        previous = calls[i - 1] if i else None
        co_attention = (
            previous is not None
            and previous.record.role == "cross"
            and call.record.role == "cross"
            and tower_of(previous.record.name) == tower_of(call.record.name)
            and previous.query is call.key
            and previous.key is call.query
        )
        if co_attention and isinstance(steps[-1], AttentionNode):
            steps[-1] = (steps[-1], node)
        else:
            steps.append(node)

    # the readout stream is where the output reads from: the last call whose map got gradient
    with_gradient = [
        c for c in calls if c.record.gradient is not None and bool(c.record.gradient.any())
    ]
    readout_call = (with_gradient or calls)[-1]
    self_calls = [c.record for c in calls if c.query is readout_call.query and c.key is c.query]
    causal = bool(self_calls) and all(_is_causal(r) for r in self_calls)
    return LayerGraph(
        streams=list(dict.fromkeys(s.name for c in calls for s in (c.key, c.query))),
        steps=steps,
        readout_stream=readout_call.query.name,
        readout_token="last" if causal else 0,
        name=name,
    )


def _output_score(output: Any) -> torch.Tensor:
    """What the readout search differentiates: the model's ``logits``, else its pooled output,
    else its first output (a tensor, a tuple or a ``ModelOutput``)."""
    if isinstance(output, torch.Tensor):
        return output.float().sum()
    for name in ("logits", "pooler_output", "pooled_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value.float().sum()
    first = output[0]
    if not isinstance(first, torch.Tensor) or not first.is_floating_point():
        raise TypeError(
            f"infer_graph: the model's first output is not a float tensor ({type(output).__name__})"
        )
    return first.float().sum()


def infer_graph(
    model: nn.Module,
    *example_inputs: Any,
    streams: Mapping[str, str] | None = None,
    **example_kwargs: Any,
) -> LayerGraph:
    r"""Infer the layer graph of ``model`` from one recorded forward and backward pass.

    The backward (of the model's logits, pooled or first output; parameters untouched) only
    serves to find the readout stream.

    Args:
        model: any model whose attention :class:`AttentionRecorder` can capture.
        *example_inputs: positional inputs for one forward call.
        streams: optional ``{"module.path.prefix": "stream name"}`` to pin towers to streams
            (needed only when two unrelated towers have the same number of tokens).
        **example_kwargs: keyword inputs for the forward call.

    Returns:
        The inferred :class:`LayerGraph`; for the preset families it equals ``graph_for(model)``.

    Examples::

        >>> graph = infer_graph(model, input_ids=input_ids)
        >>> print(graph.to_json(indent=1))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"infer_graph needs an nn.Module, got {type(model).__name__}")
    with AttentionRecorder(model) as recorder:
        output = model(*example_inputs, **example_kwargs)
        recorder.compute_gradients(_output_score(output))
    preset = find_preset(model)
    return graph_from_records(
        list(recorder.records),
        preset=preset,
        streams=streams,
        name=preset.name if preset is not None else "inferred",
    )
