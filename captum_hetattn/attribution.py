r"""Captum attributions over attention: the paper's method and its baselines, on one engine.

One ``attribute`` call = one forward and one backward of the objective to the attention maps
(never into the parameters): :class:`~captum_hetattn.capture.AttentionRecorder` records every
map and reduces its heads as soon as its gradient arrives; the recorded calls are matched to the
layer graph; :mod:`~captum_hetattn.rules` propagates relevance (one readout row by the adjoint
where the rules are linear); :mod:`~captum_hetattn.mapping` lays the token relevance out like
the inputs.

- :class:`HeterogenousAttentionAttribution` — the paper: gradient-corrected maps, rollout
  through self-attention, cross-attention with every source kept separate, optional noise link.
- :class:`GenericAttentionExplainability` — GAE (Chefer et al., ICCV 2021) as its reference code
  computes it (``pos`` correction, normalisation, eq. 10 with the transpose, readout token's own
  relevance set to 0).
- :class:`AttentionRollout` — Abnar & Zuidema 2020 (no gradient), generalised to cross calls.
- :class:`RawAttention` — the head-mean attention of the last call into the readout stream.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any, ClassVar

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_hetattn._captum_compat import (
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    log_usage,
)
from captum_hetattn.binding import (
    BoundRecording,
    bind_records,
    name_streams,
    tower_of,
)
from captum_hetattn.capture import AttentionRecord, AttentionRecorder
from captum_hetattn.dataflow import tokens_view
from captum_hetattn.graph import BoundNode, LayerGraph
from captum_hetattn.infer import graph_from_flow, is_causal, trace
from captum_hetattn.mapping import Gathered, InputMapping, NoAttribution, default_mappings
from captum_hetattn.objectives import (
    Contrast,
    Objective,
    Ratio,
    RelativeContrast,
    Target,
    evaluate_objective,
    resolve_objective,
)
from captum_hetattn.presets import find_preset, preset
from captum_hetattn.rules import (
    AttentionFlow,
    FlowStep,
    Gae,
    Ours,
    Propagator,
    Rollout,
    RowAdjoint,
    TokenMap,
    aggregate_heads,
    corrected,
    propagate,
    propagate_row,
    read_rows,
    readout_weights,
    relevance_dtype,
    residual_shares,
    resolve_correction,
    value_weighted,
)
from captum_hetattn.values import ValueTerms, ValueWatcher, check_weighting, value_terms

Correction = str | Mapping[str, str]
Readout = int | str | Tensor | Mapping[str, Any] | None
STAGES = (None, "homogeneous")


@dataclass
class CallMaps:
    r"""Per-head maps of one bound attention call, kept by ``explain(..., return_maps=True)``.

    Attributes:
        name: the module's qualified name.
        call_index: which call of that module (0 for the first).
        type: the call's node type, ``"A"``, ``"B"`` or ``"C"``.
        query, key: the query and key streams (equal for self-attention).
        attention: the raw map ``A`` ``(B, H, n_query, n_key)``, float32, detached.
        gradient: ``∂objective/∂A`` (zeros where the map got no gradient).
        corrected: ``f(G) ⊙ A`` with the call's correction (its head mean is ``Ā``).
        query_states, key_states: the per-head query / key vectors ``(B, H, n, d_head)`` where
            the backend sees them (modules that use the transformers attention interface),
            else ``None``.
    """

    name: str
    call_index: int
    type: str
    query: str
    key: str
    attention: Tensor
    gradient: Tensor
    corrected: Tensor
    query_states: Tensor | None = None
    key_states: Tensor | None = None


@dataclass
class FlowShare:
    r"""Where the readout's relevance lies after one step of the layer graph.

    Attributes:
        label: ``"input"`` for the start, else the step's call names (or a junction's name).
        kind: ``"start"``, the node type ``"A"`` / ``"B"`` / ``"C"``, or ``"junction"``.
        shares: source → ``(B,)`` relevance of the readout row on that source's tokens after
            the step (at the start, all of it is on the readout tokens themselves).
        own: source → ``(B,)`` the part of ``shares`` on the readout tokens' own entries
            (``Σ_i w_x[i] R[x, x][i, i]``): the identity they start with and what the steps add
            to it, which displays leave out as GAE's reference code does.
    """

    label: str
    kind: str
    shares: dict[str, Tensor]
    own: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Explanation:
    r"""Token-level result of :meth:`explain`.

    Attributes:
        relevance: per source (input modality), token relevance ``(B, n_source)``, as
            propagated (not rescaled): ``Σ_x w_xᵀ R[x, s]`` over the readout streams ``x``.
        readout_stream: the readout stream with the largest readout weight.
        readout_token: ``(B,)`` its most weighted token, per example.
        graph: the layer graph used.
        sizes: tokens per source.
        padding: per source, ``(B, n_source)`` booleans, True where no query attended to the
            token (attention-masked padding).
        maps: with ``return_maps=True``, each bound call's aggregated map ``Ā`` ``(B, n_q, n_k)``,
            keyed by module name and call index.
        readout: the readout weights ``{stream: (B, n_stream)}`` (see
            :class:`HeterogenousAttentionAttribution`).
        streams: tokens per stream (a stream is a token sequence attention runs over; a source
            is the input modality whose tokens it holds — one stream may hold several).
        sources: source name → the stream whose columns hold it.
        stream_relevance: per stream, the relevance of its own token columns ``(B, n_stream)``.
        calls: every bound call in call order, with its concrete type A/B/C.
        call_maps: with ``return_maps=True``, the per-head :class:`CallMaps` of every bound call
            in call order (for the views in :mod:`captum_hetattn.views`).
        flow: with ``return_maps=True`` (and no ``stage``), :class:`FlowShare` per step of the
            layer graph, the start first: how the readout's relevance is shared between sources
            as the steps run (the full propagation; its last entry sums ``relevance``).
    """

    relevance: dict[str, Tensor]
    readout_stream: str
    readout_token: Tensor
    graph: LayerGraph
    sizes: dict[str, int]
    padding: dict[str, Tensor] = field(default_factory=dict)
    maps: dict[tuple[str, int], Tensor] | None = None
    readout: dict[str, Tensor] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    stream_relevance: dict[str, Tensor] = field(default_factory=dict)
    calls: list[BoundNode] = field(default_factory=list)
    call_maps: list[CallMaps] | None = None
    flow: list[FlowShare] | None = None


class _AttentionAttribution(Attribution):
    """The shared engine; subclasses set how maps are aggregated and propagated."""

    default_correction: ClassVar[Correction] = "pos"
    accepts_gradient_corrections: ClassVar[bool] = True
    #: whether ``weighting="value"`` is an option (the paper's rules only)
    accepts_weighting: ClassVar[bool] = False
    #: whether relevance flows step by step through the graph (``Explanation.flow``)
    _has_flow: ClassVar[bool] = True

    def __init__(
        self,
        forward_func: Callable[..., Any],
        model: nn.Module | None = None,
        graph: LayerGraph | str | None = None,
        input_mappings: Sequence[InputMapping] | None = None,
        capture: str = "flash",
    ) -> None:
        r"""
        Args:
            forward_func: the model, or any function of the inputs that returns scores (logits)
                as a tensor; it must run ``model``.
            model: the ``nn.Module`` whose attention is explained; defaults to ``forward_func``
                when that is a module.
            graph: a :class:`LayerGraph`, a preset name (``"lxmert"``, ``"detr"``, ...),
                ``"infer"`` (a graph inferred from the data flow of the first call), or ``None``:
                the preset for the model class / ``config.model_type`` if one fits, else
                inferred.
            input_mappings: one :class:`~captum_hetattn.mapping.InputMapping` per input
                (``Tokens("text")``, ``PatchGrid("image")``, ``NoAttribution()``, ...); ``None``
                maps every input by the rows of the streams its elements feed (traced on each
                call), falling back to its shape where an element feeds several rows.
            capture: ``"flash"`` (default): modules that use the transformers attention
                interface keep the fast kernel (sdpa) in the forward and each call's map is
                built inside the backward from its queries, keys and output gradient, one call
                at a time — equal to eager capture, checked against the module's eager
                function on the first call of each attention class (a class whose outputs
                differ is captured eagerly). ``"eager"``: every map is computed eagerly and
                kept from the forward to the backward. Hand-written attention,
                ``nn.MultiheadAttention`` and ``weighting="value"`` always capture eagerly.
        """
        super().__init__(forward_func)
        if capture not in ("flash", "eager"):
            raise ValueError(f"capture must be 'flash' or 'eager', got {capture!r}")
        self.capture = capture
        if model is None:
            if not isinstance(forward_func, nn.Module):
                raise TypeError(
                    "forward_func is not an nn.Module: pass the model as model=... so that its "
                    "attention can be recorded"
                )
            model = forward_func
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self._graph_is_default = graph is None
        if graph == "infer":
            graph = None  # inferred from the data flow of the first call, even with a preset
        elif isinstance(graph, str):
            graph = preset(graph)
        elif graph is None:
            graph = find_preset(model)
        elif not isinstance(graph, LayerGraph):
            raise TypeError(
                f"graph must be a LayerGraph, a preset name or None, got {type(graph).__name__}"
            )
        self.graph: LayerGraph | None = graph
        self.input_mappings = tuple(input_mappings) if input_mappings is not None else None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ method knobs
    def _check_options(self, correction: Correction, noise_link: bool) -> None:
        if not self.accepts_gradient_corrections and correction != "none":
            raise ValueError(
                f"{type(self).__name__} uses no gradient: correction must be 'none', "
                f"got {correction!r}"
            )

    def _method(self, noise_link: bool) -> Propagator:
        """The rules this method propagates with."""
        return Ours(noise_link=noise_link)

    def _propagate(
        self,
        recording: BoundRecording,
        flows: list[FlowStep],
        readout: dict[str, Tensor],
        noise_link: bool,
        absent: Mapping[str, Tensor],
    ) -> dict[str, Tensor]:
        """Readout rows by the adjoint where the rules are linear, else all blocks."""
        method = self._method(noise_link)
        if method.linear:
            return propagate_row(recording.sizes, flows, readout, method=method)
        blocks = propagate(recording.sizes, flows, method=method, padding=absent)
        return self._read(blocks, recording.sizes, readout)

    def _read(
        self, blocks: dict[tuple[str, str], Tensor], sizes: Mapping[str, int],
        readout: Mapping[str, Tensor],
    ) -> dict[str, Tensor]:
        return read_rows(blocks, sizes, readout)

    # ------------------------------------------------------------------ Captum face
    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Target = None,
        additional_forward_args: Any = None,
        *,
        correction: Correction | None = None,
        noise_link: bool = False,
        readout: Readout = None,
        objective: Objective | None = None,
        stage: str | None = None,
        weighting: str | None = None,
        targets: Sequence[Target] | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Relevance of every input element, laid out like the inputs (Captum's contract).

        Args:
            inputs: a tensor or a tuple of tensors, the first arguments of ``forward_func``
                (token ids, embeddings, region features, pixel values, audio features).
            target: Captum's target (int, tuple, tensor, list): which output score to explain.
            additional_forward_args: further arguments of ``forward_func`` (not attributed).
            correction: ``"pos"`` (default), ``"full"``, ``"abs"``, ``"none"``, or per type
                ``{"A": "abs", "B": "pos", "C": "pos"}``.
            noise_link: read ``(R[k,k] − I)/rowsum + I`` in cross-attention (paper eq. 8–10).
            readout: which final tokens explain the output. ``None`` (default): read from the
                objective's gradient (see the class docstring); an int, a ``(B,)`` tensor or
                ``"last"`` (last non-padding token) of the main readout stream; or a dict
                ``{stream: int | (B,) tensor | (B, n) weights}``.
            objective: instead of ``target``, a callable ``output -> (B,)`` such as
                ``Contrast(a, b)``.
            stage: ``"homogeneous"`` stops after the TypeA calls (semantic inspection, paper
                §5.2): the readout row for the readout stream, column sums (attention each token
                receives) for the others. Use it with ``correction="abs"``.
            weighting: ``None`` (default): the paper's rule, which adds a token's relevance
                before and after attention with equal weight. ``"value"``
                (:class:`HeterogenousAttentionAttribution` only): weigh what the map cannot
                see — each key by the norm of its value vector after the output projection,
                ``ν_hj = ‖v_hj W_O,h‖``, and each query's update by the share of its attention
                output ``o_i`` against the hidden state ``x_i`` it reads,
                ``a_i = ‖o_i‖ / (‖o_i‖ + ‖x_i‖)``::

                    Ā^ν_ij = mean_h(f(G_h) ⊙ A_h)_ij ν_hj / mean_h Σ_k A_hik ν_hk
                    R[q, s] ← 2 (1 − a) ⊙ R[q, s] + 2 a ⊙ (Ā^ν · R[k, s])

                With equal value norms and ``‖o_i‖ = ‖x_i‖`` this is the default rule.
            targets: instead of ``target``, ``K`` targets explained from one forward (each
                anything ``target`` accepts — an int, a tuple such as ``(position, token)``
                or ``(query, class)``, a per-example list or tensor — applied to the whole
                batch): one backward pass per target over the same forward graph. The results
                get a target dimension after the batch: ``(B, K, ...)``. Relevance equals ``K``
                separate calls (tested); see :func:`generation_targets` for a ``generate()``
                output.

        Returns:
            Attributions shaped like ``inputs`` (tensor for a tensor, tuple for a tuple),
            contiguous float tensors (``(B, K, *input.shape[1:])`` with ``targets``). Each
            input is mapped to the stream rows its elements feed (traced through the model),
            so ids, images, region features, boxes, token type ids and tiled pixels need no
            mapping; an input that feeds no attention gets zeros.

        Examples::

            >>> explainer = HeterogenousAttentionAttribution(model)
            >>> attributions = explainer.attribute(pixel_values, target=3)
        """
        is_tuple = _is_tuple(inputs)
        formatted = _format_tensor_into_tuples(inputs)
        explanation, recording = self._explain(
            formatted, target, additional_forward_args, correction, noise_link, readout,
            objective, stage, return_maps=False, map_inputs=True, weighting=weighting,
            targets=targets,
        )
        if self.input_mappings is not None and len(self.input_mappings) != len(formatted):
            raise ValueError(
                f"{len(self.input_mappings)} input_mappings for {len(formatted)} inputs; give one "
                "per input"
            )
        per_target = [explanation] if targets is None else _split_targets(explanation)
        attributions = []
        for position, tensor in enumerate(formatted):
            mapped_targets = []
            for each in per_target:
                pairs = self._input_mapping(position, tensor, each, recording)
                mapped_targets.append(sum(m.to_input(r, tensor, position) for m, r in pairs))
            mapped = mapped_targets[0] if targets is None else torch.stack(mapped_targets, 1)
            dtype = tensor.dtype if tensor.is_floating_point() else mapped.dtype
            attributions.append(mapped.to(dtype=dtype, device=tensor.device).contiguous())
        return _format_output(is_tuple, tuple(attributions))

    def _input_mapping(
        self, position: int, tensor: Tensor, explanation: Explanation,
        recording: BoundRecording,
    ) -> list[tuple[InputMapping, Tensor]]:
        """The mappings of input ``position`` and the relevance each reads (summed)."""
        if self.input_mappings is not None:
            mapping = self.input_mappings[position]
            known = {**explanation.relevance, **explanation.stream_relevance}
            if mapping.stream and mapping.stream not in known:
                raise ValueError(
                    f"input {position}: mapping names stream '{mapping.stream}', which the graph "
                    f"does not have (sources: {list(explanation.relevance)}, streams: "
                    f"{list(explanation.stream_relevance)})"
                )
            relevance = known.get(mapping.stream)
            if relevance is None:  # NoAttribution without a stream
                relevance = next(iter(explanation.relevance.values()))
            return [(mapping, relevance)]
        fed = recording.inputs.get(position)
        if not fed:
            return [(NoAttribution(), next(iter(explanation.relevance.values())))]
        if all(item.rows is not None for item in fed):
            # an input that feeds several streams (a tower and its cross-modal copy) sums them
            return [(Gathered(item.stream, rows=item.rows),
                     explanation.stream_relevance[item.stream]) for item in fed]
        # an element feeds several rows (overlapping convolutions): lay out by shape
        stream = fed[0].stream
        own = {name: explanation.relevance[name] for name, source in recording.sources.items()
               if source.stream == stream}
        sizes = {name: r.shape[1] for name, r in own.items()}
        try:
            (mapping,) = default_mappings((tensor,), sizes)
        except ValueError as err:
            raise ValueError(
                f"input {position} of shape {tuple(tensor.shape)} feeds stream '{stream}' "
                "through overlapping windows and its layout cannot be guessed; pass "
                "input_mappings=[...]"
            ) from err
        return [(mapping, own[mapping.stream])]

    def explain(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Target = None,
        additional_forward_args: Any = None,
        *,
        correction: Correction | None = None,
        noise_link: bool = False,
        readout: Readout = None,
        objective: Objective | None = None,
        stage: str | None = None,
        return_maps: bool = False,
        weighting: str | None = None,
        targets: Sequence[Target] | None = None,
    ) -> Explanation:
        r"""Token relevance per source, for users who want tokens rather than input shapes.

        Same arguments as :meth:`attribute`, plus ``return_maps`` to keep every call's ``Ā``.
        With ``targets=[...]`` every per-example field gets a target dimension after the batch
        (``relevance[source]`` is ``(B, K, n)``, ``readout_token`` ``(B, K)``).

        Returns:
            An :class:`Explanation`.
        """
        explanation, _ = self._explain(
            _format_tensor_into_tuples(inputs), target, additional_forward_args, correction,
            noise_link, readout, objective, stage, return_maps, weighting=weighting,
            targets=targets,
        )
        return explanation

    # ------------------------------------------------------------------ engine
    def _explain(
        self,
        inputs: tuple[Tensor, ...],
        target: Target,
        additional_forward_args: Any,
        correction: Correction | None,
        noise_link: bool,
        readout: Readout,
        objective: Objective | None,
        stage: str | None,
        return_maps: bool,
        map_inputs: bool = False,
        weighting: str | None = None,
        targets: Sequence[Target] | None = None,
    ) -> tuple[Explanation, BoundRecording]:
        r"""record → bind → readout → propagate (``map_inputs``: trace which input element
        feeds which stream row, for :meth:`attribute`)."""
        correction = self.default_correction if correction is None else correction
        self._check_options(correction, noise_link)
        check_weighting(weighting)
        if weighting is not None and not self.accepts_weighting:
            raise ValueError(
                f"weighting={weighting!r} is an option of HeterogenousAttentionAttribution, not "
                f"of {type(self).__name__}"
            )
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        objectives = self._objectives(inputs, target, objective, readout, targets)
        if targets is not None and return_maps:
            raise ValueError("return_maps=True keeps one target's maps: explain one target "
                             "at a time (target=...) to get them")
        extra = tuple(_format_additional_forward_args(additional_forward_args) or ())
        traced = tuple(
            x.detach().requires_grad_(True) if x.is_floating_point() else x for x in inputs
        )
        state = _Capture(correction, keep_heads=return_maps)
        watcher = ValueWatcher() if weighting == "value" else None
        flash = self.capture == "flash" and watcher is None
        passes = []
        with torch.enable_grad(), AttentionRecorder(
            self.model, reduce=state.reduce, record_io=True, flash=flash,
            reduce_heads=state.reduce_heads,
        ) as recorder, watcher or contextlib.nullcontext():
            output = self.forward_func(*traced, *extra)
            scores = [_score(score_fn, output, index if targets is not None else None)
                      for index, score_fn in enumerate(objectives)]
            with recorder.tracing():
                recording = self._bind(recorder, [*traced, *extra], map_inputs,
                                       scores[0].shape[0])
            state.expect(recording)
            if watcher is not None:
                state.values = {
                    (c.record.name, c.record.call_index): value_terms(
                        c.record, self.model.get_submodule(c.record.name), watcher)
                    for c in recording.calls
                }
                watcher.close()
            terminal = _terminal_outputs(recording, recorder.records)
            recorder.keep_layouts = len(scores) > 1
            for index, score in enumerate(scores):  # one forward, a backward per target
                if index:
                    recorder.rearm()
                    state.rearm()
                with self._streaming(state, recording, terminal, readout, noise_link, stage,
                                     return_maps, scores[0].shape[0]):
                    grads = recorder.compute_gradients(
                        score.sum(), also=[out for _, out, _ in terminal],
                        maps=any(c != "none" for c in state.corrections.values()),
                        retain_graph=index + 1 < len(scores),
                    )
                streamed = state.stream.result() if state.stream is not None else None
                maps = state.stream.maps if state.stream is not None else None
                passes.append((grads, None if streamed is not None else _flows(
                    recording, stage, state.residuals, maps), set(state.causal),
                    set(state.no_gradient), streamed))
        self._warn_unbound(recording)
        self._warn_swapped(recording)
        padding = _padding(recording, state.key_mass)
        explanations = []
        for grads, flows, causal, no_gradient, streamed in passes:
            weights = self._readout(readout, recording, terminal, grads, padding,
                                    scores[0].shape[0])
            self._warn_unconnected(recording, weights)
            self._warn_no_gradient(recording, weights, no_gradient)
            if streamed is not None:
                stream_relevance = streamed
            elif stage == "homogeneous":
                stream_relevance = _homogeneous(recording.sizes, flows, weights)
            else:
                absent = _absent_tokens(recording, padding, causal, weights)
                stream_relevance = self._propagate(recording, flows, weights, noise_link,
                                                   absent)
            explanation = self._explanation(recording, stream_relevance, weights, padding,
                                            return_maps)
            if return_maps:
                explanation.call_maps = _call_maps(recording, state.heads)
                if stage is None and self._has_flow:
                    method = self._method(noise_link)
                    explanation.flow = _flow_shares(recording, flows, weights, method, absent)
            explanations.append(explanation)
        if targets is None:
            return explanations[0], recording
        return _stack_targets(explanations), recording

    @contextlib.contextmanager
    def _streaming(self, state: _Capture, recording: BoundRecording,
                   terminal: list[tuple[str, Tensor | None, int]], readout: Readout,
                   noise_link: bool, stage: str | None, return_maps: bool, batch: int
                   ) -> Iterator[None]:
        """Set up the streaming adjoint for one gradient pass where it applies: linear rules,
        no stage, no maps to return, and a readout known before the maps arrive (given, or
        read from the gradient of the one terminal stream, which arrives first)."""
        method = self._method(noise_link)
        wired = type(self)._propagate is _AttentionAttribution._propagate
        if not (wired and method.linear and stage is None and not return_maps):
            yield
            return
        given = self._given_readout(readout, recording, batch)
        hooked = [out for _, out, _ in terminal if isinstance(out, Tensor) and out.requires_grad]
        if given is None and (readout is not None or len(terminal) != 1 or len(hooked) != 1):
            yield
            return
        state.stream = _Streaming(recording, state.residuals, method)
        handle = None
        if given is not None:
            state.stream.set_readout(given)
        else:
            def on_gradient(grad: Tensor) -> None:
                try:
                    weights = _gradient_readout(recording, terminal, [grad], batch)
                except ValueError:
                    return  # no readout from this gradient: the full flows will say so
                state.stream.set_readout(weights)

            handle = hooked[0].register_hook(on_gradient)
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()

    def _given_readout(self, readout: Readout, recording: BoundRecording, batch: int
                       ) -> dict[str, Tensor] | None:
        """The readout weights :meth:`_readout` gives for a ``readout`` that needs neither the
        gradient nor the padding (not ``None``, not ``"last"``), else ``None``."""
        if readout is None or isinstance(readout, str):
            return None
        if isinstance(readout, Mapping):
            if any(isinstance(v, str) for v in readout.values()):
                return None
            return {stream: _readout_vector(value, stream, recording, {}, batch)
                    for stream, value in readout.items()}
        stream = self.graph.readout_stream if self.graph is not None else None
        if stream is None or stream not in recording.sizes:
            return None  # the main stream is read from the gradient
        return {stream: _readout_vector(readout, stream, recording, {}, batch)}

    def _objectives(self, inputs: tuple[Tensor, ...], target: Target,
                    objective: Objective | None, readout: Readout, targets: Any
                    ) -> list[Callable[[Any], Tensor]]:
        """One score function, or one per entry of ``targets``, checked."""
        if targets is None:
            self._check_call(inputs, target, objective, readout)
            return [resolve_objective(target, objective)]
        if target is not None or objective is not None:
            raise ValueError("give targets=[...] or target / objective, not both")
        if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or (
                isinstance(targets, tuple) and targets and _is_int(targets[0])):
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
                self._check_call(inputs, each, None, readout)
            except (ValueError, TypeError) as err:
                raise type(err)(f"targets[{index}]: {err}") from err
            out.append(resolve_objective(each, None))
        return out

    def _bind(
        self, recorder: AttentionRecorder, inputs: list[Any], map_inputs: bool, batch: int
    ) -> BoundRecording:
        """Trace the recorded forward and bind the graph (inferred on the first call)."""
        flow = trace(recorder, inputs, map_inputs=map_inputs, batch=batch)
        for name, reason in flow.left_out:
            self._warn(f"left-out:{name}", (
                f"attention module '{name}' computes a softmax that is left out of the "
                f"explanation: {reason}"
            ))
        records = recorder.records
        # modules whose softmax was left out (reported) are not there for the graph to bind: a
        # layer pattern must not expect them
        left_out = {name for name, _ in flow.left_out}
        names = [name for name, _ in self.model.named_modules() if name not in left_out]
        config = getattr(self.model, "config", None)
        if self.graph is not None:
            try:
                return bind_records(self.graph, records, names, flow, inputs=inputs,
                                    config=config)
            except ValueError as err:
                if not self._graph_is_default or self.graph is None:
                    raise
                # a preset picked by model type that this variant of the model does not fit
                # (a graph inferred on an earlier call is inferred again, quietly: inputs of
                # another length can change the flow, e.g. LED pads to its window)
                if self.graph.name != "inferred":
                    self._warn(f"preset:{self.graph.name}", (
                        f"the '{self.graph.name}' preset does not fit this "
                        f"{type(self.model).__name__} ({err}); using a graph inferred from the "
                        "data flow instead"
                    ))
        towers = {c.query: tower_of(records[i].name) for i, c in enumerate(flow.calls)}
        stream_names = name_streams(flow, {}, inputs, towers)
        self.graph = graph_from_flow(records, flow, stream_names)
        return bind_records(self.graph, records, names, flow, inputs=inputs, config=config)

    def _check_call(self, inputs: tuple[Any, ...], target: Target,
                    objective: Objective | None, readout: Readout) -> None:
        """What would fail deep inside the model, or silently, is checked before the forward."""
        _check_inputs(inputs)
        _check_target(target)
        if isinstance(objective, (Contrast, Ratio, RelativeContrast)):
            _check_target(objective.a, f"{type(objective).__name__}.a")
            _check_target(objective.b, f"{type(objective).__name__}.b")
        if isinstance(readout, Mapping):
            for stream, value in readout.items():
                _check_readout_token(value, f"readout['{stream}']")
        elif readout is not None:
            _check_readout_token(readout, "readout")
        _check_not_meta(self.model)
        dropout = _active_dropout(self.model)
        if dropout is not None:
            self._warn("train-mode", (
                f"{type(self.model).__name__} is in train() mode with dropout active "
                f"({dropout}): every call drops different units, so the relevance is not "
                "deterministic; call model.eval() before explaining (the explainer leaves the "
                "mode as it is)"
            ))

    def _warn(self, key: str, message: str) -> None:
        """A ``UserWarning``, once per explainer and subject."""
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=5)

    def _warn_each(
        self, kind: str, subjects: Sequence[str], message: Callable[[list[str]], str]
    ) -> None:
        """One ``UserWarning`` for the subjects not reported yet by this explainer (a message
        that names the first and counts them), not one per subject."""
        new = [s for s in dict.fromkeys(subjects) if f"{kind}:{s}" not in self._warned]
        if new:
            self._warned.update(f"{kind}:{s}" for s in new)
            warnings.warn(message(new), UserWarning, stacklevel=5)

    def _warn_unbound(self, recording: BoundRecording) -> None:
        graph = self.graph.name if self.graph else ""
        self._warn_each("unbound", [record.name for record in recording.unbound], lambda new: (
            f"{len(new)} attention module(s) ran but the layer graph '{graph}' has no node for "
            f"them (first: '{new[0]}'), so they are left out of the explanation; add nodes (or "
            "pass graph=None to infer the graph)"
        ))

    def _warn_swapped(self, recording: BoundRecording) -> None:
        pairs = {f"{first.label} / {then.label}": (first, then)
                 for first, then in recording.swapped}

        def message(new: list[str]) -> str:
            first, then = pairs[new[0]]
            return (
                f"the layer graph lists {first.label} before {then.label}, but the model ran "
                f"the latter first ({len(new)} such pair(s)); they share no stream, so the "
                "relevance is the same in either order; list the nodes in call order"
            )

        self._warn_each("swapped", list(pairs), message)

    def _warn_no_gradient(
        self, recording: BoundRecording, readout: Mapping[str, Tensor],
        no_gradient: set[tuple[str, int]],
    ) -> None:
        """Calls whose maps got no gradient at all although the graph connects them to the
        readout: under a gradient correction their maps count as zero, so say so (a branch
        detached from the output, maps computed without grad?). Calls after the last use of
        their stream (LLaVA's last vision layer) get none by construction and are not named."""
        reached = set(readout)
        silent: list[str] = []
        for step in reversed(recording.steps):
            if isinstance(step, TokenMap):
                if step.into in reached:
                    reached.add(step.origin)
                continue
            silent += [c.record.name for c in step if c.node.query in reached
                       and (c.record.name, c.record.call_index) in no_gradient]
            reached.update(c.node.key for c in step if c.node.query in reached)
        self._warn_each("no-gradient", silent[::-1], lambda new: (
            f"attention module '{new[0]}' got no gradient from the objective"
            + (f" (and {len(new) - 1} more)" if len(new) > 1 else "")
            + ": under the gradient correction its maps count as zero, although the graph "
            "connects it to the readout (a branch detached from the output, or value vectors "
            "that are all zero?); correction='none' keeps them"
        ))

    def _warn_unconnected(self, recording: BoundRecording, readout: Mapping[str, Tensor]) -> None:
        """Sources that no call or junction connects to the readout get zero relevance by
        construction: say so instead of returning a silent zero."""
        reached = set(readout)
        for step in reversed(recording.steps):
            if isinstance(step, TokenMap):
                if step.into in reached:
                    reached.add(step.origin)
            else:
                reached.update(c.node.key for c in step if c.node.query in reached)
        for name, source in recording.sources.items():
            if source.stream not in reached:
                self._warn(f"unconnected:{name}", (
                    f"source '{name}' (stream '{source.stream}') gets zero relevance: no "
                    f"attention call or junction of the graph connects it to the readout "
                    f"stream(s) {sorted(readout)}"
                ))

    def _readout(
        self,
        readout: Readout,
        recording: BoundRecording,
        terminal: list[tuple[str, Tensor | None, int]],
        grads: list[Tensor | None],
        padding: Mapping[str, Tensor],
        batch: int,
    ) -> dict[str, Tensor]:
        """Readout weights ``{stream: (B, n)}``: from the gradient, or as the user asked."""
        from_gradient = _gradient_readout(recording, terminal, grads, batch)
        if readout is None:
            return from_gradient
        if isinstance(readout, Mapping):
            return {
                stream: _readout_vector(value, stream, recording, padding, batch)
                for stream, value in readout.items()
            }
        stream = self.graph.readout_stream if self.graph is not None else None
        if stream is None or stream not in recording.sizes:
            stream = _main_stream(from_gradient)
        return {stream: _readout_vector(readout, stream, recording, padding, batch)}

    def _explanation(
        self,
        recording: BoundRecording,
        stream_relevance: dict[str, Tensor],
        weights: dict[str, Tensor],
        padding: dict[str, Tensor],
        return_maps: bool,
    ) -> Explanation:
        relevance = {
            name: sum(stream_relevance[stream][:, columns] for stream, columns in source.parts)
            .contiguous()
            for name, source in recording.sources.items()
        }
        source_padding = {
            name: padding[source.stream][:, source.columns]
            for name, source in recording.sources.items() if source.stream in padding
        }
        main = _main_stream(weights)
        maps = None
        if return_maps:
            maps = {(c.record.name, c.record.call_index): c.record.reduced
                    for c in recording.calls}
        assert self.graph is not None
        return Explanation(
            relevance=relevance,
            readout_stream=main,
            readout_token=weights[main].argmax(dim=1),
            graph=self.graph,
            sizes={name: r.shape[1] for name, r in relevance.items()},
            padding=source_padding,
            maps=maps,
            readout=weights,
            streams=dict(recording.sizes),
            sources={name: source.stream for name, source in recording.sources.items()},
            stream_relevance=stream_relevance,
            calls=[c.node for c in recording.calls],
        )


