r"""Token layouts found once: a layout depends on the module, the shapes, the ids and the mask
pattern, not on float values, so an explainer keeps the layout of every call it has probed.

:class:`LayoutCache` (one per explainer, handed down by the engine) maps a call's *signature* —
its position among the recording's calls, the module, the shapes of every tensor the layout was
read from, the batch, and the inputs' shapes with the values of their integer and bool tensors
(token ids and masks: where a splice writes, which tokens a model makes global or masks can follow
from them) — to a :class:`Placement`: the call is a plain map, or is left out (and why), or
is folded by a :class:`~captum_hetattn.binding.canonical.TokenLayout` over a named choice of
hidden states. A placement is used again only after a cheap check on the tensors of the new
forward: one random plane of the canonical tokens (and its complement) pushed forward through the
projections must reach exactly the state rows or score entries the placement says (two products,
where probing takes two per bit of the token count). A check that
fails re-probes, never folds with a stale map.

A placement read from the scores skips those passes (a double backward through the layer's
projections: about a layer's forward and backward at LED-base sizes) where the autograd graph
between the scores and the canonical tokens has the fingerprint it had when the placement was
found or last checked (:mod:`~captum_hetattn.binding.graph_fingerprint`, which says why equal
fingerprints mean the same placement), for the same index tensors at the same versions (a
replaced or modified index is not vouched for). Another fingerprint over the same index is
another graph: probed afresh, not checked by the passes (their one random plane passes a key
token moved within it about one time in two; the cache key holds the integer inputs' values for
that reason). A graph without a fingerprint, or a replaced index, is checked by the passes, and
one that passes them is fingerprinted for the next call.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from captum_hetattn.binding.canonical import (
    TokenLayout,
    _batched,
    _call_of,
    _Canonical,
    _tiled,
)
from captum_hetattn.binding.dataflow import _Dependence, _dependence, _pass_rows
from captum_hetattn.binding.graph_fingerprint import Fingerprint, fingerprint
from captum_hetattn.binding.tokens import _restore_layout, tokens_view
from captum_hetattn.capture import AttentionRecord

__all__ = ["LayoutCache", "Placement"]

# the checks draw from their own stream: the probes' draws stay as they were
_CHECKS = torch.Generator().manual_seed(20261206)


@dataclass
class Placement:
    r"""What laying out one call found: ``kind`` ``"plain"`` (one dense map over its hidden
    states), ``"dropped"`` (``reason``: not attention over tokens), ``"states"`` (laid out from
    per-head states) or ``"scores"`` (from the scores caught at the softmax), with the
    ``layout``, which candidate hidden states it is over (``query``, ``key``: indices into the
    call's batched candidates, one past them for the tiles) and, for ``"states"``, each state
    row's canonical token (``sources``: per map, query side and key side)."""

    kind: str
    reason: str | None = None
    layout: TokenLayout | None = None
    query: int = 0
    key: int | None = None
    sources: tuple[list[Tensor], list[Tensor]] | None = None
    #: for ``"scores"``: each placed pair's query and key token and which raw entries are
    #: placed (:func:`_entry_tokens`), kept with the index they were read from
    tokens: tuple[Tensor, ...] | None = dataclasses.field(default=None, repr=False)
    #: for ``"scores"``: the fingerprint of a graph the placement was found on or checked
    #: against (:mod:`~captum_hetattn.binding.graph_fingerprint`), with the index tensors it
    #: vouches for and their versions (a replaced or modified index is not vouched for)
    proof: tuple[Fingerprint, tuple[Any, ...] | None] | None = dataclasses.field(
        default=None, repr=False)
    #: the shapes of the raw maps laid out, and the layout of the call just laid out (until
    #: kept: it folds by the sums over heads kept, as every later call does, to the bit)
    shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list, repr=False)
    origin: TokenLayout | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, call: AttentionRecord, batch: int,
           sources: tuple[list[Tensor], list[Tensor]] | None) -> Placement:
        """The placement of a call just laid out (a copy of its layout: the recorder releases
        the call's own once it is folded)."""
        first = call.parts[0]
        cross = call.key_input is not None
        # computed once: every replay's copy shares them
        call.layout.summed_index(), call.layout.tokens()
        placement = cls(
            "states" if sources is not None else "scores",
            layout=dataclasses.replace(call.layout),
            query=_index_of(first, "query", batch, call.query_input, call.token_dim),
            key=_index_of(first, "key", batch, call.key_input, call.key_token_dim)
            if cross else None,
            sources=sources,
            shapes=[tuple(r.shape) for r in call.parts],
            origin=call.layout,
        )
        if sources is None and call.query_input is not None:  # found on this very graph
            found = fingerprint([r.scores for r in call.parts], call.query_input)  # type: ignore[misc]
            placement.proof = None if found is None else (found, None)
        return placement

    def replay(self, group: list[AttentionRecord], batch: int,
               inputs: Sequence[object]) -> AttentionRecord | str | None:
        r"""The laid-out call of ``group`` (a recording of the same signature), the reason it is
        left out, ``"plain"``, or ``None`` where the placement does not hold (probe afresh)."""
        if self.kind in ("plain", "dropped"):
            return self.reason if self.kind == "dropped" else "plain"
        assert self.layout is not None
        first = group[0]
        query = _candidate_at(first, "query", batch, inputs, self.query)
        key = (_candidate_at(first, "key", batch, inputs, self.key)
               if self.key is not None else None)
        if query is None or (self.key is not None and key is None):
            return None
        if self.kind == "states":
            assert self.sources is not None
            if not _states_hold(group, query, key, self.sources):
                return None
            role = first.role
        else:
            if not self._scores_hold(group, query):
                return None
            role = "self"
        return _call_of(group, dataclasses.replace(self.layout), query, key, role)

    def _scores_hold(self, group: list[AttentionRecord], query: _Canonical) -> bool:
        r"""Whether the scores placement holds for ``group``: its graph's fingerprint equals
        one this placement was found on or checked against, for the same index tensors (no
        pass through the graph; a different fingerprint fails), else, where either has no
        fingerprint or the index changed, :func:`_scores_hold`'s passes (and a graph that
        passes them is fingerprinted for the next call)."""
        assert self.layout is not None
        found = fingerprint([r.scores for r in group], query.tensor)  # type: ignore[misc]
        if found is not None and self.proof is not None \
                and _same(self.proof[1], self._vouched()):
            # another graph over the same index: probe afresh. The passes' random plane let
            # LED's global columns, moved under a key blind to them, pass one seed in two
            return self.proof[0] == found
        if self.tokens is None or self.tokens[0] is not self.layout.dense_index \
                or self.tokens[1] is not self.layout.raw_index:
            self.tokens = _entry_tokens(self.layout)
        if not _scores_hold(group, query, self.layout, self.tokens[2:]):
            return False
        self.proof = None if found is None else (found, self._vouched())
        return True

    def seal(self, shared: bool) -> None:
        """Once kept (``shared``: with the index tensors of an equal layout): let the fingerprint
        taken when the placement was found vouch for those tensors, and fold by the sums over
        heads (computed once per layout kept, given to the call just laid out too)."""
        if self.proof is not None and self.proof[1] is None:
            self.proof = (self.proof[0], self._vouched())
        if self.layout is not None:
            if not shared:
                self.layout.heads_alike(self.shapes, compute=True)
            if self.origin is not None:
                self.origin.head_sums = self.layout.head_sums
        self.origin = None

    def _vouched(self) -> tuple[Any, ...] | None:
        """The index tensors and their versions (an in-place change bumps a version)."""
        if self.layout is None:
            return None
        held = (self.layout.raw_index, self.layout.dense_index, self.layout.weight)
        return tuple((t, t._version) if t is not None else None for t in held)

    @property
    def elements(self) -> int:
        """How many index elements the placement keeps (for the cache's bound)."""
        return 0 if self.layout is None else int(self.layout.raw_index.numel())


