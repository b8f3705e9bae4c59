r"""Captum attributions over attention: the paper's method and its baselines, on one engine.

One ``attribute`` call = one forward and one backward of the objective to the attention maps
(never into the parameters): :class:`~captum_hetattn.capture.AttentionRecorder` records every
map and reduces its heads as soon as its gradient arrives; the recorded calls are matched to the
layer graph; :mod:`~captum_hetattn.rules` propagates relevance (one readout row by the adjoint
where the rules are linear); :mod:`~captum_hetattn.mapping` lays the token relevance out like
the inputs. The steps of a call live in :mod:`~captum_hetattn.engine.pipeline`; the classes here
are the faces: their options, their propagator, and the mapping of inputs (``attribute``,
``explain``, and ``attribute_and_explain`` for both from one run).

- :class:`HeterogenousAttentionAttribution` — the paper: gradient-corrected maps, rollout
  through self-attention, cross-attention with every source kept separate, optional noise link.
- :class:`GenericAttentionExplainability` — GAE (Chefer et al., ICCV 2021) as its reference code
  computes it (``pos`` correction, normalisation, eq. 10 with the transpose, readout token's own
  relevance set to 0).
- :class:`AttentionRollout` — Abnar & Zuidema 2020 (no gradient), generalised to cross calls.
- :class:`RawAttention` — the head-mean attention of the last call into the readout stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_hetattn._captum_compat import (
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    log_usage,
)
from captum_hetattn.binding import BoundRecording
from captum_hetattn.binding.layout_cache import LayoutCache
from captum_hetattn.capture.memo import StructureMemo
from captum_hetattn.engine.checks import check_flag, check_options
from captum_hetattn.engine.pipeline import Correction, Options, run
from captum_hetattn.engine.readout import Readout
from captum_hetattn.engine.report import Report
from captum_hetattn.engine.result import Explanation
from captum_hetattn.engine.targets import plain_indices, split_targets
from captum_hetattn.graph import LayerGraph
from captum_hetattn.graph.presets import find_preset, preset
from captum_hetattn.mapping import Gathered, InputMapping, NoAttribution, default_mappings
from captum_hetattn.objectives import Objective, Target
from captum_hetattn.rules.propagators import Gae, Ours, Propagator, Raw, Rollout


class _AttentionAttribution(Attribution):
    """The shared face: options, ``attribute`` / ``explain`` and the mapping of inputs; each
    method names its propagator (:meth:`_propagator`) and its options (class attributes)."""

    default_correction: ClassVar[Correction] = "pos"
    accepts_gradient_corrections: ClassVar[bool] = True
    #: whether ``weighting="value"`` is an option (the paper's rules only)
    accepts_weighting: ClassVar[bool] = False
    #: why ``noise_link=True`` is refused, for a method that has its own normalisation
    noise_link_refusal: ClassVar[str | None] = None

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
                as a tensor (a transformers model output with a ``logits`` tensor is read at
                its logits); it must run ``model``.
            model: the ``nn.Module`` whose attention is explained; defaults to ``forward_func``
                when that is a module.
            graph: a :class:`LayerGraph`, a preset name (``"lxmert"``, ``"detr"``, ...),
                ``"infer"`` (a graph inferred from the data flow of the first call), or ``None``:
                the preset for the model class / ``config.model_type`` if one fits, else
                inferred.
            input_mappings: one :class:`~captum_hetattn.mapping.InputMapping` per input
                (``Tokens("text")``, ``PatchGrid("image")``, ``NoAttribution()``, ...); ``None``
                maps every input by the rows of the streams its elements feed (traced on each
                call), falling back to its shape where an element feeds several rows through
                overlapping windows (an input read by a patch embedding whose tokens the model
                then repeats, as ViLT does over pictures of different sizes, is refused).
            capture: ``"flash"`` (default): modules that use the transformers attention
                interface keep the fast kernel (sdpa) in the forward and each call's map is
                built inside the backward from its queries, keys and output gradient, one call
                at a time — equal to eager capture, checked against the module's eager
                function on the first call of each attention class (a class whose outputs
                differ is captured eagerly), and where a call's maps are small
                (``capture.FLASH_MIN_ENTRIES``) eager capture, cheaper there, is used.
                ``"eager"``: every map is computed eagerly and
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
        self.graph_is_default = graph is None
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
        self.report = Report()
        # token layouts of windowed / banded calls, found once per call signature
        self.layouts = LayoutCache()
        # answers about module structure (whether a module that made no softmax mixes tokens)
        self.structures = StructureMemo()

    def _propagator(self, noise_link: bool) -> Propagator:
        """The rules this method propagates with."""
        return Ours(noise_link=noise_link)

    def _options(self, correction: Correction | None, noise_link: bool, **call: Any) -> Options:
        """The call's options, checked, with the propagator built once."""
        correction = self.default_correction if correction is None else correction
        check_options(
            type(self).__name__, correction, noise_link, call["weighting"], call["stage"],
            uses_gradient=self.accepts_gradient_corrections,
            weighs_values=self.accepts_weighting, noise_link_refusal=self.noise_link_refusal,
        )
        check_flag("include_own", call.get("include_own", False))
        call["target"], call["readout"] = (plain_indices(call["target"]),
                                           plain_indices(call["readout"]))
        call["targets"] = plain_indices(call["targets"])  # a list's entries, if a list
        return Options(correction=correction, noise_link=noise_link,
                       propagator=self._propagator(noise_link), **call)

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
        include_own: bool = False,
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
                objective's gradient (see the class docstring); an int, a ``(B,)`` tensor
                (negative indices count from the end) or ``"last"`` (last non-padding token)
                of the main readout stream; or a dict
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
            include_own: ``False`` (default): the read tokens' own share is left out — every
                read token ``j`` starts with the identity and keeps ``w_j·R[j, j]`` (its
                residual path), which says nothing about the evidence and would swamp the rest
                (a ``[CLS]`` readout: 1.0 against 1e-5 elsewhere); it is kept apart in
                ``Explanation.own`` (GAE's ``R[0, 0] = 0``, generalised to every method).
                ``True``: the paper's raw readout row, own share included.

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
        attributions, _ = self.attribute_and_explain(
            inputs, target, additional_forward_args, correction=correction,
            noise_link=noise_link, readout=readout, objective=objective, stage=stage,
            weighting=weighting, targets=targets, include_own=include_own,
        )
        return attributions

    @log_usage()
    def attribute_and_explain(
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
        include_own: bool = False,
    ) -> tuple[Tensor | tuple[Tensor, ...], Explanation]:
        r"""Both answers from one forward and backward: the relevance laid out like the inputs
        (what :meth:`attribute` returns) and the token-level :class:`Explanation` (what
        :meth:`explain` returns), for callers that show both (words and pixels beside the
        token relevance and the maps) without running the model twice. Same arguments as
        :meth:`attribute`, plus ``return_maps``.

        Args:
            return_maps: keep every call's ``Ā`` in the explanation (as for :meth:`explain`).

        Returns:
            ``(attributions, explanation)``: ``attributions`` exactly as :meth:`attribute`
            returns them (a tensor for a tensor, a tuple for a tuple; a target dimension after
            the batch with ``targets``), ``explanation`` as :meth:`explain` returns it — the
            order of Captum's ``(attributions, delta)``.

        Examples::

            >>> explainer = HeterogenousAttentionAttribution(model)
            >>> (ids_rel, pixel_rel), explanation = explainer.attribute_and_explain(
            ...     (input_ids, pixel_values), target=answer, return_maps=True)
            >>> explanation.relevance  # the same run's token relevance per source
        """
        formatted = _format_tensor_into_tuples(inputs)
        options = self._options(
            correction, noise_link, readout=readout, target=target, objective=objective,
            targets=targets, stage=stage, return_maps=return_maps, weighting=weighting,
            map_inputs=True, include_own=include_own,
        )
        explanation, recording = run(self, formatted, additional_forward_args, options)
        attributions = self._map_inputs(formatted, explanation, recording, targets is not None)
        return _format_output(_is_tuple(inputs), attributions), explanation

    def _map_inputs(
        self, formatted: tuple[Tensor, ...], explanation: Explanation,
        recording: BoundRecording, several_targets: bool,
    ) -> tuple[Tensor, ...]:
        """Every input's relevance laid out like it, in its dtype (floats) and on its device."""
        if self.input_mappings is not None and len(self.input_mappings) != len(formatted):
            raise ValueError(
                f"{len(self.input_mappings)} input_mappings for {len(formatted)} inputs; give one "
                "per input"
            )
        per_target = split_targets(explanation) if several_targets else [explanation]
        attributions = []
        for position, tensor in enumerate(formatted):
            mapped_targets = []
            for each in per_target:
                pairs = self._input_mapping(position, tensor, each, recording)
                mapped_targets.append(sum(m.to_input(r, tensor, position) for m, r in pairs))
            mapped = torch.stack(mapped_targets, 1) if several_targets else mapped_targets[0]
            dtype = tensor.dtype if tensor.is_floating_point() else mapped.dtype
            attributions.append(mapped.to(dtype=dtype, device=tensor.device).contiguous())
        return tuple(attributions)

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
        _refuse_repeated_tokens(position, tensor, stream, recording)
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
        include_own: bool = False,
    ) -> Explanation:
        r"""Token relevance per source, for users who want tokens rather than input shapes.

        Same arguments as :meth:`attribute`, plus ``return_maps`` to keep every call's ``Ā``.
        With ``targets=[...]`` every per-example field gets a target dimension after the batch
        (``relevance[source]`` is ``(B, K, n)``, ``readout_token`` ``(B, K)``).

        Args:
            include_own: ``False`` (default): ``relevance`` and ``stream_relevance`` are the
                context relevance, the read tokens' own share (``w_j·R[j, j]``) taken out and
                kept in ``Explanation.own``; ``True``: the paper's raw readout row.

        Returns:
            An :class:`Explanation`.
        """
        options = self._options(
            correction, noise_link, readout=readout, target=target, objective=objective,
            targets=targets, stage=stage, return_maps=return_maps, weighting=weighting,
            include_own=include_own,
        )
        explanation, _ = run(self, _format_tensor_into_tuples(inputs), additional_forward_args,
                             options)
        return explanation


