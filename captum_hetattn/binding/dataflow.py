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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from captum_hetattn.binding.params import parameter_only
from captum_hetattn.binding.tokens import _restore_layout, _token_count, tokens_view
from captum_hetattn.capture import AttentionRecord, autograd_node

# the roles a call's tensors play (inputs before output within one call)
Q_IN, K_IN, OUT = 0, 1, 2
Mark = tuple[str, int, int]  # ("call", record index, role) / ("input", position, 0) / ("emb", i, 0)


@dataclass
class TokenRows:
    r"""Which rows of a tensor each token of another feeds, per example.

    ``matrix`` ``(B, n_into, n_from)`` is 1 where into-row ``i`` depends on from-token ``j``.
    """

    matrix: Tensor

    def is_identity(self) -> bool:
        batch, n_into, n_from = self.matrix.shape
        if n_into != n_from:
            return False
        eye = torch.eye(n_into, dtype=torch.bool, device=self.matrix.device)
        return bool((self.matrix == eye).all())


@dataclass
class FlowJunction:
    r"""Rows of stream ``into`` replaced by ``weights @ R[origin]`` before call ``before``
    (``additive``: added to what an earlier junction into the same rows put there).

    ``weights`` is ``rows.matrix`` normalised over every token that feeds a row, from all
    origins: a merged token is the mean of the tokens it merges, a row fed by two streams (a
    bridge layer adding two towers' tokens) takes half from each.
    """

    into: int
    origin: int
    before: int
    rows: TokenRows
    weights: Tensor
    additive: bool = False


@dataclass
class FlowSource:
    r"""One input modality: the ``columns`` of stream ``stream`` it owns, and the inputs that
    feed them (model input positions; ``-1`` for rows fed by parameters only)."""

    stream: int
    columns: Tensor
    inputs: tuple[int, ...]
    name: str = ""


@dataclass
class InputRows:
    r"""How the elements of model input ``position`` feed the rows of stream ``stream``:
    ``rows`` ``(B, numel per example)`` is the row index each element feeds, ``-1`` if none;
    ``None`` when an element feeds several rows (overlapping convolutions)."""

    position: int
    stream: int
    rows: Tensor | None


@dataclass
class FlowStream:
    index: int
    size: int
    calls: list[int] = field(default_factory=list)
    fresh: Tensor | None = None  # (B, n) rows no other stream feeds
    tower: str = ""


@dataclass
class FlowCall:
    query: int
    key: int
    parallel_with_previous: bool = False


@dataclass
class DataFlow:
    r"""The result of :func:`analyse`: streams, per call its streams, junctions, sources."""

    streams: list[FlowStream]
    calls: list[FlowCall]
    junctions: list[FlowJunction]
    sources: list[FlowSource]
    inputs: list[InputRows]
    batch_size: int
    #: ``(module, reason)`` of softmaxes left out of the recording (not attention over tokens)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    #: ``(input position, module)``: a patch embedding's tokens repeated in a stream (lifts.py)
    repeated: list[tuple[int, str]] = field(default_factory=list)

    def last_call(self, stream: int) -> int | None:
        calls = self.streams[stream].calls
        return calls[-1] if calls else None

    def terminal_streams(self) -> list[int]:
        """Streams that nothing reads after their last call (candidates for the readout)."""
        out = []
        for stream in self.streams:
            if not stream.calls:
                continue
            last = stream.calls[-1]
            read_later = any(
                c.key == stream.index and i > last for i, c in enumerate(self.calls)
            ) or any(j.origin == stream.index and j.before > last for j in self.junctions)
            if not read_later:
                out.append(stream.index)
        return out


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

    def mark(self, node: object | None, mark: Mark) -> None:
        if node is not None:
            self.marks.setdefault(node, set()).add(mark)

    def _valid(self, node: object, before: int, also: Mark | None = None) -> set[Mark]:
        return {m for m in self.marks.get(node, ())
                if not (m[0] == "call" and m[1] >= before) or m == also}

    def hits(
        self, node: object | None, before: int, also: Mark | None = None
    ) -> frozenset[Mark]:
        r"""Marks reached from ``node`` walking towards the inputs, stopping at the first node on
        each path with a mark of a call before ``before``, of an input, or equal to ``also``
        (a call's keys computed from its own query input)."""
        if node is None:
            return frozenset()
        own = self._valid(node, before, also)
        if own:
            return frozenset(own)
        found: set[Mark] = set()
        seen = {node}
        stack = [node]
        while stack:
            for child, _ in getattr(stack.pop(), "next_functions", ()):
                if child is None or child in seen:
                    continue
                seen.add(child)
                valid = self._valid(child, before, also)
                if valid:
                    found |= valid
                else:
                    stack.append(child)
        return frozenset(found)