def _same(vouched: tuple[Any, ...] | None, held: tuple[Any, ...] | None) -> bool:
    """Whether the same index tensor objects, at the same versions, are held."""
    if vouched is None or held is None or len(vouched) != len(held):
        return False
    return all((a is None and b is None) or (a is not None and b is not None
                                             and a[0] is b[0] and a[1] == b[1])
               for a, b in zip(vouched, held, strict=True))


class LayoutCache:
    r"""The placements of the calls an explainer has laid out, by call signature (see the
    module docstring), least recently used dropped first.

    Args:
        max_entries: how many calls' placements are kept.
        max_elements: how many index elements (raw entries of the maps, each kept as a few
            int64 indices: about 30 bytes) they may hold together; a recording beyond it keeps
            its first calls' placements and probes the rest on every call.
    """

    def __init__(self, max_entries: int = 1024, max_elements: int = 1 << 24) -> None:
        self.max_entries = max_entries
        self.max_elements = max_elements
        self._placements: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._placements)

    def clear(self) -> None:
        """Forget every placement (the next call probes afresh)."""
        self._placements.clear()

    def key(self, signature: Any, ordinal: int, group: Sequence[AttentionRecord]) -> Any:
        """The key of one call: the recording's ``signature``, its position, its tensors'
        shapes."""
        return (signature, ordinal, tuple(_record_key(r) for r in group))

    def get(self, key: Any) -> Any:
        """What was found for ``key`` (a :class:`Placement`, a data-flow probe's result), or
        ``None``."""
        found = self._placements.get(key)
        if found is None:
            return None
        self._placements.move_to_end(key)
        return found[0]

    @property
    def elements(self) -> int:
        """The index elements the cache holds."""
        return sum(size for _, size in self._placements.values())

    def put(self, key: Any, value: Any, elements: int | None = None) -> None:
        r"""Keep ``value`` for ``key`` (``elements``: the index elements it holds). Over a
        bound, the least recently used entries of other recordings go first; if the bound
        still does not hold, ``value`` is not kept (a recording's calls come back in the same
        order every time: keeping the first ones serves the next call, dropping them would
        drop each before it is used)."""
        if elements is None:
            shared = isinstance(value, Placement) and self._share(value)
            elements = value.elements if isinstance(value, Placement) and not shared else 0
            if isinstance(value, Placement) and value.kind == "scores" and not shared:
                value.tokens = _entry_tokens(value.layout)  # once: layers alike share it
        if isinstance(value, Placement):
            value.seal(shared)
        self._placements[key] = (value, elements)
        self._placements.move_to_end(key)
        total = self.elements

        def over() -> bool:
            return len(self._placements) > self.max_entries or total > self.max_elements

        while over():
            oldest = next(iter(self._placements))
            if oldest == key or oldest[0] == key[0]:  # only this recording's left
                self._placements.pop(key)
                return
            _, size = self._placements.pop(oldest)
            total -= size

    def _share(self, value: Placement) -> bool:
        r"""Let ``value`` hold the index tensors of an equal layout kept already (every layer of
        LED or LongT5 lays out alike: one copy instead of one per layer, counted once against
        the bound); whether it does."""
        layout = value.layout
        if layout is None:
            return False
        for other, _ in self._placements.values():
            kept = other.layout if isinstance(other, Placement) else None
            if (kept is None or other is value or other.kind != value.kind
                    or kept.dense_shape != layout.dense_shape
                    or kept.raw_index.shape != layout.raw_index.shape
                    or (kept.weight is None) != (layout.weight is None)):
                continue
            if (torch.equal(kept.raw_index, layout.raw_index)
                    and torch.equal(kept.dense_index, layout.dense_index)
                    and (kept.weight is None or torch.equal(kept.weight, layout.weight))):
                value.layout = dataclasses.replace(kept)
                value.tokens = other.tokens
                return True
        return False

    def dependences(self, batch: int, inputs: Sequence[object]):
        r"""The data flow's probe (``dependence(site, into, into_dim, origins, batch, exact)``,
        see :func:`~captum_hetattn.binding.dataflow.analyse`) through this cache: which rows of
        ``into`` each origin token feeds (junction maps, the input rows) is a structure too.

        A cached answer is used without a pass where the graph from ``into`` back to its one
        origin has the fingerprint of the graph it was probed on
        (:mod:`~captum_hetattn.binding.graph_fingerprint`: the rows a token feeds are the
        pattern of that graph's Jacobian, as a placement is; ViT's and LXMERT's input rows);
        else after the check's backward passes (:func:`_planes`: a random plane of rows, its
        complement and one plane per bit of the row numbers must reach exactly the tokens they
        say) instead of two per bit of the row count. A graph that only
        passes the passes is not fingerprinted: only a full probe vouches."""
        signature = self.signature(batch, inputs)

        def dependence(site: Any, into: Tensor, into_dim: int,
                       origins: Sequence[tuple[Tensor, int]], batch: int,
                       exact: bool = True) -> list[_Dependence]:
            key = (signature, site, _shape(into), into_dim,
                   tuple((_shape(t), d) for t, d in origins), batch, exact)
            cached = self.get(key)
            if cached is not None and (
                    cached.proof is not None and _proof(into, origins) == cached.proof
                    or _dependences_hold(cached.found, into, into_dim, origins, batch)):
                self.hits += 1
                return cached.found
            self.misses += 1
            found = _dependence(into, into_dim, origins, batch, exact=exact)
            self.put(key, _Found(found, _proof(into, origins)),
                     sum(d.codes.numel() if d.codes is not None else
                         d.full.numel() if d.full is not None else 0 for d in found))
            return found

        return dependence

    @staticmethod
    def signature(batch: int, inputs: Sequence[object]) -> Any:
        """The part of a key shared by every call of a recording: the batch and the inputs."""
        return (batch, tuple(_value_key(x) for x in inputs))