def _refuse_repeated_tokens(position: int, tensor: Tensor, stream: str,
                            recording: BoundRecording) -> None:
    r"""An input read by a non-overlapping patch embedding whose tokens the model then
    repeats or drops (ViLT over pictures of different sizes fills the smaller ones with
    random repeats of padding patches, in random order): its rows were traced and are not a
    grid, so the layout by shape would put each patch's relevance on the wrong pixels.

    Raises:
        ValueError: naming the input and the module whose tokens feed several rows.
    """
    flow = recording.flow
    modules = sorted({name for at, name in (flow.repeated if flow else ()) if at == position})
    if modules:
        raise ValueError(
            f"input {position} of shape {tuple(tensor.shape)} is read by '{modules[0]}', whose "
            f"tokens the model repeats in stream '{stream}' (one token fed to several rows, "
            "e.g. ViLT filling pictures of different sizes with random padding patches): its "
            "relevance cannot be laid out like the input. Explain inputs that the model reads "
            "one row per token (ViLT: pictures of one size per batch, or one at a time), use "
            "explain() for the token relevance, or pass input_mappings=[...]"
        )


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

    noise_link_refusal: ClassVar[str | None] = (
        "GenericAttentionExplainability has its own normalisation: use normalize=True/False in "
        "the constructor, not noise_link"
    )

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

    def _propagator(self, noise_link: bool) -> Propagator:
        return Gae(normalize=self.normalize, cross_term=self.cross_term)


class AttentionRollout(_AttentionAttribution):
    r"""Attention rollout (Abnar & Zuidema 2020): ``rownorm(mean_h A + I)`` multiplied over layers.

    No gradient. Cross calls use the same normalised mixing, ``(R[q,s] + Ā·R[k,s]) / 2``, so
    every stream's share is kept as in our method.
    """

    default_correction: ClassVar[Correction] = "none"
    accepts_gradient_corrections: ClassVar[bool] = False

    def _propagator(self, noise_link: bool) -> Propagator:
        return Rollout(noise_link=noise_link)


class RawAttention(_AttentionAttribution):
    r"""Raw attention: for every stream ``s``, the head-mean map of the last call from the
    readout stream to ``s``, read at the readout token. No gradient, no propagation."""

    default_correction: ClassVar[Correction] = "none"
    accepts_gradient_corrections: ClassVar[bool] = False

    def _propagator(self, noise_link: bool) -> Propagator:
        return Raw()
