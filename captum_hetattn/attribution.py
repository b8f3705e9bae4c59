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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
from captum_hetattn.binding import BoundRecording, bind_records
from captum_hetattn.capture import AttentionRecord, AttentionRecorder
from captum_hetattn.graph import LayerGraph
from captum_hetattn.infer import infer_graph
from captum_hetattn.mapping import InputMapping, default_mappings
from captum_hetattn.objectives import (
    Objective,
    Target,
    evaluate_objective,
    primary_target,
    readout_from_target,
    resolve_objective,
)
from captum_hetattn.presets import find_preset, preset
from captum_hetattn.rules import (
    AttentionFlow,
    aggregate_heads,
    propagate,
    propagate_row,
    resolve_correction,
)

Correction = str | Mapping[str, str]
Readout = int | str | Tensor | None
STAGES = (None, "homogeneous")


@dataclass
class Explanation:
    r"""Token-level result of :meth:`explain`.

    Attributes:
        relevance: per stream, token relevance ``(B, n_stream)``, as propagated (not rescaled).
        readout_stream: the stream whose row was read.
        readout_token: ``(B,)`` token index of the row, per example.
        graph: the layer graph used.
        sizes: tokens per stream.
        padding: per stream, ``(B, n_stream)`` booleans, True where no query attended to the
            token (attention-masked padding).
        maps: with ``return_maps=True``, each node's aggregated map ``Ā`` ``(B, n_q, n_k)``,
            keyed by module name and call index.
    """

    relevance: dict[str, Tensor]
    readout_stream: str
    readout_token: Tensor
    graph: LayerGraph
    sizes: dict[str, int]
    padding: dict[str, Tensor] = field(default_factory=dict)
    maps: dict[tuple[str, int], Tensor] | None = None


