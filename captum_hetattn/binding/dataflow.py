r"""Data flow between attention calls, read from the autograd graph of one recorded forward.

What a layer graph needs and a model does not say, found from where each attention call's
inputs come from (docs/architecture.md §2), never from token counts:

- **streams**: a call continues the stream whose latest state its input is (same tower, same
  length), else its input is *probed* (below): an exact identity map from one stream continues
  it, anything else starts a new stream. Towers of equal length stay apart; interleaved towers
  keep their streams.
- **junctions**: rows of a new stream (or of a cross call's key input) that come from another
  stream's tokens without attention — spliced at placeholder positions, concatenated, projected,
  merged (pixel shuffle, 2×2 merger) — as a token map ``M`` per example, placed right after the
  last call of the origin stream whose state they copy.
- **sources**: a stream's rows that no stream feeds come from the model inputs; they are split
  into one source per input signature (VisualBERT's text ids vs visual embeddings), and every
  input's elements are mapped to the stream rows they feed (``InputRows``), so that
  ``attribute()`` lays relevance out like the inputs without guessing from shapes.

**Probing.** A walk of the autograd graph from a tensor down to the tensors of earlier calls
(marked nodes) gives which calls it depends on, at no cost. Which *row* depends on which token
needs gradients: with ``K = ⌈log₂ n⌉`` bit planes of the ``n`` rows, two backward passes per
plane (rows with the bit set, rows without), each from-token's code reads off the one row it
feeds; a token that feeds two rows shows up in both passes of some plane and the map is then
computed row by row. The passes only traverse the graph between the two tensors (projectors,
embeddings, norms), so they cost a small fraction of one model backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from captum_hetattn.binding.flowdata import (  # noqa: F401  (re-exported)
    K_IN,
    OUT,
    Q_IN,
    DataFlow,
    FlowCall,
    FlowJunction,
    FlowSource,
    FlowStream,
    InputRows,
    Mark,
)
from captum_hetattn.binding.fusion import add_into, added_streams, junction_weights
from captum_hetattn.binding.id_inputs import id_inputs, padded_lookups
from captum_hetattn.binding.probes import (  # noqa: F401  (re-exported: layouts, lifts, cache)
    _GENERATOR,
    TokenRows,
    _Dependence,
    _dependence,
    _pass_rows,
)
from captum_hetattn.binding.sources import SourceFinder
from captum_hetattn.binding.tokens import _token_count, tokens_view
from captum_hetattn.capture import AttentionRecord, autograd_node


class _Walker:
    """Which marked tensors an autograd node depends on, as of a given call.

    A node marked only by later calls is transparent: a text layer's output that a later layer
    reads again must not hide the earlier calls behind it. Each walk stops at the first node on
    every path that carries a mark of an earlier call or of a model input, so it covers the graph
    between one call and the previous ones (the residual chain back to the stream's start at
    most).
    """

    def __init__(self) -> None:
        self.marks: dict[object, set[Mark]] = {}
        self.node_of: dict[Mark, object] = {}

    def mark(self, node: object | None, mark: Mark) -> None:
        if node is not None:
            self.marks.setdefault(node, set()).add(mark)
            self.node_of[mark] = node

    def _valid(self, node: object, before: int, also: Mark | None = None) -> set[Mark]:
        return {m for m in self.marks.get(node, ())
                if not (m[0] == "call" and m[1] >= before) or m == also}

    def hits(
        self, node: object | None, before: int, also: Mark | None = None,
        seen: set[object] | None = None,
    ) -> frozenset[Mark]:
        r"""Marks reached from ``node`` walking towards the inputs, stopping at the first node on
        each path with a mark of a call before ``before``, of an input, or equal to ``also``
        (a call's keys computed from its own query input); ``seen`` collects the nodes walked."""
        if node is None:
            return frozenset()
        seen = set() if seen is None else seen
        seen.add(node)
        own = self._valid(node, before, also)
        if own:
            return frozenset(own)
        found: set[Mark] = set()
        stack = [node]
        marks = self.marks
        while stack:
            for child, _ in getattr(stack.pop(), "next_functions", ()):
                if child is None or child in seen:
                    continue
                seen.add(child)
                # most nodes carry no mark: skip building an empty set for each (hot loop)
                valid = self._valid(child, before, also) if child in marks else None
                if valid:
                    found |= valid
                else:
                    stack.append(child)
        return frozenset(found)


_node = autograd_node


# ------------------------------------------------------------------------------ analysis
def analyse(
    records: Sequence[AttentionRecord],
    inputs: Sequence[Tensor | None],
    embeddings: Sequence[tuple[str, Tensor, Tensor, object]],
    towers: Sequence[str],
    map_inputs: bool = False,
    batch: int | None = None,
    dependence: Callable[..., list[_Dependence]] | None = None,
    lifts: Sequence[tuple[str, nn.Module, Tensor, Tensor, Any]] = (),
) -> DataFlow:
    r"""Streams, junctions and sources of one recorded forward (``record_io=True``).

    Args:
        records: the recorder's records, in call order, with live inputs and outputs.
        inputs: the model inputs by position (``None`` for non-tensors); float inputs must
            require grad to be traced.
        embeddings: the recorder's ``nn.Embedding`` calls; one whose ids are an integer input
            stands for that input.
        towers: per record, the module path before the layer index.
        map_inputs: also find, for a stream fed by one input, which element feeds which row
            (``DataFlow.inputs``; streams fed by several inputs always get it). Costs
            ``2⌈log₂ n⌉`` backward passes through the input's embedding per stream.
        batch: the number of examples (default: the batch of the last call).
        dependence: ``dependence(site, into, into_dim, origins, batch, exact)``, the probe of
            which rows each origin token feeds (default :func:`_dependence`; ``site`` names
            the probe, for a cache of them).
        lifts: the recorder's patch embeddings and per-token linear maps that read an input
            (:mod:`~captum_hetattn.binding.lifts`): where one is an input's only path, its
            output stands for the input when the rows an input feeds are asked for.

    Raises:
        ValueError: a call whose hidden states are not traceable (no autograd graph).
    """
    if not records:
        raise ValueError("no attention call was recorded")
    batch = batch if batch is not None else _batch_size(records)
    if all(r.nodes.get("query") is None for r in records):
        names = list(dict.fromkeys(r.name for r in records))
        listed = ", ".join(f"'{n}'" for n in names[:3]) + (
            f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ValueError(
            f"no attention call's hidden states carry an autograd graph ({listed}), so where "
            "their tokens come from cannot be traced: they ran under torch.no_grad() or on "
            "detached inputs (a frozen sub-model), or every parameter is frozen and no float "
            "input reaches them"
        )
    walker = _Walker()
    for i, record in enumerate(records):
        walker.mark(record.nodes.get("query"), ("call", i, Q_IN))
        walker.mark(record.nodes.get("key"), ("call", i, K_IN))
        walker.mark(record.nodes.get("output"), ("call", i, OUT))
    input_tensors: dict[int, tuple[Tensor, int]] = {}
    for position, tensor in enumerate(inputs):
        if isinstance(tensor, Tensor) and tensor.is_floating_point() and tensor.requires_grad:
            input_tensors[position] = (tensor, -1)
            walker.mark(_node(tensor), ("input", position, 0))
    for position, output, token_dim, node in id_inputs(embeddings, inputs):
        if position not in input_tensors:
            input_tensors[position] = (output, token_dim)
        walker.mark(node, ("input", position, 0))
    padded: dict[int, int] = {}
    for position, output, node, length in padded_lookups(embeddings, inputs, set(input_tensors)):
        input_tensors.setdefault(position, (output, 1))
        padded[position] = length
        walker.mark(node, ("input", position, 0))
    flow = _Builder(records, walker, input_tensors, towers, batch, map_inputs)
    flow.padded_inputs = padded
    flow.lifts = list(lifts)
    if dependence is not None:
        flow.dependence = dependence
    return flow.run()


def _batch_size(records: Sequence[AttentionRecord]) -> int:
    for record in reversed(records):
        if record.query_input is not None and record.query_input.dim() >= 3:
            return tokens_view(record.query_input, record.token_dim).shape[0]
    return records[-1].batch_size


class _Builder(SourceFinder):
    def __init__(self, records, walker, input_tensors, towers, batch, map_inputs) -> None:
        self.records = records
        self.map_inputs = map_inputs
        self.walker = walker
        self.input_tensors = input_tensors
        self.padded_inputs: dict[int, int] = {}  # input position -> its length before padding
        self.towers = towers
        self.batch = batch
        self.streams: list[FlowStream] = []
        self.calls: list[FlowCall] = []
        self.junctions: list[FlowJunction] = []
        self.sources: list[FlowSource] = []
        self.inputs: list[InputRows] = []
        self.fed: dict[int, Tensor] = {}  # stream -> (B, n) rows the inputs feed, where probed
        self.lifts: list[tuple[str, nn.Module, Tensor, Tensor, Any]] = []
        self.parameter_rows: dict[int, Tensor] = {}
        # which stream a call's tensor stands for: (record, role side) -> stream
        self.side_stream: dict[tuple[int, str], int] = {}
        # tensor node -> (stream, its call count then): the tokens of that stream at that time
        self.probed: dict[object, tuple[int, int]] = {}
        self.constants: dict[int, tuple[Tensor, int]] = {}  # keeps the tensor alive for its id
        self.dependence = lambda site, *args, **kwargs: _dependence(*args, **kwargs)

    def run(self) -> DataFlow:
        for i, record in enumerate(self.records):
            query = self._stream_of(i, record.query_input, "query")
            self.side_stream[(i, "query")] = query  # the keys may be made from these tokens
            if record.role == "cross" and record.key_input is not None:
                key = self._stream_of(i, record.key_input, "key")
            else:
                key = query
            self.side_stream[(i, "query")] = query
            self.side_stream[(i, "key")] = key
            self.streams[query].calls.append(i)
            self.calls.append(FlowCall(query, key, self._parallel(i, query, key)))
        return DataFlow(self.streams, self.calls, self.junctions, self.sources, self.inputs,
                        self.batch, parameter_rows=self.parameter_rows)

    # ----------------------------------------------------------- streams
    def _stream_of(self, i: int, tensor: Tensor | None, side: str) -> int:
        record = self.records[i]
        if tensor is None:
            raise ValueError(
                f"attention module '{record.name}' [call {record.call_index}]: its {side} input "
                "was not captured (the module was not called with a hidden-states tensor)"
            )
        node = record.nodes.get(side)
        dim = record.token_dim if side == "query" else record.key_token_dim
        if node is None:  # a constant (DETR's first decoder queries are zeros): fresh tokens
            if id(tensor) not in self.constants:
                self.constants[id(tensor)] = (
                    tensor, self._fresh_stream(i, tensor, frozenset(), dim=dim)
                )
            return self.constants[id(tensor)][1]
        n = _token_count(tensor, dim)
        expected = record.n_query if side == "query" else record.n_key
        if n != expected:
            raise NotImplementedError(
                f"attention module '{record.name}' [call {record.call_index}] computes a map "
                f"over {expected} tokens from a {side} input of {n} tokens: several sequences "
                "packed into one call (e.g. a vision tower that packs all images of a batch "
                "with cu_seqlens) or a windowed layout, which the engine cannot lay out yet; "
                "explain one example (one image) at a time"
            )
        sequences = tokens_view(tensor, dim).shape[0]
        if sequences != self.batch:
            raise NotImplementedError(
                f"attention module '{record.name}' [call {record.call_index}] runs over "
                f"{sequences} sequences for a batch of {self.batch} (several images or tiles per "
                "example, e.g. LLaVA-NeXT's crops), a layout the engine cannot map to examples "
                "yet"
            )
        if node in self.probed:
            return self._reread(i, *self.probed[node])
        # keys may be computed from the call's own query input (Segformer's reduced keys)
        hits = self.walker.hits(node, before=i, also=("call", i, Q_IN) if side == "key" else None)
        latest = self._latest_per_stream(hits)
        own = self._latest_per_stream(hits - self._rereads(hits))
        # keys: only where every path reaches the one stream (nothing could be added in)
        if latest and (side == "query" or (len(own) == 1 and all(m[0] == "call" for m in hits))):
            # cheap continuation: the newest state of a stream of the same tower and length
            stream, (j, role) = max(own.items(), key=lambda item: item[1])
            if (
                role != K_IN
                and self.streams[stream].calls[-1:] == [j]
                and self.streams[stream].size == n
                and self.towers[i] == self.towers[j]
            ):
                added = added_streams(self, i, node, stream, j)
                if added:  # another stream's tokens added in (Qwen3-VL's deepstack)
                    add_into(self, i, tensor, dim, stream, (j, role), added)
                self.probed[node] = (stream, len(self.streams[stream].calls))
                return stream
        stream = self._probe_stream(i, tensor, n, latest, hits, dim)
        self.probed[node] = (stream, len(self.streams[stream].calls))
        return stream

    def _reread(self, i: int, stream: int, calls_then: int) -> int:
        """A tensor read again (a decoder's every cross call reads the encoder output): the same
        stream while it has not changed since, or since just the previous call (a parallel
        group: LXMERT's two cross directions); else a copy of its state back then (BridgeTower's
        cross-modal image layer reads the text features from before the text layer ran)."""
        calls = self.streams[stream].calls
        if len(calls) == calls_then or (len(calls) == calls_then + 1 and calls[-1] == i - 1):
            return stream
        return self._fork(stream, calls[calls_then], self.towers[i])

    def _fork(self, stream: int, before: int, tower: str | None = None) -> int:
        """A new stream that starts as a copy of ``stream``'s state before call ``before``."""
        fork = FlowStream(len(self.streams), self.streams[stream].size,
                          tower=self.streams[stream].tower if tower is None else tower)
        fork.fresh = torch.zeros(self.batch, fork.size, dtype=torch.bool)
        self.streams.append(fork)
        identity = torch.eye(fork.size, dtype=torch.bool).expand(self.batch, -1, -1)
        self.junctions.append(
            FlowJunction(fork.index, stream, before, TokenRows(identity), identity.float())
        )
        return fork.index

    def _rereads(self, hits: frozenset[Mark]) -> frozenset[Mark]:
        """The key marks among ``hits`` on a tensor that also holds a query-side mark of the
        same stream: a state read again as keys by a later call (LXMERT's two cross
        directions read each other's layer input) says no more than the earlier mark."""
        marks, node_of = self.walker.marks, self.walker.node_of
        out = set()
        for mark in hits:
            if mark[0] != "call" or mark[2] != K_IN or mark not in node_of:
                continue
            stream = self.side_stream.get((mark[1], "key"))
            if any(other[0] == "call" and other[2] != K_IN and other in hits
                   and self.side_stream.get((other[1], "query")) == stream
                   for other in marks[node_of[mark]]):
                out.add(mark)
        return frozenset(out)

    def _latest_per_stream(self, hits: frozenset[Mark]) -> dict[int, tuple[int, int]]:
        """Per stream, the latest of its call tensors among ``hits``."""
        latest: dict[int, tuple[int, int]] = {}
        for kind, j, role in hits:
            if kind != "call":
                continue
            stream = self.side_stream[(j, "key" if role == K_IN else "query")]
            if stream not in latest or (j, role) > latest[stream]:
                latest[stream] = (j, role)
        return latest

    def _state_tensor(self, stream: int, j: int, role: int) -> tuple[Tensor, int, int]:
        """The tensor holding ``stream``'s tokens at hit ``(j, role)`` and the call index
        before which a junction from it applies."""
        record = self.records[j]
        if role == OUT and self.side_stream[(j, "query")] == stream:
            return record.output, record.token_dim, j + 1
        if self.side_stream.get((j, "query")) == stream:
            return record.query_input, record.token_dim, j
        return record.key_input, record.key_token_dim, j

    def _probe_stream(self, i, tensor, n, latest, hits, dim) -> int:
        origins = []
        for stream, (j, role) in sorted(latest.items()):
            state, state_dim, before = self._state_tensor(stream, j, role)
            if state is None:
                continue
            origins.append((stream, state, state_dim, before))
        dependences = self.dependence(
            ("stream", i), tensor, dim, [(t, d) for _, t, d, _ in origins], self.batch
        ) if origins else []
        maps = [(d.matrix(), d) for d in dependences]
        feeding = [(o, m, d.shares()) for o, (m, d) in zip(origins, maps, strict=True)
                   if m is not None and m.any()]
        if len(feeding) == 1:
            (stream, _, _, _), matrix, _ = feeding[0]
            j, role = latest[stream]
            calls = self.streams[stream].calls
            current = calls[-1:] == [j] if role == OUT else not calls or calls[-1] < j
            if TokenRows(matrix).is_identity() and self.streams[stream].size == n and current:
                return stream
            # an older state of a stream (BridgeTower's vision tower goes on while its copy is
            # fused with text): a new stream that starts as a copy of it
        return self._fresh_stream(i, tensor, hits, feeding, dim)

    def _fresh_stream(
        self, i: int, tensor: Tensor, hits: frozenset[Mark], feeding=(), dim: int = 1
    ) -> int:
        """A new stream: rows fed by other streams through junctions, the rest from inputs."""
        n = _token_count(tensor, dim)
        input_hits = sorted({p for kind, p, _ in hits if kind == "input"})
        new = FlowStream(len(self.streams), n, tower=self.towers[i])
        self.streams.append(new)
        fed = torch.zeros(self.batch, n, dtype=torch.bool, device=tensor.device)
        if feeding:
            ordered = sorted(feeding, key=lambda item: item[0][3])  # application order
            weights = junction_weights([shares for *_, shares in ordered])
            for k, ((stream, _, _, before), matrix, _) in enumerate(ordered):
                self.junctions.append(FlowJunction(
                    new.index, stream, before, TokenRows(matrix), weights[k], additive=k > 0,
                ))
                fed |= matrix.any(dim=-1)
        new.fresh = ~fed
        if new.fresh.any():
            start = len(self.sources)
            self._add_sources(new, i, tensor, input_hits, dim)
            self._trim_padded(start)
        return new.index

    # ----------------------------------------------------------- parallel groups
    def _parallel(self, i: int, query: int, key: int) -> bool:
        """Call ``i`` reads the stream the previous call wrote, from before that write
        (LXMERT's two cross directions, computed from the same layer inputs)."""
        if i == 0:
            return False
        previous = self.calls[-1] if self.calls else None
        if previous is None or previous.query == query:
            return False
        if key != previous.query:
            return False
        hits = self.walker.hits(self.records[i].nodes.get("key"), before=i)
        return ("call", i - 1, OUT) not in hits