@dataclass
class _Found:
    """A probed dependence and the fingerprint of the graph it was probed on (``None``: none)."""

    found: list[_Dependence]
    proof: Fingerprint | None


def _proof(into: Tensor, origins: Sequence[tuple[Tensor, int]]) -> Fingerprint | None:
    """The fingerprint of the graph from ``into`` back to its one origin (``None`` for several
    origins, or where none can be taken)."""
    if len(origins) != 1 or not into.requires_grad:
        return None
    return fingerprint([into], origins[0][0])


def _shape(tensor: Tensor | None) -> tuple[int, ...] | None:
    return None if tensor is None else tuple(tensor.shape)


def _record_key(record: AttentionRecord) -> tuple[Any, ...]:
    """Everything of one raw map a layout is read from, but values."""
    return (
        record.name, tuple(record.shape), record.role, record.heads, record.raw,
        _shape(record.query_input), record.token_dim, _shape(record.key_input),
        record.key_token_dim, tuple(_shape(s) for s in record.states or ()),
        _shape(record.scores), tuple(_shape(t) for t in record.linears),
        tuple((c.name, _shape(c.input), _shape(c.output)) for c in record.contexts),
    )


def _value_key(value: object) -> Any:
    """An input as a layout sees it: shape and type; the values of token ids and masks.

    Integer and bool tensors are keyed by their values (a digest): a layout can follow from
    them inside the model (a splice at placeholder ids, global tokens chosen from separator
    ids, a mask built from padding ids), and a check before reuse vouches for where rows go, not
    for which tokens a changed id makes global. Float inputs (pixels, features) are keyed by
    shape: no model we know places tokens by their values (the check guards the rest).
    """
    if isinstance(value, Tensor):
        key: tuple[Any, ...] = (tuple(value.shape), str(value.dtype), str(value.device))
        if value.is_floating_point() or value.is_complex():
            return key
        data = value.detach().cpu().contiguous().numpy().tobytes()
        return (*key, hashlib.blake2b(data, digest_size=16).digest())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_value_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _value_key(v)) for k, v in value.items()))
    return ("object", type(value).__name__, id(value))


