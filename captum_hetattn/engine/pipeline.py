r"""One ``attribute`` / ``explain`` call as named steps:
record → bind → backward → readout → propagate → assemble.

- **record**: one forward with the :class:`~captum_hetattn.capture.AttentionRecorder` on, the
  objective's scores (one per target);
- **bind**: the recorded calls matched to the layer graph (a preset, else one inferred from the
  data flow);
- **backward**: one backward per target to the attention maps (never into the parameters), each
  map reduced to ``Ā`` as its gradient arrives (:mod:`~captum_hetattn.engine.reduce`) and,
  where the propagator is linear, streamed into the readout rows at once
  (:mod:`~captum_hetattn.engine.streaming`);
- **readout**: which final tokens explain the output (:mod:`~captum_hetattn.engine.readout`);
- **propagate**: the readout rows by the call's propagator (:mod:`~captum_hetattn.rules`);
- **assemble**: the :class:`~captum_hetattn.engine.result.Explanation`.

The call's options are checked and gathered once, with the propagator built once
(:class:`Options`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from captum_hetattn._captum_compat import _format_additional_forward_args
from captum_hetattn.binding.bind import BoundRecording, bind_records
from captum_hetattn.binding.layout_cache import LayoutCache
from captum_hetattn.binding.packed import objective as packed_objective
from captum_hetattn.binding.streams import name_streams, stream_towers
from captum_hetattn.binding.trace import trace
from captum_hetattn.capture import AttentionRecorder
from captum_hetattn.engine.checks import (
    check_finite_calls,
    check_finite_relevance,
    check_mask_lengths,
    in_place_input,
)
from captum_hetattn.engine.readout import (
    Readout,
    Terminal,
    absent_tokens,
    bypassed,
    check_not_padding,
    check_score_rows,
    masked_tokens,
    resolve_readout,
    terminal_outputs,
)
from captum_hetattn.engine.reduce import Capture
from captum_hetattn.engine.report import Report, no_attention
from captum_hetattn.engine.result import (
    Explanation,
    assemble,
    call_maps,
    flow_shares,
    padding_of,
)
from captum_hetattn.engine.sourceless import check_sources
from captum_hetattn.engine.streaming import streaming
from captum_hetattn.engine.targets import Score, score, score_functions, stack_targets
from captum_hetattn.engine.values import ValueWatcher, value_terms
from captum_hetattn.engine.zero_examples import warn_zero_examples
from captum_hetattn.graph import LayerGraph
from captum_hetattn.graph.inference import graph_from_flow
from captum_hetattn.objectives import Objective, Target
from captum_hetattn.rules.adjoint import propagate
from captum_hetattn.rules.ops import (
    AttentionFlow,
    FlowStep,
    TokenMap,
    own_entries,
    read_rows,
    without_own,
)
from captum_hetattn.rules.propagators import Propagator

Correction = str | Mapping[str, str]


class Host(Protocol):
    r"""What the pipeline reads from (and, for an inferred graph, writes to) the explainer."""

    forward_func: Callable[..., Any]
    model: nn.Module
    graph: LayerGraph | None
    graph_is_default: bool
    capture: str
    report: Report
    layouts: LayoutCache | None


@dataclass(frozen=True)
class Options:
    r"""Everything one call asks for, checked and built once (the propagator included).

    Attributes:
        correction: ``"pos" | "full" | "abs" | "none"`` or one per node type.
        noise_link: the paper's noise link (already part of ``propagator``).
        readout: which final tokens explain the output (see ``attribute``).
        target, objective, targets: what is explained.
        stage: ``None`` or ``"homogeneous"``.
        return_maps: keep every call's maps (``explain`` only).
        weighting: ``None`` or ``"value"``.
        propagator: the method's rules.
        map_inputs: trace which input element feeds which stream row (``attribute``).
        include_own: keep the read tokens' own share in the relevance (the paper's raw row);
            by default it is taken out and kept apart (``Explanation.own``).
    """

    correction: Correction
    noise_link: bool
    readout: Readout
    target: Target
    objective: Objective | None
    targets: Sequence[Target] | None
    stage: str | None
    return_maps: bool
    weighting: str | None
    propagator: Propagator
    map_inputs: bool = False
    include_own: bool = False

    @property
    def streams_rows(self) -> bool:
        """Whether the readout rows alone answer the call (no stage, no maps to keep)."""
        return self.stage is None and not self.return_maps


@dataclass
class _Pass:
    """What one backward pass (one target) leaves for the readout and the propagation."""

    grads: list[Tensor | None]
    flows: list[FlowStep] | None
    causal: set[tuple[str, int]]
    no_gradient: set[tuple[str, int]]
    streamed: tuple[dict[str, Tensor], dict[str, Tensor]] | None


@contextlib.contextmanager
def collection_deferred() -> Iterator[None]:
    r"""Python's cyclic garbage collector off for the block, back on after it (if it was on).

    Why: a call makes tens of thousands of short-lived container objects (frames, records,
    hook arguments) that are alive while the collector runs mid-call, so they count as
    survivors toward the next full collection — which walks every object of the process
    (~430k with torch and transformers loaded: 0.2–0.7 s) about once every 15 calls of
    LXMERT-base (measured: 3 in 50). With the collector off, what the call made is freed by
    reference counting when the call ends (the engine makes no reference cycles: a test
    checks), and the few survivors are counted once, after it. Nothing is lost: a cycle made
    meanwhile (by the model) is collected by the next collection after the block. Only the
    state found is restored, so nested or concurrent calls leave it as the outermost found it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def run(host: Host, inputs: tuple[Tensor, ...], additional_forward_args: Any,
        options: Options) -> tuple[Explanation, BoundRecording]:
    r"""One call: the explanation (with a target dimension for ``targets``) and the recording;
    the garbage collector is deferred to its end (:func:`collection_deferred`).

    Args:
        host: the explainer.
        inputs: the formatted inputs.
        additional_forward_args: further arguments of ``forward_func``.
        options: the call's options.
    """
    with collection_deferred():
        return _run(host, inputs, additional_forward_args, options)