class _AttentionAttribution(Attribution):
    """The shared engine; subclasses set how maps are aggregated and propagated."""

    default_correction: ClassVar[Correction] = "pos"
    accepts_gradient_corrections: ClassVar[bool] = True

    def __init__(
        self,
        forward_func: Callable[..., Any],
        model: nn.Module | None = None,
        graph: LayerGraph | str | None = None,
        input_mappings: Sequence[InputMapping] | None = None,
    ) -> None:
        r"""
        Args:
            forward_func: the model, or any function of the inputs that returns scores (logits)
                as a tensor; it must run ``model``.
            model: the ``nn.Module`` whose attention is explained; defaults to ``forward_func``
                when that is a module.
            graph: a :class:`LayerGraph`, a preset name (``"lxmert"``, ``"detr"``, ...), or
                ``None``: the preset for the model class / ``config.model_type``, else a graph
                inferred from the first call's inputs.
            input_mappings: one :class:`~captum_hetattn.mapping.InputMapping` per input
                (``Tokens("text")``, ``PatchGrid("image")``, ``NoAttribution()``, ...); ``None``
                guesses them from the input shapes.
        """
        super().__init__(forward_func)
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
        if isinstance(graph, str):
            graph = preset(graph)
        elif graph is None:
            graph = find_preset(model)
        elif not isinstance(graph, LayerGraph):
            raise TypeError(
                f"graph must be a LayerGraph, a preset name or None, got {type(graph).__name__}"
            )
        self.graph: LayerGraph | None = graph
        self.input_mappings = tuple(input_mappings) if input_mappings is not None else None

    # ------------------------------------------------------------------ method knobs
    def _check_options(self, correction: Correction, noise_link: bool) -> None:
        if not self.accepts_gradient_corrections and correction != "none":
            raise ValueError(
                f"{type(self).__name__} uses no gradient: correction must be 'none', "
                f"got {correction!r}"
            )

    def _propagate(
        self,
        recording: BoundRecording,
        flows: list[list[AttentionFlow]],
        readout_stream: str,
        readout_token: Tensor,
        noise_link: bool,
        absent: Mapping[str, Tensor],
    ) -> dict[str, Tensor]:
        if noise_link:
            blocks = propagate(recording.sizes, flows, with_noise_link=True)
            return _read_rows(blocks, recording.sizes, readout_stream, readout_token)
        return propagate_row(recording.sizes, flows, readout_stream, readout_token)

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
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Relevance of every input element, laid out like the inputs (Captum's contract).

        Args:
            inputs: a tensor or a tuple of tensors, the first arguments of ``forward_func``
                (token ids, embeddings, region features, pixel values, audio features).
            target: Captum's target (int, tuple, tensor, list): which output score to explain.
                For per-token outputs ``(B, T, C)`` — DETR queries, decoder positions — a tuple
                ``(t, c)`` also makes token ``t`` the readout.
            additional_forward_args: further arguments of ``forward_func`` (not attributed).
            correction: ``"pos"`` (default), ``"full"``, ``"abs"``, ``"none"``, or per type
                ``{"A": "abs", "B": "pos", "C": "pos"}``.
            noise_link: read ``(R[k,k] − I)/rowsum + I`` in cross-attention (paper eq. 8–10).
            readout: the token whose row explains the output: an int, a ``(B,)`` tensor,
                ``"last"`` (last non-padding token), or ``None`` (from the target, else the
                graph's default, e.g. ``[CLS]``).
            objective: instead of ``target``, a callable ``output -> (B,)`` such as
                ``Contrast(a, b)``.
            stage: ``"homogeneous"`` stops after the TypeA nodes (semantic inspection, paper
                §5.2): the readout row for the readout stream, column sums (attention each token
                receives) for the others. Use it with ``correction="abs"``.

        Returns:
            Attributions shaped like ``inputs`` (tensor for a tensor, tuple for a tuple),
            contiguous float tensors.

        Examples::

            >>> explainer = HeterogenousAttentionAttribution(model)
            >>> attributions = explainer.attribute(pixel_values, target=3)
        """
        is_tuple = _is_tuple(inputs)
        formatted = _format_tensor_into_tuples(inputs)
        explanation = self._explain(
            formatted, target, additional_forward_args, correction, noise_link, readout,
            objective, stage, return_maps=False,
        )
        mappings = self.input_mappings or default_mappings(formatted, explanation.sizes)
        if len(mappings) != len(formatted):
            raise ValueError(
                f"{len(mappings)} input_mappings for {len(formatted)} inputs; give one per input"
            )
        attributions = []
        for position, (mapping, tensor) in enumerate(zip(mappings, formatted, strict=True)):
            if mapping.stream and mapping.stream not in explanation.relevance:
                raise ValueError(
                    f"input {position}: mapping names stream '{mapping.stream}', which the graph "
                    f"does not have (streams: {list(explanation.relevance)})"
                )
            relevance = explanation.relevance.get(mapping.stream)
            if relevance is None:  # NoAttribution without a stream
                relevance = next(iter(explanation.relevance.values()))
            dtype = tensor.dtype if tensor.is_floating_point() else relevance.dtype
            mapped = mapping.to_input(relevance, tensor, position)
            attributions.append(mapped.to(dtype=dtype, device=tensor.device).contiguous())
        return _format_output(is_tuple, tuple(attributions))

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
    ) -> Explanation:
        r"""Token relevance per stream, for users who want tokens rather than input shapes.

        Same arguments as :meth:`attribute`, plus ``return_maps`` to keep every node's ``Ā``.

        Returns:
            An :class:`Explanation`.
        """
        return self._explain(
            _format_tensor_into_tuples(inputs), target, additional_forward_args, correction,
            noise_link, readout, objective, stage, return_maps,
        )

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
    ) -> Explanation:
        correction = self.default_correction if correction is None else correction
        self._check_options(correction, noise_link)
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        score_fn = resolve_objective(target, objective)
        extra = _format_additional_forward_args(additional_forward_args) or ()
        graph = self.graph
        if graph is None:
            graph = infer_graph(self.model, *inputs, *extra)
            self.graph = graph
        names = [name for name, _ in self.model.named_modules()]
        corrections = {
            (node.name, node.call_index or 0): resolve_correction(correction, node.type)
            for step in graph.bind(names)
            for node in step
        }
        key_mass: dict[tuple[str, int], Tensor] = {}
        causal: set[tuple[str, int]] = set()

        def reduce(record: AttentionRecord) -> Tensor | None:
            key = (record.name, record.call_index)
            if key not in corrections:
                return None
            assert record.attention is not None
            # which keys anyone attends to: zero columns are attention-masked padding
            key_mass[key] = record.attention.detach().sum(dim=(1, 2))
            if record.n_query == record.n_key and not record.attention.triu(1).any():
                causal.add(key)
            return aggregate_heads(record.attention, record.gradient, corrections[key])

        with torch.enable_grad(), AttentionRecorder(self.model, reduce=reduce) as recorder:
            output = self.forward_func(*inputs, *extra)
            scores = evaluate_objective(score_fn, output)
            if any(c != "none" for c in corrections.values()):
                recorder.compute_gradients(scores.sum())
        recording = bind_records(graph, recorder.records, names)
        readout_stream = graph.resolved_readout_stream
        padding = _padding(recording, key_mass)
        token = self._readout_token(
            readout, primary_target(target, objective), output, graph, recording, padding,
            readout_stream, scores.shape[0],
        )
        flows = [
            [
                AttentionFlow(c.node.query, c.node.key, c.record.reduced, c.node.name)
                for c in step
                if stage is None or c.node.type == "A"
            ]
            for step in recording.steps
        ]
        flows = [group for group in flows if group]
        if not flows:
            raise ValueError(f"stage={stage!r} leaves no attention node of the graph")
        if stage == "homogeneous":
            relevance = _homogeneous(recording.sizes, flows, readout_stream, token)
        else:
            absent = _absent_tokens(recording, padding, causal, readout_stream, token)
            relevance = self._propagate(
                recording, flows, readout_stream, token, noise_link, absent
            )
        maps = None
        if return_maps:
            maps = {(c.record.name, c.record.call_index): c.record.reduced
                    for step in recording.steps for c in step}
        return Explanation(
            relevance=relevance,
            readout_stream=readout_stream,
            readout_token=token,
            graph=graph,
            sizes=dict(recording.sizes),
            padding=padding,
            maps=maps,
        )

    def _readout_token(
        self,
        readout: Readout,
        target: Target,
        output: Any,
        graph: LayerGraph,
        recording: BoundRecording,
        padding: Mapping[str, Tensor],
        stream: str,
        batch: int,
    ) -> Tensor:
        n_tokens = recording.sizes[stream]
        device = next(iter(padding.values())).device if padding else None
        if readout is None:
            from_target = readout_from_target(target, output, n_tokens)
            readout = graph.readout_token if from_target is None else from_target
        if isinstance(readout, str):
            if readout != "last":
                raise ValueError(
                    f"readout must be an int, a tensor, 'last' or None, got {readout!r}"
                )
            real = padding.get(stream)
            real = torch.ones(batch, n_tokens, dtype=torch.bool) if real is None else ~real
            positions = torch.arange(n_tokens, device=real.device).expand(batch, n_tokens)
            token = torch.where(real, positions, torch.full_like(positions, -1)).amax(dim=1)
        else:
            token = torch.as_tensor(readout, device=device).long()
            if token.dim() == 0:
                token = token.expand(batch)
        if token.shape != (batch,):
            raise ValueError(
                f"readout must give one token per example ({batch}), got {tuple(token.shape)}"
            )
        bad = (token < 0) | (token >= n_tokens)
        if bad.any():
            raise ValueError(
                f"readout token {token[bad].tolist()} out of range for stream '{stream}' "
                f"({n_tokens} tokens)"
            )
        return token.contiguous()


def _read_rows(
    blocks: Mapping[tuple[str, str], Tensor], sizes: Mapping[str, int], stream: str, token: Tensor
) -> dict[str, Tensor]:
    rows = torch.arange(token.shape[0], device=token.device)
    return {s: blocks[(stream, s)][rows, token].contiguous() for s in sizes}


def _homogeneous(
    sizes: Mapping[str, int], flows: list[list[AttentionFlow]], stream: str, token: Tensor
) -> dict[str, Tensor]:
    """Semantic inspection: readout row of the readout stream, column sums of the others."""
    blocks = propagate(sizes, flows)
    relevance = _read_rows(blocks, sizes, stream, token)
    for other in sizes:
        if other != stream:
            relevance[other] = blocks[(other, other)].sum(dim=1).contiguous()
    return relevance


def _absent_tokens(
    recording: BoundRecording,
    padding: Mapping[str, Tensor],
    causal: set[tuple[str, int]],
    readout_stream: str,
    readout_token: Tensor,
) -> dict[str, Tensor]:
    """Tokens that would not exist in a reference run on one example: padding, and in a causal
    readout stream the positions after the readout token (generation stops there)."""
    absent = dict(padding)
    first_self = next(
        (c for step in recording.steps for c in step
         if c.node.query == readout_stream and not c.node.is_cross),
        None,
    )
    if first_self is not None and (first_self.record.name, first_self.record.call_index) in causal:
        positions = torch.arange(recording.sizes[readout_stream], device=readout_token.device)
        future = positions[None, :] > readout_token[:, None]
        absent[readout_stream] = absent.get(readout_stream, torch.zeros_like(future)) | future
    return absent


def _padding(
    recording: BoundRecording, key_mass: Mapping[tuple[str, int], Tensor]
) -> dict[str, Tensor]:
    """Per stream, tokens no query of a self call attends to (attention-masked padding)."""
    padding: dict[str, Tensor] = {}
    for step in recording.steps:
        for call in step:
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
    """


class GenericAttentionExplainability(_AttentionAttribution):
    r"""GAE (Chefer, Gur, Wolf, ICCV 2021) as its reference code computes it.

    ``pos`` correction; cross calls add ``R̄[q,q]ᵀ·Ā·R̄[k,k]`` to ``R[q,k]`` and ``Ā·R[k,q]`` to
    ``R[q,q]`` (normalisation ``R̄ = (R − I)/rowsum + I``); the readout token's own relevance is
    set to 0. Where the reference divides by a zero row sum (its NaN), the cross term is dropped,
    as its DETR code ends up doing; rows of tokens that the reference run would not have do not
    count: padding, and in a causal readout stream the positions after the readout token (it
    explains token ``j`` of a generation that stopped there). Streams beyond the two of a cross
    call get our rule.

    Args:
        forward_func, model, graph, input_mappings: as for
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
    ) -> None:
        super().__init__(forward_func, model, graph, input_mappings)
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

    def _propagate(self, recording, flows, readout_stream, readout_token, noise_link, absent):
        blocks = propagate(
            recording.sizes, flows, rule="gae", gae_normalize=self.normalize,
            gae_cross_term=self.cross_term, padding=absent,
        )
        relevance = _read_rows(blocks, recording.sizes, readout_stream, readout_token)
        own = relevance[readout_stream].clone()
        own[torch.arange(own.shape[0]), readout_token] = 0  # the reference's R_tt[0, 0] = 0
        relevance[readout_stream] = own
        return relevance


class AttentionRollout(_AttentionAttribution):
    r"""Attention rollout (Abnar & Zuidema 2020): ``rownorm(mean_h A + I)`` multiplied over layers.

    No gradient. Cross calls use the same normalised mixing, ``(R[q,s] + Ā·R[k,s]) / 2``, so
    every stream's share is kept as in our method.
    """

    default_correction: ClassVar[Correction] = "none"
    accepts_gradient_corrections: ClassVar[bool] = False

    def _propagate(self, recording, flows, readout_stream, readout_token, noise_link, absent):
        if noise_link:
            blocks = propagate(recording.sizes, flows, with_noise_link=True, rollout=True)
            return _read_rows(blocks, recording.sizes, readout_stream, readout_token)
        return propagate_row(
            recording.sizes, flows, readout_stream, readout_token, rollout=True
        )


class RawAttention(_AttentionAttribution):
    r"""Raw attention: for every stream ``s``, the head-mean map of the last call from the
    readout stream to ``s``, read at the readout token. No gradient, no propagation."""

    default_correction: ClassVar[Correction] = "none"
    accepts_gradient_corrections: ClassVar[bool] = False

    def _propagate(self, recording, flows, readout_stream, readout_token, noise_link, absent):
        rows = torch.arange(readout_token.shape[0], device=readout_token.device)
        relevance: dict[str, Tensor] = {}
        for group in flows:
            for flow in group:
                if flow.query == readout_stream:
                    relevance[flow.key] = flow.attention[rows, readout_token]
        template = next(iter(relevance.values()))
        return {
            s: relevance[s].contiguous() if s in relevance else template.new_zeros(len(rows), n)
            for s, n in recording.sizes.items()
        }