class _Streaming:
    r"""The streaming adjoint: where the rules are linear, the readout rows are propagated during
    the backward pass, which meets the calls in reverse order — the adjoint's order — so each
    ``Ā`` is used as soon as it is reduced and dropped (maps that arrive early wait until the
    steps after them have run). Exactly :func:`~captum_hetattn.rules.propagate_row` on the same
    maps. Until the readout is known no step runs and every map waits (the caller then falls
    back to the full flows)."""

    def __init__(self, recording: BoundRecording, residuals: Mapping[tuple[str, int], Tensor],
                 method: Propagator) -> None:
        self.recording, self.residuals, self.method = recording, residuals, method
        self.steps = list(recording.steps)
        self.next = len(self.steps) - 1
        self.keys = {(c.record.name, c.record.call_index) for c in recording.calls}
        self.maps: dict[tuple[str, int], Tensor] = {}
        self.adjoint: RowAdjoint | None = None
        self.reference: Tensor | None = None

    def set_readout(self, weights: Mapping[str, Tensor]) -> None:
        dtype = relevance_dtype(next(iter(weights.values())).dtype)
        self.adjoint = RowAdjoint(self.recording.sizes, weights, method=self.method,
                                  dtype=dtype)
        self._advance()

    def offer(self, key: tuple[str, int], reduced: Tensor) -> None:
        self.maps[key] = reduced
        self.reference = reduced
        self._advance()

    def _advance(self) -> None:
        while self.adjoint is not None and self.next >= 0:
            step = self.steps[self.next]
            if not isinstance(step, TokenMap):
                keys = [(c.record.name, c.record.call_index) for c in step]
                if any(k not in self.maps for k in keys):
                    return  # a map of this step has not arrived yet
                step = [AttentionFlow(c.node.query, c.node.key, self.maps.pop(k), c.node.name,
                                      self.residuals.get(k)) for c, k in zip(step, keys,
                                                                              strict=True)]
            self.adjoint.step(step)
            self.next -= 1

    def result(self) -> dict[str, Tensor] | None:
        """The readout rows, or ``None`` where no step ran (the maps all wait in ``maps``)."""
        if self.adjoint is None or self.next >= 0 or self.reference is None:
            if self.next < len(self.steps) - 1 and any(
                    not isinstance(step, TokenMap) for step in self.steps[self.next + 1:]):
                # steps ran and dropped their maps, but some map never came: nothing to fall
                # back to (every bound call is reduced by the end of the pass)
                raise RuntimeError(
                    "the streaming adjoint stopped at step "
                    f"{self.next} of {len(self.steps)}: a bound call was never reduced")
            return None
        return self.adjoint.result(self.reference)