def _run(host: Host, inputs: tuple[Tensor, ...], additional_forward_args: Any,
         options: Options) -> tuple[Explanation, BoundRecording]:
    score_fns = score_functions(host.model, host.report, inputs, options.target,
                                options.objective, options.readout, options.targets)
    if options.targets is not None and options.return_maps:
        raise ValueError("return_maps=True keeps one target's maps: explain one target "
                         "at a time (target=...) to get them")
    extra = tuple(_format_additional_forward_args(additional_forward_args) or ())
    check_mask_lengths(inputs, extra)
    traced = tuple(
        x.detach().requires_grad_(True) if x.is_floating_point() else x for x in inputs
    )
    capture = Capture(options.correction, keep_heads=options.return_maps)
    watcher = ValueWatcher() if options.weighting == "value" else None
    flash = host.capture == "flash" and watcher is None
    with torch.enable_grad(), AttentionRecorder(
        host.model, reduce=capture.reduce, record_io=True, flash=flash,
        reduce_heads=capture.reduce_heads, keep_layouts=len(score_fns) > 1,
        narrow_keys=capture.takes_narrow_blocks, memo=getattr(host, "structures", None),
    ) as recorder, watcher or contextlib.nullcontext():
        scores, recording = _record(host, recorder, traced, extra, score_fns, options, capture,
                                    watcher)
        terminal = terminal_outputs(recording, recorder.records, scores)
        passes = _backward(host, recorder, capture, recording, terminal, scores, options)
    host.report.unbound(recording, host.graph.name if host.graph else "")
    host.report.swapped(recording)
    padding = padding_of(recording, capture.key_mass)
    batch = scores[0].shape[0]
    explanations = [_explain_pass(host, recording, terminal, each, padding, capture, options,
                                  batch) for each in passes]
    if options.targets is None:
        return explanations[0], recording
    return stack_targets(explanations), recording