def _index_of(record: AttentionRecord, side: str, batch: int, tensor: Tensor | None,
              token_dim: int) -> int:
    """Which of the call's batched candidates ``tensor`` is (one past them: the tiles)."""
    options = _batched(record, side, batch)
    for index, option in enumerate(options):
        if option.tensor is tensor and option.token_dim == token_dim:
            return index
    return len(options)


def _candidate_at(record: AttentionRecord, side: str, batch: int, inputs: Sequence[object],
                  index: int | None) -> _Canonical | None:
    options = _batched(record, side, batch)
    if index is None:
        return None
    if index < len(options):
        return options[index]
    return _tiled(record, side, batch, inputs, confirm=False)


# ---------------------------------------------------------------------------- the checks
def _pushes(intos: list[Tensor], origin: _Canonical):
    """Push tangents of the canonical tokens forward to ``intos`` (a vector-Jacobian product
    differentiated again, as the probes do): a function of a ``(B·n,)`` bool plane of tokens
    giving, per tensor of ``intos``, its flat elements that respond; ``None`` where nothing
    of ``intos`` is computed from the tokens."""
    if not origin.tensor.requires_grad or not all(t.requires_grad for t in intos):
        return None
    probes = [torch.zeros_like(t, requires_grad=True) for t in intos]
    (pullback,) = torch.autograd.grad(intos, origin.tensor, probes, create_graph=True,
                                      allow_unused=True)
    if pullback is None or not pullback.requires_grad:
        return None
    view = tokens_view(origin.tensor, origin.token_dim)

    def push(plane: Tensor) -> list[Tensor | None]:
        weights = torch.randn(view.shape, generator=_CHECKS).to(view)
        weights = weights * plane.view(view.shape[:2])[..., None].to(weights)
        out = torch.autograd.grad(pullback, probes,
                                  _restore_layout(weights, origin.tensor, origin.token_dim),
                                  retain_graph=True, allow_unused=True)
        return [None if p is None else p.detach() != 0 for p in out]

    return push