class _Capture:
    """Per-recording state of the ``reduce`` callback: corrections of the bound calls, which
    keys anyone attends to (padding), which self-attention maps are causal."""

    def __init__(self, correction: Correction, keep_heads: bool = False) -> None:
        self.correction = correction
        self.keep_heads = keep_heads
        #: per call, ``(A, G, f(G) ⊙ A, q, k)`` per head, with ``keep_heads``
        self.heads: dict[tuple[str, int], tuple[Tensor, ...]] = {}
        self.corrections: dict[tuple[str, int], str] = {}
        self.key_mass: dict[tuple[str, int], Tensor] = {}
        self.causal: set[tuple[str, int]] = set()
        self.no_gradient: set[tuple[str, int]] = set()
        #: with ``weighting="value"``: per call, what the map cannot see, and the weights of
        #: the query tokens' own relevance that follow from it
        self.values: dict[tuple[str, int], ValueTerms] = {}
        self.residuals: dict[tuple[str, int], Tensor] = {}
        self._partial: dict[tuple[str, int], tuple[Tensor, Tensor, bool, bool]] = {}
        #: with a streaming adjoint: reduced maps go to it (records keep an empty tensor)
        self.stream: _Streaming | None = None

    def rearm(self) -> None:
        """Before another gradient pass: what depends on the gradient is computed again."""
        self.no_gradient = set()
        self.heads = {}
        self._partial = {}
        self.stream = None

    def expect(self, recording: BoundRecording) -> None:
        for call in recording.calls:
            key = (call.record.name, call.record.call_index)
            self.corrections[key] = resolve_correction(self.correction, call.node.type)

    def reduce(self, record: AttentionRecord) -> Tensor | None:
        return self._streamed(record, self._reduce(record))

    def _streamed(self, record: AttentionRecord, reduced: Any) -> Any:
        """Hand a reduced map to the streaming adjoint (the record keeps an empty tensor)."""
        key = (record.name, record.call_index)
        if self.stream is None or not isinstance(reduced, Tensor) or key not in self.stream.keys:
            return reduced
        self.stream.offer(key, reduced)
        return reduced.new_empty(0)

    def _reduce(self, record: AttentionRecord) -> Tensor | None:
        key = (record.name, record.call_index)
        if key not in self.corrections:
            return None
        assert record.attention is not None
        # which keys anyone attends to: zero columns are attention-masked padding
        self.key_mass[key] = record.attention.detach().sum(dim=(1, 2))
        if is_causal(record.attention):
            self.causal.add(key)
        if self.corrections[key] != "none" and not _has_gradient(record):
            self.no_gradient.add(key)
        if record.layout is not None:  # correct each raw entry, then fold (exact with overlaps)
            parts = [corrected(p.attention, p.gradient, self.corrections[key])
                     for p in record.parts]
            folded = record.layout.fold(parts)
            if self.keep_heads:
                self._keep(key, record, record.layout.fold([p.attention for p in record.parts]),
                           record.layout.fold([p.gradient for p in record.parts]), folded)
            return folded.mean(dim=1)
        if self.keep_heads:
            self._keep(key, record, record.attention, record.gradient,
                       corrected(record.attention, record.gradient, self.corrections[key]))
        terms = self.values.get(key)
        if terms is not None:
            keep, mix = residual_shares(terms.output_norm, terms.input_norm)
            self.residuals[key] = keep
            weighted = value_weighted(record.attention, record.gradient, self.corrections[key],
                                      terms.norms)
            return mix[:, :, None].to(weighted.dtype) * weighted
        return aggregate_heads(record.attention, record.gradient, self.corrections[key])

    def reduce_heads(self, record: AttentionRecord, attention: Tensor, gradient: Tensor,
                     first: int, heads: int) -> Tensor | None:
        """:meth:`reduce` chunk by chunk of heads (flash capture's backward): the sum of
        ``f(G) ⊙ A`` over heads and the key mass accumulate; the last chunk gives ``Ā``."""
        key = (record.name, record.call_index)
        if key not in self.corrections:
            return None
        if self.keep_heads or key in self.values or record.layout is not None:
            return NotImplemented
        fixed = corrected(attention, gradient, self.corrections[key]).sum(dim=1)
        mass = attention.detach().sum(dim=(1, 2))
        causal = is_causal(attention)
        touched = bool(gradient.ne(0).any())
        if first > 0:
            total, old_mass, old_causal, old_touched = self._partial.pop(key)
            fixed, mass = total + fixed, old_mass + mass
            causal, touched = causal and old_causal, touched or old_touched
        if first + attention.shape[1] < heads:
            self._partial[key] = (fixed, mass, causal, touched)
            return None
        self.key_mass[key] = mass
        if causal:
            self.causal.add(key)
        if self.corrections[key] != "none" and not touched:
            self.no_gradient.add(key)
        return self._streamed(record, fixed / heads)

    def _keep(self, key: tuple[str, int], record: AttentionRecord, attention: Tensor,
              gradient: Tensor | None, fixed: Tensor) -> None:
        """Keep one call's per-head maps (and q/k where they match the dense map's heads)."""
        def plain(t: Tensor) -> Tensor:
            return t.detach().float().cpu()

        states: tuple[Tensor | None, Tensor | None] = (None, None)
        if record.states is not None:
            query, key_states = record.states
            batch, heads, n_query, n_key = attention.shape
            if (tuple(query.shape[:3]) == (batch, heads, n_query)
                    and tuple(key_states.shape[:3]) == (batch, heads, n_key)):
                states = (plain(query), plain(key_states))
        gradient = torch.zeros_like(attention) if gradient is None else gradient
        self.heads[key] = (plain(attention), plain(gradient), plain(fixed), *states)