# ---------------------------------------------------------------------------------- record
def _record(host: Host, recorder: AttentionRecorder, traced: tuple[Any, ...],
            extra: tuple[Any, ...], score_fns: list[Score], options: Options, capture: Capture,
            watcher: ValueWatcher | None) -> tuple[list[Tensor], BoundRecording]:
    """The forward, the scores, the binding, and (``weighting="value"``) the value terms."""
    try:
        output = host.forward_func(*traced, *extra)
    except RuntimeError as error:
        refusal = in_place_input(error, host.model)
        if refusal is None:
            raise
        raise refusal from error
    reasons, foreign = recorder.census()
    if not recorder.records or len(foreign) == len({r.name for r in recorder.records}):
        raise ValueError(no_attention(type(host.model).__name__, reasons, foreign))
    check_finite_calls(recorder.records, host.model)
    scores = [score(score_fn, output, index if options.targets is not None else None)
              for index, score_fn in enumerate(score_fns)]
    check_score_rows(scores[0], [*traced, *extra])
    with recorder.tracing(), packed_objective(scores[0]):  # whose packed rows: the scores tell
        recording = bind(host, recorder, [*traced, *extra], options.map_inputs,
                         scores[0].shape[0])
    check_sources(recording, [*traced, *extra], recorder.embeddings,
                  type(host.model).__name__)
    capture.expect(recording)
    if watcher is not None:
        capture.values = {
            (c.record.name, c.record.call_index): value_terms(
                c.record, host.model.get_submodule(c.record.name), watcher)
            for c in recording.calls
        }
        watcher.close()
    return scores, recording


# ------------------------------------------------------------------------------------ bind
def bind(host: Host, recorder: AttentionRecorder, inputs: list[Any], map_inputs: bool,
         batch: int) -> BoundRecording:
    r"""Trace the recorded forward and bind the graph (inferred on the first call, and where a
    preset picked by model type does not fit; the inferred graph is kept on ``host``).

    Args:
        host: the explainer.
        recorder: the recorder, after the forward.
        inputs: the forward's arguments.
        map_inputs: trace which input element feeds which stream row.
        batch: the batch size.
    """
    flow = trace(recorder, inputs, map_inputs=map_inputs, batch=batch,
                 layouts=getattr(host, "layouts", None))
    for name, reason in flow.left_out:
        host.report.left_out(name, reason)
    records = recorder.records
    # modules whose softmax was left out (reported) are not there for the graph to bind: a
    # layer pattern must not expect them (unless another of their softmaxes was recorded:
    # ConvBERT's dynamic-convolution softmax beside its attention)
    left_out = {name for name, _ in flow.left_out} - {r.name for r in records}
    names = [name for name, _ in host.model.named_modules() if name not in left_out]
    config = getattr(host.model, "config", None)
    if host.graph is not None:
        try:
            recording = bind_records(host.graph, records, names, flow, inputs=inputs,
                                     config=config)
            if recording.unbound and host.graph_is_default and host.graph.name != "inferred":
                # a preset written for another class of the family (Perceiver's classifier
                # runs a decoder its preset does not name): the readout may hang on the call
                raise ValueError(f"module '{recording.unbound[0].name}' ran but the preset has "
                                 "no node for it")
            return recording
        except ValueError as err:
            if not host.graph_is_default:
                raise
            # a preset picked by model type that this variant of the model does not fit
            # (a graph inferred on an earlier call is inferred again, quietly: inputs of
            # another length can change the flow, e.g. LED pads to its window)
            if host.graph.name != "inferred":
                host.report.preset_misfit(host.graph.name, type(host.model).__name__, err)
    stream_names = name_streams(flow, {}, inputs, stream_towers(records, flow))
    host.graph = graph_from_flow(records, flow, stream_names, modules=names)
    return bind_records(host.graph, records, names, flow, inputs=inputs, config=config)