_node = autograd_node


# ------------------------------------------------------------------------------ probing
_GENERATOR = torch.Generator().manual_seed(20261123)


@dataclass
class _Dependence:
    r"""Which into-row each origin token feeds: ``codes`` ``(B, n_origin)`` (``-1``: none), or,
    when some token feeds several rows, the full ``matrix`` ``(B, n_into, n_origin)`` (or
    ``None`` if it was not computed)."""

    n_into: int
    codes: Tensor | None
    full: Tensor | None = None

    def matrix(self) -> Tensor | None:
        if self.full is not None or self.codes is None:
            return self.full
        batch, n_origin = self.codes.shape
        out = torch.zeros(batch, self.n_into, n_origin, dtype=torch.bool,
                          device=self.codes.device)
        b, j = (self.codes >= 0).nonzero(as_tuple=True)
        out[b, self.codes[b, j], j] = True
        return out

    def feeds(self) -> Tensor:
        """``(B, n_into)``: rows fed by some origin token."""
        if self.full is not None:
            return self.full.any(dim=-1)
        assert self.codes is not None
        batch = self.codes.shape[0]
        out = torch.zeros(batch, self.n_into, dtype=torch.bool, device=self.codes.device)
        b, j = (self.codes >= 0).nonzero(as_tuple=True)
        out[b, self.codes[b, j]] = True
        return out


def _dependence(
    into: Tensor,
    into_dim: int,
    origins: Sequence[tuple[Tensor, int]],
    batch: int,
    exact: bool = True,
) -> list[_Dependence]:
    r"""Per origin, which rows of ``into`` its tokens feed (see the module docstring).

    ``origins`` are ``(tensor, token_dim)``; a token_dim of ``-1`` means "every element is a
    token" (model inputs without a token layout). With ``exact=False`` an origin whose tokens
    feed several rows gets ``codes=None`` instead of the row-by-row fallback.
    """
    view = tokens_view(into, into_dim)
    n_into = view.shape[1]

    def pass_rows(rows: Tensor) -> list[Tensor]:
        return _pass_rows(into, into_dim, origins, batch, rows)

    # a vectorised backward (is_grads_batched) measured 1.7x slower on CPU: one pass per plane
    planes = max(1, math.ceil(math.log2(max(n_into, 2))))
    index = torch.arange(n_into, device=view.device)
    codes: list[Tensor] = []
    clash: list[Tensor] = []
    seen: list[Tensor] = []
    for plane in range(planes):
        bit = ((index >> plane) & 1).bool()
        on, off = pass_rows(bit.to(view.dtype)), pass_rows((~bit).to(view.dtype))
        if not codes:
            codes = [torch.zeros_like(o, dtype=torch.long) for o in on]
            clash = [torch.zeros_like(o) for o in on]
            seen = [torch.zeros_like(o) for o in on]
        for k in range(len(origins)):
            codes[k] |= on[k].long() << plane
            clash[k] |= on[k] & off[k]
            seen[k] |= on[k] | off[k]
    out = []
    for k, (tensor, dim) in enumerate(origins):
        if clash[k].any() or (codes[k][seen[k]] >= n_into).any():
            full = _dependence_by_rows(into, into_dim, tensor, dim, batch) if exact else None
            out.append(_Dependence(n_into, None, full))
        else:
            out.append(_Dependence(n_into, torch.where(seen[k], codes[k], -1)))
    return out