def _score(score_fn: Callable[[Any], Tensor], output: Any, index: int | None) -> Tensor:
    """The objective on the output; an error names the entry of ``targets`` at fault."""
    if index is None:
        return evaluate_objective(score_fn, output)
    try:
        return evaluate_objective(score_fn, output)
    except (ValueError, TypeError, IndexError) as err:
        raise type(err)(f"targets[{index}]: {err}") from err


def _stack_targets(explanations: list[Explanation]) -> Explanation:
    """One explanation per target → one with a target dimension after the batch."""
    first = explanations[0]

    def stack(field_name: str) -> dict[str, Tensor]:
        return {key: torch.stack([getattr(e, field_name)[key] for e in explanations], 1)
                for key in getattr(first, field_name)}

    return replace(first, relevance=stack("relevance"), readout=stack("readout"),
                   stream_relevance=stack("stream_relevance"),
                   readout_token=torch.stack([e.readout_token for e in explanations], 1))


def _split_targets(explanation: Explanation) -> list[Explanation]:
    """The inverse of :func:`_stack_targets`: one explanation per target."""
    count = explanation.readout_token.shape[1]

    def pick(values: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
        return {key: value[:, k] for key, value in values.items()}

    return [replace(explanation, relevance=pick(explanation.relevance, k),
                    readout=pick(explanation.readout, k),
                    stream_relevance=pick(explanation.stream_relevance, k),
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


def _call_maps(
    recording: BoundRecording, heads: Mapping[tuple[str, int], tuple[Tensor, ...]]
) -> list[CallMaps]:
    out = []
    for call in recording.calls:
        kept = heads.get((call.record.name, call.record.call_index))
        if kept is None:
            continue
        node = call.node
        out.append(CallMaps(call.record.name, call.record.call_index, node.type, node.query,
                            node.key, *kept))
    return out


def _flow_shares(
    recording: BoundRecording,
    flows: list[FlowStep],
    readout: Mapping[str, Tensor],
    method: Propagator,
    absent: Mapping[str, Tensor],
) -> list[FlowShare]:
    """The readout row per source after every step (one full propagation, read as it runs)."""
    kinds = {c.node.name: c.node.type for c in recording.calls}
    shares: list[FlowShare] = []

    zero = next(iter(readout.values())).new_zeros(next(iter(readout.values())).shape[0])

    def read(state: Mapping[tuple[str, str], Tensor]
             ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        rows: dict[str, Tensor] = {}
        own: dict[str, Tensor] = {}
        for name, source in recording.sources.items():
            rows[name], own[name] = zero, zero
            for stream, columns in source.parts:
                for x, w in readout.items():
                    block = state.get((x, stream))
                    if block is None:
                        continue
                    w = w.to(block.dtype)
                    rows[name] = rows[name] + (w.unsqueeze(1) @ block[:, :, columns]).sum(
                        dim=(1, 2))
                    if x == stream:
                        diagonal = block.diagonal(dim1=1, dim2=2)[:, columns]
                        own[name] = own[name] + (w[:, columns] * diagonal).sum(dim=1)
        return rows, own

    def on_step(index: int, step: FlowStep | None, state: Mapping[tuple[str, str], Tensor]
                ) -> None:
        if step is None:
            label, kind = "input", "start"
        elif isinstance(step, TokenMap):
            label, kind = step.name, "junction"
        else:
            group = [step] if isinstance(step, AttentionFlow) else list(step)
            label = ", ".join(f.name for f in group)
            kind = "+".join(sorted({kinds.get(f.label, "A") for f in group}))
        shares.append(FlowShare(label, kind, *read(state)))

    propagate(recording.sizes, flows, method=method, padding=absent, on_step=on_step)
    return shares


def _flows(recording: BoundRecording, stage: str | None,
           residuals: Mapping[tuple[str, int], Tensor],
           maps: Mapping[tuple[str, int], Tensor] | None = None) -> list[FlowStep]:
    """The steps with their maps (``maps`` where given, else the records' reduced maps)."""
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


def _terminal_outputs(
    recording: BoundRecording, records: Sequence[AttentionRecord]
) -> list[tuple[str, Tensor | None, int]]:
    """``(stream, output of its last call, token dim)`` for every stream that nothing reads
    after its last call: the objective reads these tokens directly."""
    flow = recording.flow
    if flow is None:
        return []
    out = []
    for stream in flow.terminal_streams():
        last = flow.last_call(stream)
        name = recording.stream_names.get(stream)
        if last is None or name is None:
            continue
        out.append((name, records[last].output, records[last].token_dim))
    return out


def _gradient_readout(
    recording: BoundRecording,
    terminal: list[tuple[str, Tensor | None, int]],
    grads: list[Tensor | None],
    batch: int,
) -> dict[str, Tensor]:
    r"""The default readout: ``w_x[i] ∝ ‖∂objective/∂y_x[i]‖`` over the output tokens ``y_x`` of
    every terminal stream's last call, normalised to sum 1 per example."""
    weights: dict[str, Tensor] = {}
    for (stream, _, token_dim), grad in zip(terminal, grads, strict=True):
        if grad is None:
            continue
        norms = tokens_view(grad.detach().float(), token_dim).norm(dim=-1)
        if norms.shape != (batch, recording.sizes[stream]) or not bool(norms.any()):
            continue
        weights[stream] = norms
    if not weights:
        raise ValueError(
            "the objective's gradient is zero at the final tokens of every stream "
            f"({sorted(recording.stream_names.values())}): a score that does not depend on the "
            "model's attention (a constant logit, such as a padding token's tied to a zero "
            "embedding row?), or one read from tokens before the last attention call; pass "
            "readout= to say which tokens explain the output"
        )
    total = sum(w.sum(dim=1) for w in weights.values())
    total = torch.where(total > 0, total, torch.ones_like(total))
    return {stream: (w / total[:, None]).contiguous() for stream, w in weights.items()}


def _main_stream(weights: Mapping[str, Tensor]) -> str:
    return max(weights, key=lambda s: float(weights[s].sum()))


def _readout_vector(
    value: Any, stream: str, recording: BoundRecording, padding: Mapping[str, Tensor],
    batch: int,
) -> Tensor:
    if stream not in recording.sizes:
        raise ValueError(
            f"readout names stream '{stream}', which the model does not have (streams: "
            f"{list(recording.sizes)})"
        )
    n_tokens = recording.sizes[stream]
    if isinstance(value, list):
        value = torch.tensor(value)
    if isinstance(value, Tensor) and value.dim() == 2:
        if tuple(value.shape) != (batch, n_tokens):
            raise ValueError(
                f"readout weights for stream '{stream}' must be ({batch}, {n_tokens}), got "
                f"{tuple(value.shape)}"
            )
        return value.float()
    if isinstance(value, str):
        if value != "last":
            raise ValueError(f"readout must be an int, a tensor, 'last' or None, got {value!r}")
        real = padding.get(stream)
        real = torch.ones(batch, n_tokens, dtype=torch.bool) if real is None else ~real
        positions = torch.arange(n_tokens, device=real.device).expand(batch, n_tokens)
        value = torch.where(real, positions, torch.full_like(positions, -1)).amax(dim=1)
    return readout_weights(recording.sizes, stream, value, batch)[stream]


def _has_gradient(record: AttentionRecord) -> bool:
    """Whether any entry of the call's maps (of each part, for a folded call) got a gradient."""
    grads = [p.gradient for p in record.parts] if record.layout is not None else [record.gradient]
    return any(g is not None and bool(g.any()) for g in grads)


def _is_int(value: Any) -> bool:
    """An index: a Python int, not a bool (``True`` would silently mean 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_inputs(inputs: tuple[Any, ...]) -> None:
    """Inputs are batched along their first dimension (Captum's contract)."""
    if not inputs:
        raise ValueError("no inputs: give a tensor or a tuple of tensors")
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"input {position} is a {type(tensor).__name__}, not a tensor; pass arguments "
                "that are not attributed as additional_forward_args"
            )
        shape = tuple(tensor.shape)
        if tensor.is_meta:
            raise ValueError(f"input {position} is on the 'meta' device: it holds no values")
        if tensor.dim() == 0:
            raise ValueError(
                f"input {position} is a 0-d tensor: inputs are batched along their first "
                "dimension (x[None] for one example)"
            )
        if shape[0] == 0:
            raise ValueError(f"input {position} has an empty batch (shape {shape}): nothing to "
                             "explain")
        if tensor.dim() == 1 and not tensor.is_floating_point():
            raise ValueError(
                f"input {position} of shape {shape} has no batch dimension: token ids are "
                "(batch, tokens), so pass ids[None] for one example (a per-example value "
                "belongs in additional_forward_args)"
            )


def _check_target(target: Target, what: str = "target") -> None:
    r"""Captum's target forms, checked before the forward: an int, a tuple of ints, an integer
    tensor (0-d, or one index per example) or a list of one int or tuple per example. Negative
    indices count from the end where Captum indexes (int, tuple, list of tuples), not where it
    gathers (a per-example tensor or list of ints)."""
    forms = ("an int, a tuple of ints, an integer tensor or a list of ints or tuples (one per "
             "example)")
    if target is None or _is_int(target):
        return
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(
                f"{what} is a {target.dtype} tensor; target indices must be integers "
                f"(e.g. {what.split('.')[-1]}.long())"
            )
        if target.dim() > 1 and target.numel() != 1:
            raise ValueError(
                f"{what} tensor has shape {tuple(target.shape)}; give a 0-d tensor or one index "
                "per example, shape (batch,)"
            )
        if target.numel() > 1:
            _check_gathered(target.tolist(), what)
        return
    if isinstance(target, tuple):
        if target and all(_is_int(i) for i in target):
            return
        raise TypeError(f"{what} {target!r} must be a non-empty tuple of ints")
    if isinstance(target, list):
        if not target:
            raise ValueError(f"{what} is an empty list; give one index per example")
        if all(_is_int(t) for t in target):
            _check_gathered(target, what)
            return
        if all(isinstance(t, tuple) and t and all(_is_int(i) for i in t) for t in target):
            return
        kinds = sorted({type(t).__name__ for t in target})
        raise TypeError(f"{what} list holds {', '.join(kinds)}: it must be {forms}")
    raise TypeError(f"{what} must be {forms}, got {type(target).__name__} {target!r}")


def _check_gathered(indices: list[int], what: str) -> None:
    negative = next(((i, v) for i, v in enumerate(indices) if v < 0), None)
    if negative is not None:
        raise ValueError(
            f"{what} for example {negative[0]} is {negative[1]}: a per-example tensor or list "
            "of ints is gathered, which does not count from the end; give indices >= 0"
        )


def _check_not_meta(model: nn.Module) -> None:
    """A model on the ``meta`` device has shapes but no values: say so before the forward."""
    named = chain(model.named_parameters(), model.named_buffers())
    meta = next((name for name, tensor in named if tensor.is_meta), None)
    if meta is not None:
        raise ValueError(
            f"{type(model).__name__} is on the 'meta' device (first: '{meta}'): it has no "
            "weights to run; load them (to_empty() and load_state_dict, or from_pretrained "
            "without a meta device map) before explaining"
        )


def _active_dropout(model: nn.Module) -> str | None:
    """Where dropout acts in a forward: a dropout module with ``p > 0`` in training mode, or
    for a model in train() mode a drop rate in its config (attention dropout, LayerDrop, drop
    path), which models apply without a module."""
    for name, module in model.named_modules():
        if not module.training:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"module '{name}', p={module.p}"
        if isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
            return f"module '{name}', dropout={module.dropout}"
    config = getattr(model, "config", None)
    if model.training and hasattr(config, "to_dict"):
        rates = _drop_rates(config.to_dict())
        if rates:
            return f"config {rates[0][0]}={rates[0][1]}"
    return None


def _drop_rates(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    rates: list[tuple[str, float]] = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            rates += _drop_rates(value, f"{prefix}{key}.")
        elif isinstance(value, float) and value > 0 and "drop" in str(key):
            rates.append((f"{prefix}{key}", value))
    return rates


def _check_readout_token(value: Any, what: str) -> None:
    """Readout tokens are indices: a float or a bool is an error, never truncated."""
    if isinstance(value, list):
        value = torch.tensor(value)
    if isinstance(value, Tensor):
        if value.dim() < 2 and (value.is_floating_point() or value.dtype == torch.bool):
            raise TypeError(
                f"{what} is a {value.dtype} tensor; token indices must be integers ((batch, n) "
                "float tensors are readout weights)"
            )
    elif not (_is_int(value) or isinstance(value, str)):  # strings: 'last', checked later
        raise TypeError(
            f"{what} must be an int, 'last', a (batch,) integer tensor or (batch, n) weights, "
            f"got {type(value).__name__} {value!r}"
        )


def _homogeneous(
    sizes: Mapping[str, int], flows: list[FlowStep], readout: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Semantic inspection: readout rows of the readout streams, column sums of the others."""
    blocks = propagate(sizes, flows)
    relevance = read_rows(blocks, sizes, readout)
    for other in sizes:
        if other not in readout:
            relevance[other] = blocks[(other, other)].sum(dim=1).contiguous()
    return relevance


def _absent_tokens(
    recording: BoundRecording,
    padding: Mapping[str, Tensor],
    causal: set[tuple[str, int]],
    readout: Mapping[str, Tensor],
) -> dict[str, Tensor]:
    """Tokens that would not exist in a reference run on one example: padding, and in a causal
    readout stream the positions after the last readout token (generation stops there)."""
    absent = dict(padding)
    for stream, weights in readout.items():
        first_self = next(
            (c for c in recording.calls if c.node.query == stream and not c.node.is_cross), None
        )
        if first_self is None or (first_self.record.name,
                                  first_self.record.call_index) not in causal:
            continue
        positions = torch.arange(weights.shape[1], device=weights.device)
        last = torch.where(weights > 0, positions, torch.full_like(positions, -1)).amax(dim=1)
        future = positions[None, :] > last[:, None]
        absent[stream] = absent.get(stream, torch.zeros_like(future)) | future
    return absent


def _padding(
    recording: BoundRecording, key_mass: Mapping[tuple[str, int], Tensor]
) -> dict[str, Tensor]:
    """Per stream, tokens no query of a self call attends to (attention-masked padding)."""
    padding: dict[str, Tensor] = {}
    for call in recording.calls:
        key = (call.record.name, call.record.call_index)
        if call.node.is_cross or call.node.query in padding or key not in key_mass:
            continue
        padding[call.node.query] = key_mass[key] == 0
    return padding


class HeterogenousAttentionAttribution(_AttentionAttribution):
    r"""The paper's method: gradient-corrected attention, rolled out and propagated per source.

    For every attention call the heads are aggregated as ``Ā = mean_h(f(∇A) ⊙ A)`` (``f`` from
    ``correction``); self-attention (TypeA/TypeC) updates ``R[x, s] += Ā·R[x, s]``, cross-attention
    (TypeB) ``R[q, s] += Ā·R[k, s]`` for every source ``s``, so each modality's share stays
    separate; the readout token's row of ``R[readout, s]`` is the relevance of stream ``s``.
    ``weighting="value"`` in :meth:`attribute` / :meth:`explain` also weighs each key by the
    norm of its projected value vector and each token's update by its attention output's share
    against its residual (see :meth:`attribute`).

    Args:
        forward_func: the model or a function returning scores (see the base class).
        model: the module to record (defaults to ``forward_func``).
        graph: :class:`LayerGraph`, preset name or ``None`` (preset, else inferred).
        input_mappings: per input, how its elements relate to tokens (``None``: guessed).

    Examples::

        >>> from captum_hetattn import HeterogenousAttentionAttribution
        >>> explainer = HeterogenousAttentionAttribution(
        ...     lambda ids, feats, boxes: model(ids, feats, boxes).question_answering_score,
        ...     model=model, graph="lxmert")
        >>> text, regions, boxes = explainer.attribute(
        ...     (input_ids, visual_feats, visual_pos), target=answer)
        >>> weighted = explainer.explain(
        ...     (input_ids, visual_feats, visual_pos), target=answer, weighting="value")
    """

    accepts_weighting: ClassVar[bool] = True


class GenericAttentionExplainability(_AttentionAttribution):
    r"""GAE (Chefer, Gur, Wolf, ICCV 2021) as its reference code computes it.

    ``pos`` correction; cross calls add ``R̄[q,q]ᵀ·Ā·R̄[k,k]`` to ``R[q,k]`` and ``Ā·R[k,q]`` to
    ``R[q,q]`` (normalisation ``R̄ = (R − I)/rowsum + I``); the readout token's own relevance is
    set to 0 (for a readout vector ``w``, each read token ``j`` loses its own entry
    ``w_j·R[j, j]``). Where the reference divides by a zero row sum (its NaN), the cross term is
    dropped, as its DETR code ends up doing; rows of tokens that the reference run would not have
    do not count: padding, and in a causal readout stream the positions after the readout token (it
    explains token ``j`` of a generation that stopped there). Streams beyond the two of a cross
    call get our rule.

    Args:
        forward_func, model, graph, input_mappings, capture: as for
            :class:`HeterogenousAttentionAttribution`.
        normalize: GAE's normalisation (eq. 8–9); ``False`` for the ablation.
        cross_term: ``"gae"`` (eq. 10) or ``"direct"``, the paper's replacement
            ``R[q,k] += Ā·R̄[k,k]``; with ``normalize=False`` and ``"direct"`` GAE equals
            :class:`HeterogenousAttentionAttribution` under ``pos`` (paper §4), up to the
            readout token's own relevance, which GAE sets to 0.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        model: nn.Module | None = None,
        graph: LayerGraph | str | None = None,
        input_mappings: Sequence[InputMapping] | None = None,
        normalize: bool = True,
        cross_term: str = "gae",
        capture: str = "flash",
    ) -> None:
        super().__init__(forward_func, model, graph, input_mappings, capture)
        if cross_term not in ("gae", "direct"):
            raise ValueError(f"cross_term must be 'gae' or 'direct', got {cross_term!r}")
        self.normalize = normalize
        self.cross_term = cross_term

    def _check_options(self, correction: Correction, noise_link: bool) -> None:
        if noise_link:
            raise ValueError(
                "GenericAttentionExplainability has its own normalisation: use "
                "normalize=True/False in the constructor, not noise_link"
            )

    def _method(self, noise_link: bool) -> Propagator:
        return Gae(normalize=self.normalize, cross_term=self.cross_term)

    def _read(self, blocks, sizes, readout):
        relevance = read_rows(blocks, sizes, readout)
        for stream, weights in readout.items():
            # the reference's R_tt[0, 0] = 0: the readout tokens' own relevance. For a readout
            # vector, each read token's own entry w_j·R[j, j] (a one-hot readout zeroes R[r, r])
            own = weights * blocks[(stream, stream)].diagonal(dim1=-2, dim2=-1)
            relevance[stream] = (relevance[stream] - own).contiguous()
        return relevance


class AttentionRollout(_AttentionAttribution):
    r"""Attention rollout (Abnar & Zuidema 2020): ``rownorm(mean_h A + I)`` multiplied over layers.

    No gradient. Cross calls use the same normalised mixing, ``(R[q,s] + Ā·R[k,s]) / 2``, so
    every stream's share is kept as in our method.
    """

    default_correction: ClassVar[Correction] = "none"
    accepts_gradient_corrections: ClassVar[bool] = False

    def _method(self, noise_link: bool) -> Propagator:
        return Rollout(noise_link=noise_link)


class RawAttention(_AttentionAttribution):
    r"""Raw attention: for every stream ``s``, the head-mean map of the last call from the
    readout stream to ``s``, read at the readout token. No gradient, no propagation."""

    default_correction: ClassVar[Correction] = "none"
    accepts_gradient_corrections: ClassVar[bool] = False
    _has_flow: ClassVar[bool] = False  # one map read at the readout, nothing flows

    def _propagate(self, recording, flows, readout, noise_link, absent):
        # the last call from each readout stream to each key stream, read at the readout
        last: dict[tuple[str, str], AttentionFlow] = {}
        for step in flows:
            if isinstance(step, list):
                for flow in step:
                    if flow.query in readout:
                        last[(flow.query, flow.key)] = flow
        read: dict[str, Tensor] = {}
        for (query, key), flow in last.items():
            row = (readout[query].unsqueeze(1) @ flow.attention.float()).squeeze(1)
            read[key] = read[key] + row if key in read else row
        # tokens spliced into a stream give what their rows received back to their origin
        junctions = [step for step in flows if isinstance(step, TokenMap)]
        if not junctions:
            template = next(iter(read.values()))
            return {s: read[s].contiguous() if s in read else template.new_zeros(
                template.shape[0], n) for s, n in recording.sizes.items()}
        return propagate_row(recording.sizes, junctions, read)