# -------------------------------------------------------------------------------- backward
def _backward(host: Host, recorder: AttentionRecorder, capture: Capture,
              recording: BoundRecording, terminal: list[Terminal], scores: list[Tensor],
              options: Options) -> list[_Pass]:
    """One backward per target over the same forward graph (the recorder re-armed between)."""
    batch = scores[0].shape[0]
    passes = []
    for index, each in enumerate(scores):
        if index:
            recorder.rearm()
            capture.rearm()
        with streaming(capture, recording, terminal, options.readout, _readout_stream(host),
                       options.propagator, batch, wanted=options.streams_rows):
            grads = recorder.compute_gradients(
                each.sum(), also=[out for _, out, _ in terminal],
                maps=any(c != "none" for c in capture.corrections.values()),
                retain_graph=index + 1 < len(scores),
            )
        stream = capture.stream
        streamed = stream.result() if stream is not None else None
        flows = None if streamed is not None else steps_of(
            recording, options.stage, capture.residuals, stream.maps if stream else None)
        passes.append(_Pass(grads, flows, set(capture.causal), set(capture.no_gradient),
                            streamed))
    return passes


def _readout_stream(host: Host) -> str | None:
    return host.graph.readout_stream if host.graph is not None else None


# ------------------------------------------------------------ readout, propagate, assemble
def _explain_pass(host: Host, recording: BoundRecording, terminal: list[Terminal], done: _Pass,
                  padding: dict[str, Tensor], capture: Capture, options: Options, batch: int
                  ) -> Explanation:
    """The explanation of one target from its backward pass."""
    weights = resolve_readout(options.readout, _readout_stream(host), recording, terminal,
                              done.grads, padding, batch)
    check_not_padding(weights, masked_tokens(recording))
    gone = bypassed(recording, weights) if options.readout is None else []
    host.report.bypassed(recording, gone, weights)
    host.report.unconnected(recording, weights, gone)
    host.report.no_gradient(recording, weights, done.no_gradient)
    absent: dict[str, Tensor] = {}
    if done.streamed is not None:
        rows, own = done.streamed
    elif options.stage == "homogeneous":
        assert done.flows is not None
        rows, own = homogeneous(recording.sizes, done.flows, weights)
    else:
        assert done.flows is not None
        absent = absent_tokens(recording, padding, done.causal, weights)
        rows, own = options.propagator.split_rows(recording.sizes, done.flows, weights,
                                                  padding=absent)
    # what users see: the context relevance, the read tokens' own share kept apart
    stream_relevance = rows if options.include_own else without_own(rows, own)
    assert host.graph is not None
    explanation = assemble(recording, host.graph, stream_relevance, weights, padding,
                           options.return_maps, own=own)
    check_finite_relevance(explanation.relevance, host.model)
    warn_zero_examples(explanation.relevance, host.report, options.include_own)
    if options.return_maps:
        explanation.call_maps = call_maps(recording, capture.heads)
        if options.stage is None and options.propagator.has_flow:
            assert done.flows is not None
            explanation.flow = flow_shares(recording, done.flows, weights, options.propagator,
                                           absent)
    return explanation


def steps_of(recording: BoundRecording, stage: str | None,
             residuals: Mapping[tuple[str, int], Tensor],
             maps: Mapping[tuple[str, int], Tensor] | None = None) -> list[FlowStep]:
    r"""The steps with their maps (``maps`` where given, else the records' reduced maps); with
    ``stage="homogeneous"`` the TypeA calls only."""
    maps = maps or {}
    flows: list[FlowStep] = []
    for step in recording.steps:
        if isinstance(step, TokenMap):
            if stage is None:
                flows.append(step)
            continue
        group = [
            AttentionFlow(c.node.query, c.node.key,
                          maps.get((c.record.name, c.record.call_index), c.record.reduced),
                          c.node.name, residuals.get((c.record.name, c.record.call_index)))
            for c in step
            if stage is None or c.node.type == "A"
        ]
        if group:
            flows.append(group)
    if not any(isinstance(f, list) for f in flows):
        raise ValueError(f"stage={stage!r} leaves no attention call of the graph")
    return flows


def homogeneous(
    sizes: Mapping[str, int], flows: list[FlowStep], readout: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Semantic inspection: readout rows of the readout streams, column sums of the others;
    and the read tokens' own entries of the readout rows (:func:`own_entries`)."""
    blocks = propagate(sizes, flows)
    relevance = read_rows(blocks, sizes, readout)
    own = own_entries(blocks, sizes, readout, flows)
    for other in sizes:
        if other not in readout:
            relevance[other] = blocks[(other, other)].sum(dim=1).contiguous()
    return relevance, own
