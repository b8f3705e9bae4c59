r"""Infer a :class:`~captum_hetattn.graph.LayerGraph` from the data flow of one recorded forward.

:func:`infer_graph` runs the user's ``forward_func`` (the same call ``attribute`` makes) inside an
:class:`~captum_hetattn.capture.AttentionRecorder`, reads where every attention call's query and
key tokens come from (:mod:`~captum_hetattn.binding.dataflow`: the autograd graph, and gradient
probes where tokens change streams), and writes what it found as a graph:

- **nodes**: one per module pattern (the first numeric path segment, the layer index, becomes
  ``*``) and stream pair; a module that runs several times per forward gets one node per
  ``call_index``; calls of one pattern that read different streams get a node per module;
- **streams**: told apart by data flow, not token counts — equal-length towers stay apart,
  interleaved towers keep their streams; named after the preset's streams when a preset
  describes the model (checked against the data flow), else by ``stream_keywords.json`` on their
  module paths, else by the input that feeds them (``text``, ``image``, ``joint``);
- **parallel groups**: a call that reads the stream the previous call wrote, from before that
  write (LXMERT's two cross directions);
- **junctions**: tokens moved between streams without attention (``kind="probe"``: resolved by
  gradient probes on every forward, since placeholder positions change with the input);
- **types** A/B/C: as :class:`LayerGraph` infers them (the concrete type of every call is set at
  binding, in call order);
- **readout**: the streams whose final tokens the output depends on — at explanation time the
  readout weights come from the objective's gradient (see :mod:`~captum_hetattn.attribution`);
  the graph records the main one and ``"last"`` if its self-attention is causal, else ``0``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from captum_hetattn._captum_compat import _format_additional_forward_args
from captum_hetattn.binding.bind import bind_records
from captum_hetattn.binding.dataflow import DataFlow
from captum_hetattn.binding.streams import layer_pattern, name_streams, stream_towers
from captum_hetattn.binding.trace import trace
from captum_hetattn.capture import AttentionRecord, AttentionRecorder
from captum_hetattn.graph.junctions import Junction
from captum_hetattn.graph.layer_graph import LayerGraph, _match_pattern
from captum_hetattn.graph.nodes import AttentionNode
from captum_hetattn.graph.presets import find_preset

__all__ = ["graph_from_flow", "infer_graph", "is_causal"]


#: query rows :func:`is_causal` reads at a time (its temporaries stay a block's, not a map's)
CAUSAL_ROWS = 256


def is_causal(attention: Tensor | None) -> bool:
    """Whether a self-attention map is causal (upper triangle exactly zero; NaN is not)."""
    if attention is None or attention.shape[-1] != attention.shape[-2] or attention.shape[-1] < 2:
        return False
    if bool(attention[..., 0, 1:].any()):  # the first query sees a later key: not causal
        return False
    n = attention.shape[-1]
    for start in range(0, n, CAUSAL_ROWS):
        block = attention[..., start:start + CAUSAL_ROWS, :]
        upper = torch.ones(block.shape[-2:], dtype=torch.bool,
                           device=attention.device).triu(1 + start)
        if bool(block[..., upper].any()):
            return False
    return True


def graph_from_flow(
    records: Sequence[AttentionRecord],
    flow: DataFlow,
    names: Mapping[int, str],
    *,
    readout_stream: int | None = None,
    name: str = "inferred",
    modules: Iterable[str] | None = None,
) -> LayerGraph:
    r"""Write the data flow of one recorded forward as a :class:`LayerGraph`.

    Args:
        records: the recorded calls (in call order).
        flow: their :func:`~captum_hetattn.binding.dataflow.analyse` result.
        names: stream index → name (every stream that a call or junction uses).
        readout_stream: index of the main readout stream (default: the last call's query).
        name: the graph's name.
        modules: the module names the graph will be bound to; a layer pattern that would
            also match a module without a record (a hybrid model's state-space or linear
            layers under the same name, NemotronH's ``layers.*.mixer``) is written module by
            module instead.
    """
    counts: dict[str, int] = {}
    for record in records:
        counts[record.name] = counts.get(record.name, 0) + 1
    streams_of: dict[tuple[str, int | None], set[tuple[str, str]]] = {}
    runs_of: dict[str, set[int]] = {}  # per pattern: how often its modules run
    for record, call in zip(records, flow.calls, strict=True):
        key = (layer_pattern(record.name), record.call_index if counts[record.name] > 1 else None)
        streams_of.setdefault(key, set()).add((names[call.query], names[call.key]))
        runs_of.setdefault(key[0], set()).add(counts[record.name])
    wider = _wider_patterns({p for p, _ in streams_of}, counts, modules)
    steps: list[Any] = []
    seen: set[tuple[str, int | None]] = set()
    for record, call in zip(records, flow.calls, strict=True):
        index = record.call_index if counts[record.name] > 1 else None
        pattern = layer_pattern(record.name)
        if len(streams_of[(pattern, index)]) > 1 or len(runs_of[pattern]) > 1 or (
                pattern in wider):
            # one pattern over several streams, over modules run a different number of
            # times (a recurrent section looped over), or over modules that record nothing:
            # name each module
            pattern = record.name
        if (pattern, index) in seen:
            continue
        seen.add((pattern, index))
        node = AttentionNode(pattern, query=names[call.query], key=names[call.key],
                             call_index=index)
        if call.parallel_with_previous and steps and isinstance(steps[-1], AttentionNode) and (
            steps[-1].module.split("*", 1)[0] == pattern.split("*", 1)[0]
        ):
            steps[-1] = (steps[-1], node)
        else:
            steps.append(node)
    junctions = list(dict.fromkeys(
        Junction(names[j.into], names[j.origin]) for j in flow.junctions
    ))
    used = {s for c in flow.calls for s in (c.query, c.key)} | {
        s for j in flow.junctions for s in (j.into, j.origin)
    }
    readout = flow.calls[-1].query if readout_stream is None else readout_stream
    readout_self = [r for r, c in zip(records, flow.calls, strict=True)
                    if c.query == readout and c.key == readout]
    # one map at a time (a flash record's is rebuilt here: all of them at once would hold
    # every layer's map of a long input), stopping at the first that is not causal
    causal = bool(readout_self) and all(is_causal(_self_map(r)) for r in readout_self)
    return LayerGraph(
        streams=[names[s.index] for s in flow.streams if s.index in used],
        steps=steps,
        readout_stream=names[readout],
        readout_token="last" if causal else 0,
        name=name,
        junctions=junctions,
    )


def _self_map(record: AttentionRecord) -> Tensor | None:
    """A call's map: its recorded one, or a flash record's built now (it arrives in the
    backward)."""
    if record.attention is not None or record.recompute is None:
        return record.attention
    return record.recompute()


def _wider_patterns(patterns: Iterable[str], recorded: Mapping[str, int],
                    modules: Iterable[str] | None) -> set[str]:
    """The layer patterns that match a module of ``modules`` without a record."""
    if modules is None:
        return set()
    names = [n for n in modules if n]
    wider = set()
    for pattern in patterns:
        try:
            found = _match_pattern(pattern, names)
        except ValueError:
            continue
        if any(module not in recorded for module in found.values()):
            wider.add(pattern)
    return wider


def _output_score(output: Any) -> Tensor:
    """What the readout search differentiates: a tensor output, else the model's ``logits``,
    else its pooled output, else its first output."""
    if isinstance(output, Tensor):
        return output.float().sum()
    for attribute in ("logits", "logits_per_image", "pooler_output", "pooled_output"):
        value = getattr(output, attribute, None)
        if isinstance(value, Tensor):
            return value.float().sum()
    first = output[0]
    if not isinstance(first, Tensor) or not first.is_floating_point():
        raise TypeError(
            f"infer_graph: the model's first output is not a float tensor ({type(output).__name__})"
        )
    return first.float().sum()


def _traced(value: Any) -> Any:
    """A float tensor input as a fresh leaf that requires grad, so its tokens can be traced."""
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.detach().requires_grad_(True)
    return value


def _pinned(flow: DataFlow, records: Sequence[AttentionRecord],
            streams: Mapping[str, str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for record, call in zip(records, flow.calls, strict=True):
        for prefix, name in streams.items():
            if record.name.startswith(prefix):
                out.setdefault(call.query, name)
    return out


def infer_graph(
    model: nn.Module,
    *example_inputs: Any,
    forward_func: Callable[..., Any] | None = None,
    additional_forward_args: Any = None,
    streams: Mapping[str, str] | None = None,
    **example_kwargs: Any,
) -> LayerGraph:
    r"""Infer the layer graph of ``model`` from the data flow of one recorded forward.

    Args:
        model: any model whose attention :class:`AttentionRecorder` can capture.
        *example_inputs: the inputs of one forward call: ``forward_func(*example_inputs,
            *additional_forward_args)``, or ``model(*example_inputs, **example_kwargs)``
            without ``forward_func``.
        forward_func: the function ``attribute`` would call (e.g. a lambda that picks logits);
            defaults to the model.
        additional_forward_args: further positional arguments of ``forward_func``, as in
            ``attribute``.
        streams: optional ``{"module.path.prefix": "stream name"}`` to name streams.
        **example_kwargs: keyword inputs for the forward call.

    Returns:
        The inferred :class:`LayerGraph`; for the preset families it agrees with
        ``graph_for(model)``.

    Examples::

        >>> graph = infer_graph(model, input_ids, pixel_values,
        ...                     forward_func=lambda ids, px: model(ids, px).logits[:, -1])
        >>> print(graph.to_json(indent=1))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"infer_graph needs an nn.Module, got {type(model).__name__}")
    run = forward_func if forward_func is not None else model
    extra = _format_additional_forward_args(additional_forward_args) or ()
    inputs = [_traced(x) for x in example_inputs]
    example_kwargs = {k: _traced(v) for k, v in example_kwargs.items()}
    with torch.enable_grad(), AttentionRecorder(model, record_io=True) as recorder:
        output = run(*inputs, *extra, **example_kwargs)
        flow = trace(recorder, [*inputs, *extra, *example_kwargs.values()])
        records = list(recorder.records)
        terminal = [s for s in flow.terminal_streams() if flow.last_call(s) is not None]
        outputs = [records[flow.last_call(s)].output for s in terminal]
        grads = recorder.compute_gradients(_output_score(output), also=outputs)
        preset = find_preset(model)
        known = _pinned(flow, records, streams or {})
        if preset is not None:
            names_list = [name for name, _ in model.named_modules()]
            bound = bind_records(preset, records, names_list, flow,
                                 inputs=[*inputs, *extra, *example_kwargs.values()],
                                 config=getattr(model, "config", None))
            by_name = {c.record.name: c for c in bound.calls}
            for record, call in zip(records, flow.calls, strict=True):
                if record.name in by_name:
                    known.setdefault(call.query, by_name[record.name].node.query)
                    known.setdefault(call.key, by_name[record.name].node.key)
        names = name_streams(flow, known, [*inputs, *extra, *example_kwargs.values()],
                             stream_towers(records, flow))
    with_gradient = [s for s, g in zip(terminal, grads, strict=True)
                     if g is not None and bool(g.any())]
    return graph_from_flow(
        records, flow, names,
        readout_stream=with_gradient[-1] if with_gradient else None,
        name=preset.name if preset is not None else "inferred",
        modules=[n for n, _ in model.named_modules()],
    )