@functools.lru_cache(maxsize=8)
def _weights(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Random cotangents of one shape, drawn once (what is checked is which tokens a pass
    reaches, and the plane of rows it starts from is drawn afresh every time)."""
    return torch.randn(shape, generator=_CHECKS).to(dtype=dtype, device=device)


def _planes(tokens: int, numbered: bool = False) -> tuple[Tensor, ...]:
    """The token planes a check passes through: a random plane and its complement (a row that
    moved off its plane, a token no row reads any more), and with ``numbered`` one plane per
    bit of the token numbers. Why the bit planes: a random plane is blind to a move that keeps
    it (two tokens swapped on the same side: one time in two); a permutation that keeps every
    bit plane keeps every token's number, so any reordering of the rows fails one of them. They
    cost a pass each: the input rows' check (a pass through the embeddings) takes them; the
    states' and scores' checks (double passes through a layer: Swin-T warm 0.72 -> 1.03 s with
    them) keep the random pair, behind the fingerprint and the cache key."""
    chosen = torch.rand(tokens, generator=_CHECKS) < 0.5
    if not numbered:
        return chosen, ~chosen
    numbers = torch.arange(tokens)
    bits = [(numbers >> bit) & 1 == 1 for bit in range(max(tokens - 1, 0).bit_length())]
    return (chosen, ~chosen, *bits)


def _tokens(origin: _Canonical) -> int:
    return math.prod(tokens_view(origin.tensor, origin.token_dim).shape[:2])


def _states_hold(group: list[AttentionRecord], query: _Canonical, key: _Canonical | None,
                 sources: tuple[list[Tensor], list[Tensor]]) -> bool:
    """Whether the per-head state rows still read the tokens the placement says: for one
    random plane of tokens and for its complement (:func:`_planes`), a backward pass from the
    rows the placement puts on that plane (and the padding rows) must reach exactly their tokens
    (a row that moved off its plane, or a token no row reads any more, fails it)."""
    sides = [(query, [r.states[0] for r in group], sources[0])]  # type: ignore[index]
    keys = [r.states[1] for r in group]  # type: ignore[index]
    if key is None:  # self-attention: both sides read the same tokens
        sides = [(query, sides[0][1] + keys, sources[0] + sources[1])]
    else:
        sides.append((key, keys, sources[1]))
    for origin, states, expected in sides:
        if not origin.tensor.requires_grad or not all(t.requires_grad for t in states):
            return False
        tokens = _tokens(origin)
        for plane in _planes(tokens):
            plane = plane.to(origin.tensor.device)
            weights, want = [], torch.zeros(tokens, dtype=torch.bool, device=plane.device)
            for state, rows in zip(states, expected, strict=True):
                on = (rows >= 0) & plane[rows.clamp(min=0)]
                want[rows[on]] = True
                chosen = (on | (rows < 0)).view(*state.shape[:-1], 1)
                weights.append(_weights(tuple(state.shape), state.dtype, state.device) * chosen)
            (grad,) = torch.autograd.grad(states, origin.tensor, weights, retain_graph=True,
                                          allow_unused=True)
            if grad is None:
                return False
            view = tokens_view(grad, origin.token_dim)
            if not torch.equal(view.reshape(tokens, -1).ne(0).any(dim=-1), want):
                return False
    return True


def _dependences_hold(cached: list[_Dependence], into: Tensor, into_dim: int,
                      origins: Sequence[tuple[Tensor, int]], batch: int) -> bool:
    """Whether the rows each origin token feeds are still the cached ones: a backward pass from
    each plane of rows (:func:`_planes`) reaches exactly the tokens they say."""
    view = tokens_view(into, into_dim)
    if not into.requires_grad:
        return False
    for plane in _planes(view.shape[1], numbered=True):
        plane = plane.to(view.device)
        reached = _pass_rows(into, into_dim, origins, batch, plane.to(view.dtype), _CHECKS)
        for found, got in zip(cached, reached, strict=True):
            if found.codes is not None:
                want = (found.codes >= 0) & plane[found.codes.clamp(min=0)]
            elif found.full is not None:
                want = (found.full & plane[None, :, None]).any(dim=1)
            else:
                return False
            if not torch.equal(got, want):
                return False
    return True


def _entry_tokens(layout: TokenLayout) -> tuple[Tensor, ...]:
    """The layout's dense and raw index, each placed pair's query token and key token (flat
    over the examples' tokens), and which raw entries (up to the last placed one) are placed:
    what every check compares with."""
    _, heads, n, _ = layout.dense_shape
    dense, raw = layout.dense_index, layout.raw_index
    example = dense.div(heads * n * n, rounding_mode="floor") * n
    total = int(raw.max()) + 1 if raw.numel() else 0  # entries past the last are not placed
    placed = torch.zeros(total, dtype=torch.bool, device=raw.device)
    placed[raw] = True
    query = (example + dense.div(n, rounding_mode="floor") % n).to(torch.int32)  # half the size
    return dense, raw, query, (example + dense % n).to(torch.int32), placed


def _scores_hold(group: list[AttentionRecord], canonical: _Canonical,
                 layout: TokenLayout, tokens: tuple[Tensor, ...]) -> bool:
    """Whether every placed score entry still reads exactly the query token and key tokens the
    layout folds it onto, on one random plane of tokens and its complement (:func:`_planes`;
    ``tokens``: from :func:`_entry_tokens`)."""
    push = _pushes([r.scores for r in group], canonical)  # type: ignore[misc]
    if push is None:
        return False
    raw = layout.raw_index
    query_token, key_token, placed = tokens
    for plane in _planes(_tokens(canonical)):
        plane = plane.to(raw.device)
        want = torch.zeros(placed.shape, dtype=torch.bool, device=raw.device)
        want[raw[plane[query_token] | plane[key_token]]] = True  # all writes True: any order
        got = _responding(push, plane.to(canonical.tensor.device), placed)
        if got is None:
            return False
        if not torch.equal(got & placed, want):  # want lies on placed entries only
            # a silent entry may be a sum that cancelled exactly (about one in 3·10⁷ at
            # real sizes): the same plane with other weights answers it; a response where
            # none is due cannot come from a cancellation
            again = None if bool((got & placed & ~want).any()) else _responding(
                push, plane.to(canonical.tensor.device), placed)
            if again is None or not torch.equal((got | again) & placed, want):
                return False
    return True


def _responding(push, plane: Tensor, placed: Tensor) -> Tensor | None:
    """The score entries (up to the last ``placed`` one) that respond to a push from
    ``plane``."""
    responses = push(plane)
    if any(r is None for r in responses):
        return None
    got = torch.cat([r.reshape(-1) for r in responses]).to(placed.device)  # type: ignore[union-attr]
    return got[:placed.numel()]  # entries past the last placed one are not checked
