r"""What one call returns: :class:`Explanation` (with its :class:`CallMaps` and
:class:`FlowShare`), the padding found in the maps, and the assembly of the token relevance per
source from the relevance per stream."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from captum_hetattn.binding import BoundRecording
from captum_hetattn.engine.readout import main_of
from captum_hetattn.graph import BoundNode, LayerGraph
from captum_hetattn.rules.adjoint import propagate
from captum_hetattn.rules.ops import FlowStep, TokenMap, as_group
from captum_hetattn.rules.propagators import Propagator


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
            the step (at the start, all of it is on the readout tokens themselves; none on a
            learned parameter token, which starts with no input relevance).
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
            propagated (not rescaled): ``Σ_x w_xᵀ R[x, s]`` over the readout streams ``x``,
            by default with the read tokens' own share (:attr:`own`) taken out — the context
            relevance; ``include_own=True`` gives the paper's raw row.
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
        stream_relevance: per stream, the relevance of its own token columns ``(B, n_stream)``
            (the own share taken out as in ``relevance``, unless ``include_own=True``).
        own: per stream, ``(B, n_stream)``: the read tokens' own share of the readout row,
            ``w_j·R[j, j]`` for every read token ``j`` (zeros elsewhere): the identity the
            relevance state starts with on the read token and what attention brings back to
            it, which says nothing about the evidence. For a readout over several tokens
            under the adjoint (ours, rollout), the part of ``R[j, j]`` on the paths that never
            leave ``j`` (see the README's "What users see"). Without ``include_own`` it is not
            in ``relevance``; ``stream_relevance[x] + own[x]`` is the paper's raw row.
        calls: every bound call in call order, with its concrete type A/B/C.
        call_maps: with ``return_maps=True``, the per-head :class:`CallMaps` of every bound call
            in call order (for the views in :mod:`captum_hetattn.views`).
        flow: with ``return_maps=True`` (and no ``stage``), :class:`FlowShare` per step of the
            layer graph, the start first: how the readout's relevance is shared between sources
            as the steps run (the full propagation; its last entry sums ``relevance``).
        parameter_tokens: per stream that has them, ``(B, n_stream)`` booleans, True at the
            learned parameter tokens the model spliced into an input's tokens (a ``[CLS]``
            added inside the model, registers, group or prompt tokens): no input feeds them,
            so they start with no input relevance and their columns are zero everywhere
            (``relevance``, ``stream_relevance``, ``own``, ``flow``).
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
    own: dict[str, Tensor] = field(default_factory=dict)
    calls: list[BoundNode] = field(default_factory=list)
    call_maps: list[CallMaps] | None = None
    flow: list[FlowShare] | None = None
    parameter_tokens: dict[str, Tensor] = field(default_factory=dict)


def parameter_tokens(recording: BoundRecording) -> dict[str, Tensor]:
    r"""Per stream, ``(B, n)``: the learned parameter tokens spliced into an input's stream
    (``DataFlow.parameter_rows``, named)."""
    flow = recording.flow
    if flow is None:
        return {}
    return {recording.stream_names[index]: rows for index, rows in flow.parameter_rows.items()
            if index in recording.stream_names}


def without_parameter_tokens(rows: Mapping[str, Tensor], learned: Mapping[str, Tensor]
                             ) -> dict[str, Tensor]:
    r"""``rows`` with the columns of parameter tokens zero: they start with no input
    relevance (DESIGN §11). The rules right-multiply the initial state, so for every linear
    method this is exactly a zero initial row; GAE's normalisation and the noise link keep the
    identity on every token in ``R − I`` (as GAE's reference code keeps ViT's ``[CLS]`` and
    DETR's queries in its state) and these columns are read as zero."""
    return {s: row.masked_fill(learned[s].to(row.device), 0) if s in learned
            and learned[s].shape == row.shape else row for s, row in rows.items()}


def padding_of(
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


def assemble(
    recording: BoundRecording,
    graph: LayerGraph,
    stream_relevance: dict[str, Tensor],
    weights: dict[str, Tensor],
    padding: dict[str, Tensor],
    return_maps: bool,
    own: dict[str, Tensor] | None = None,
) -> Explanation:
    r"""The explanation of one target: relevance per source from the relevance per stream.

    Args:
        recording: the bound recording.
        graph: the layer graph used.
        stream_relevance: per stream, the relevance of its own tokens ``(B, n_stream)``.
        weights: the readout weights.
        padding: per stream, ``(B, n)`` padding tokens.
        return_maps: keep each call's reduced map.
        own: per stream, the read tokens' own share (:attr:`Explanation.own`).
    """
    learned = parameter_tokens(recording)
    stream_relevance = without_parameter_tokens(stream_relevance, learned)
    own = without_parameter_tokens(own or {}, learned)
    relevance = {
        name: sum(stream_relevance[stream][:, columns] for stream, columns in source.parts)
        .contiguous()
        for name, source in recording.sources.items()
    }
    source_padding = {
        name: padding[source.stream][:, source.columns]
        for name, source in recording.sources.items() if source.stream in padding
    }
    main = main_of(weights)
    maps = None
    if return_maps:
        maps = {(c.record.name, c.record.call_index): c.record.reduced
                for c in recording.calls}
    return Explanation(
        relevance=relevance,
        readout_stream=main,
        readout_token=weights[main].argmax(dim=1),
        graph=graph,
        sizes={name: r.shape[1] for name, r in relevance.items()},
        padding=source_padding,
        maps=maps,
        readout=weights,
        streams=dict(recording.sizes),
        sources={name: source.stream for name, source in recording.sources.items()},
        stream_relevance=stream_relevance,
        own=own,
        calls=[c.node for c in recording.calls],
        parameter_tokens=learned,
    )


def call_maps(
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


def flow_shares(
    recording: BoundRecording,
    flows: list[FlowStep],
    readout: Mapping[str, Tensor],
    method: Propagator,
    absent: Mapping[str, Tensor],
) -> list[FlowShare]:
    """The readout row per source after every step (one full propagation, read as it runs)."""
    kinds = {c.node.name: c.node.type for c in recording.calls}
    shares: list[FlowShare] = []
    learned = parameter_tokens(recording)

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
                    if stream in learned:  # parameter tokens' columns: no input relevance
                        block = block.masked_fill(learned[stream][:, None, :].to(block.device),
                                                  0)
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
            group = as_group(step)
            label = ", ".join(f.name for f in group)
            kind = "+".join(sorted({kinds.get(f.label, "A") for f in group}))
        shares.append(FlowShare(label, kind, *read(state)))

    propagate(recording.sizes, flows, method=method, padding=absent, on_step=on_step)
    return shares