def _pass_rows(into: Tensor, into_dim: int, origins: Sequence[tuple[Tensor, int]], batch: int,
               rows: Tensor, generator: torch.Generator = _GENERATOR) -> list[Tensor]:
    """``(B, n_origin)`` per origin: its tokens reached by one backward pass from ``rows``
    (``(n_into,)`` weights) of ``into``."""
    view = tokens_view(into, into_dim)
    weights = torch.randn(view.shape, generator=generator).to(view) * rows[None, :, None]
    grads = torch.autograd.grad(
        into, [t for t, _ in origins], _restore_layout(weights, into, into_dim),
        retain_graph=True, allow_unused=True,
    )
    return [_token_support(g, t, d, batch) for g, (t, d) in zip(grads, origins, strict=True)]


def _origin_tokens(tensor: Tensor, token_dim: int, batch: int) -> int:
    if token_dim < 0:
        return tensor.numel() // batch
    return _token_count(tensor, token_dim)


def _token_support(grad: Tensor | None, tensor: Tensor, token_dim: int, batch: int) -> Tensor:
    """``(B, n)``: tokens of ``tensor`` with a non-zero gradient."""
    n = _origin_tokens(tensor, token_dim, batch)
    if grad is None:
        return torch.zeros(batch, n, dtype=torch.bool, device=tensor.device)
    if token_dim < 0:
        return grad.reshape(batch, n) != 0
    return (tokens_view(grad, token_dim) != 0).any(dim=-1)


def _dependence_by_rows(
    into: Tensor, into_dim: int, origin: Tensor, origin_dim: int, batch: int
) -> Tensor:
    """The exact row-by-row dependence (one backward per into-row): the fallback."""
    view = tokens_view(into, into_dim)
    rows = []
    for i in range(view.shape[1]):
        weights = torch.zeros_like(view)
        weights[:, i] = torch.randn(view.shape[0], view.shape[2], generator=_GENERATOR).to(view)
        (grad,) = torch.autograd.grad(
            into, [origin], _restore_layout(weights, into, into_dim), retain_graph=True,
            allow_unused=True,
        )
        rows.append(_token_support(grad, origin, origin_dim, batch))
    return torch.stack(rows, dim=1)


# ------------------------------------------------------------------------------ analysis
def analyse(
    records: Sequence[AttentionRecord],
    inputs: Sequence[Tensor | None],
    embeddings: Sequence[tuple[str, Tensor, Tensor, object]],
    towers: Sequence[str],
    map_inputs: bool = False,
    batch: int | None = None,
    dependence: Callable[..., list[_Dependence]] | None = None,
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

    Raises:
        ValueError: a call whose hidden states are not traceable (no autograd graph).
    """
    if not records:
        raise ValueError("no attention call was recorded")
    batch = batch if batch is not None else _batch_size(records)
    if all(r.nodes.get("query") is None for r in records):
        raise ValueError(
            "no attention call's hidden states carry an autograd graph, so where their tokens "
            "come from cannot be traced (all parameters frozen and no float input?)"
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
    for _, ids, output, node in embeddings:
        position = _matching_id_input(ids, inputs)
        if tuple(output.shape[: ids.dim()]) != tuple(ids.shape):
            # not a lookup of these ids (an nn.Embedding subclass handed the attention mask
            # first that embeds positions of its own, BioGPT): it does not stand for the input
            position = None
        if position is not None and position not in input_tensors:
            input_tensors[position] = (output, 1)
        if position is not None:
            walker.mark(node, ("input", position, 0))
    flow = _Builder(records, walker, input_tensors, towers, batch, map_inputs)
    if dependence is not None:
        flow.dependence = dependence
    return flow.run()


def _batch_size(records: Sequence[AttentionRecord]) -> int:
    for record in reversed(records):
        if record.query_input is not None and record.query_input.dim() >= 3:
            return tokens_view(record.query_input, record.token_dim).shape[0]
    return records[-1].batch_size


def _matching_id_input(ids: Tensor, inputs: Sequence[Tensor | None]) -> int | None:
    """The integer model input an embedding looked up (identity, else equal values)."""
    candidates = [
        (p, t) for p, t in enumerate(inputs)
        if isinstance(t, Tensor) and not t.is_floating_point() and t.dim() >= 2
    ]
    for position, tensor in candidates:
        if ids is tensor:
            return position
    for position, tensor in candidates:
        if ids.shape == tensor.shape and bool((ids == tensor).float().mean() > 0.5):
            return position
    return None


class _Builder:
    def __init__(self, records, walker, input_tensors, towers, batch, map_inputs) -> None:
        self.records = records
        self.map_inputs = map_inputs
        self.walker = walker
        self.input_tensors = input_tensors
        self.towers = towers
        self.batch = batch
        self.streams: list[FlowStream] = []
        self.calls: list[FlowCall] = []
        self.junctions: list[FlowJunction] = []
        self.sources: list[FlowSource] = []
        self.inputs: list[InputRows] = []
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
                        self.batch)

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
        if latest and side == "query":
            # cheap continuation: the newest state of a stream of the same tower and length
            stream, (j, role) = max(latest.items(), key=lambda item: item[1])
            if (
                role != K_IN
                and self.streams[stream].calls[-1:] == [j]
                and self.streams[stream].size == n
                and self.towers[i] == self.towers[j]
            ):
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
        before = calls[calls_then]
        fork = FlowStream(len(self.streams), self.streams[stream].size, tower=self.towers[i])
        fork.fresh = torch.zeros(self.batch, fork.size, dtype=torch.bool)
        self.streams.append(fork)
        identity = torch.eye(fork.size, dtype=torch.bool).expand(self.batch, -1, -1)
        self.junctions.append(
            FlowJunction(fork.index, stream, before, TokenRows(identity), identity.float())
        )
        return fork.index

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
        maps = [d.matrix() for d in dependences]
        feeding = [(o, m) for o, m in zip(origins, maps, strict=True) if m is not None and m.any()]
        if len(feeding) == 1:
            (stream, _, _, _), matrix = feeding[0]
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
            total = sum(m.float().sum(dim=-1, keepdim=True) for _, m in feeding).clamp(min=1)
            ordered = sorted(feeding, key=lambda item: item[0][3])  # application order
            for k, ((stream, _, _, before), matrix) in enumerate(ordered):
                self.junctions.append(FlowJunction(
                    new.index, stream, before, TokenRows(matrix), matrix.float() / total,
                    additive=k > 0,
                ))
                fed |= matrix.any(dim=-1)
        new.fresh = ~fed
        if new.fresh.any():
            self._add_sources(new, i, tensor, input_hits, dim)
        return new.index

    # ----------------------------------------------------------- sources
    def _add_sources(
        self, stream: FlowStream, i: int, tensor: Tensor, positions, dim: int
    ) -> None:
        """One source over all the stream's columns, or one per input signature when two
        inputs feed its fresh rows (single-stream fusion)."""
        positions = [p for p in positions if p in self.input_tensors]
        fresh = stream.fresh
        assert fresh is not None
        all_columns = torch.arange(stream.size, device=fresh.device)
        if not positions:
            self._add_inputless(stream, tensor)
            return
        if len(positions) == 1 and not self.map_inputs:
            if not bool(fresh.all()) and not self._feeds_fresh(tensor, dim, positions[0], fresh):
                # the input reaches this stream only through the rows another stream feeds (a
                # residual path): its fresh rows are no input's (PVT's [CLS] on a later stage)
                self._add_inputless(stream, tensor, fresh.any(dim=0).nonzero().flatten())
                return
            self.inputs.append(InputRows(positions[0], stream.index, None))  # not traced
            self.sources.append(FlowSource(stream.index, all_columns, tuple(positions)))
            return
        origins = [self.input_tensors[p] for p in positions]
        record = self.records[i]
        dependences = self.dependence(("inputs", i, tuple(positions)), tensor, dim, origins,
                                      self.batch, exact=len(positions) > 1)
        # inputs that reach only rows spliced in from other streams belong to those streams
        kept = [(p, d) for p, d in zip(positions, dependences, strict=True)
                if (d.codes is None and d.full is None) or (d.feeds() & fresh).any()]
        if not kept:
            self._add_inputless(stream, tensor)
            return
        positions, dependences = [p for p, _ in kept], [d for _, d in kept]
        for position, dependence in kept:
            self.inputs.append(InputRows(position, stream.index, dependence.codes))
        if len(positions) == 1:
            self.sources.append(FlowSource(stream.index, all_columns, tuple(positions)))
            return
        feeds = torch.stack([d.feeds() for d in dependences], dim=1)  # (B, inputs, n)
        if not bool((feeds == feeds[:1]).all() and (fresh == fresh[:1]).all()):
            raise ValueError(
                f"attention module '{record.name}' [call {record.call_index}]: its tokens come "
                f"from {len(positions)} inputs, laid out differently in each example of the "
                "batch; explain the examples one at a time"
            )
        runs = _signature_runs(feeds[0], fresh[0].nonzero().flatten())
        if len(runs) <= 1:
            self.sources.append(FlowSource(stream.index, all_columns, tuple(positions)))
            return
        for signature, columns in runs:
            feeding = tuple(p for p, on in zip(positions, signature, strict=True) if on)
            self.sources.append(FlowSource(stream.index, columns, feeding or (-1,)))

    def _add_inputless(self, stream: FlowStream, tensor: Tensor, columns=None) -> None:
        """Rows no traced input feeds (``columns``, default all): parameter tokens (a pooling
        probe, latents, learned queries, a [CLS]) are never a source, their own share left out
        like GAE's read token; tokens of an untraced input are a source of their own."""
        if not parameter_only(tensor, stop=self.walker.marks):
            columns = torch.arange(stream.size) if columns is None else columns
            self.sources.append(FlowSource(stream.index, columns, (-1,)))

    def _feeds_fresh(self, tensor: Tensor, dim: int, position: int, fresh: Tensor) -> bool:
        """Whether model input ``position`` feeds any of a stream's fresh rows (one backward
        pass from those rows)."""
        view = tokens_view(tensor, dim)
        weights = torch.randn(view.shape, generator=_GENERATOR).to(view) * fresh[..., None]
        (grad,) = torch.autograd.grad(tensor, self.input_tensors[position][0],
                                      _restore_layout(weights, tensor, dim), retain_graph=True,
                                      allow_unused=True)
        return grad is not None and bool(grad.any())

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


def _signature_runs(signatures: Tensor, fresh: Tensor) -> list[tuple[tuple[bool, ...], Tensor]]:
    """Fresh rows grouped by the set of inputs feeding them; rows fed by no input join the next
    group (a ``[CLS]``-like parameter token before its modality's tokens), else the previous."""
    per_row = [tuple(bool(v) for v in signatures[:, r]) for r in fresh.tolist()]
    labels: list[tuple[bool, ...] | None] = [sig if any(sig) else None for sig in per_row]
    following: tuple[bool, ...] | None = None
    for r in range(len(labels) - 1, -1, -1):
        if labels[r] is None:
            labels[r] = following
        else:
            following = labels[r]
    preceding: tuple[bool, ...] | None = None
    for r in range(len(labels)):
        if labels[r] is None:
            labels[r] = preceding
        else:
            preceding = labels[r]
    groups: dict[tuple[bool, ...] | None, list[int]] = {}
    for row, label in zip(fresh.tolist(), labels, strict=True):
        groups.setdefault(label, []).append(row)
    return [
        (label or (False,) * signatures.shape[0], torch.tensor(rows, device=fresh.device))
        for label, rows in groups.items()
    ]
