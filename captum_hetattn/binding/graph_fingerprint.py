r"""A fingerprint of the autograd graph between a call's recorded scores and its canonical tokens:
what a cached scores placement depends on, read without a pass through the graph.

Why an equal fingerprint means the same placement. A scores placement says which query token
and key token each raw score entry reads; probing finds it from the pattern of the Jacobian of
the scores with respect to the canonical tokens (which entries respond to which tokens under
random tangents). That pattern is a function of the graph between the two: the nodes and their
edges, each node's non-tensor arguments (sizes, strides, dims, pads, slices, scalars), its saved
integer and bool tensors (gather and scatter indices, masks) and, for products, where its saved
float tensors are zero. The fingerprint records all of these, node by node in a fixed walk order
from the scores back to the canonical tokens (walking stops there and at parameters), with the
shapes each node made (a view's target shape, where a ``cat`` splits), so two graphs with equal
fingerprints compute their scores by the same operations on the same positions;
their float values differ, and away from exact zeros (recorded) and exact cancellations (which
random tangents in the probes do not tell from structure either) the response pattern, hence the
placement, is the same.

What it covers, deliberately:

- **index tensors** saved by ``index``, ``gather``, ``index_put``, ``embedding`` (BigBird's random
  blocks, drawn afresh every call; Longformer / LED global-attention positions, which also key
  the cache through the inputs; LongT5's relative buckets) are kept and compared exactly;
- **masks**: bool conditions of ``where`` / ``masked_fill`` exactly; float tensors a node saved
  (a multiplicative mask, a one-hot block matrix, weights, activations) by where they are zero
  (a zero there changes which entries respond; an additive mask saves nothing and cannot);
- **in-place writes into views** (``CopySlices``, whose view and wrapped function PyTorch does
  not expose): the node is applied to a gradient that numbers its elements, and the written
  region is read off what comes back — a strided region, and whether the write kept or replaced
  what it covers. A write it cannot read that way fails the fingerprint.

A tensor's strides follow from the operations that made it (recorded) and from its inputs'
strides: those of the tokens, the parameters and every saved tensor are recorded; a tensor that
enters through an addition saves nothing, and its strides could reach the placement only through
an ``as_strided`` of the sum (no model we know of does that).

Only node types whose backward is fixed by what they expose and whose derivative vanishes only
where a saved tensor is zero are accepted (:data:`STRUCTURAL`); any other node (``tanh``,
``gelu``, ``clamp``, a custom ``Function``), an unreadable saved tensor, or a walk past
:data:`MAX_NODES` gives no fingerprint, and the caller checks the placement by passes through
the graph as before (then probes afresh if that fails): never a wrong map.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Fingerprint", "MAX_NODES", "STRUCTURAL", "fingerprint"]

#: walks longer than this give no fingerprint (a graph reaching far past the call's layer)
MAX_NODES = 4096

#: backward nodes whose behaviour is fixed by their type, their saved values and their inputs'
#: shapes, and whose derivative pattern follows the zero patterns of their saved tensors
STRUCTURAL = frozenset({
    "AccumulateGrad", "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1",
    "MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1", "NegBackward0",
    "MmBackward0", "BmmBackward0", "AddmmBackward0", "MvBackward0", "DotBackward0",
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "PermuteBackward0",
    "TransposeBackward0", "TBackward0", "ExpandBackward0", "UnsqueezeBackward0",
    "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "AsStridedBackward0",
    "SliceBackward0", "SelectBackward0", "NarrowBackward0", "CloneBackward0",
    "AliasBackward0", "ToCopyBackward0", "CatBackward0", "StackBackward0",
    "ConstantPadNdBackward0", "RepeatBackward0", "IndexBackward0", "IndexPutBackward0",
    "IndexSelectBackward0", "GatherBackward0", "EmbeddingBackward0", "MaskedFillBackward0",
    "MaskedFillBackward1", "WhereBackward0", "SplitBackward0", "SplitWithSizesBackward0",
    "UnbindBackward0", "SumBackward0", "SumBackward1", "MeanBackward0", "MeanBackward1",
    "FlipBackward0", "RollBackward0", "UnfoldBackward0", "CopySlices",
    # smooth row-wise normalisations (T5's RMS norm, layer norm): dense within their rows
    "PowBackward0", "RsqrtBackward0", "SqrtBackward0", "NativeLayerNormBackward0",
})

_STOP, _NONE = -1, -2


class _Unreadable(Exception):
    """Something of the graph the fingerprint cannot record."""


class Fingerprint:
    r"""A graph's fingerprint: a hashable ``structure`` and the ``tensors`` (index tensors,
    zero patterns) compared exactly."""

    __slots__ = ("structure", "tensors")

    def __init__(self, structure: tuple[Any, ...], tensors: list[Tensor]) -> None:
        self.structure = structure
        self.tensors = tensors

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return (self.structure == other.structure
                and len(self.tensors) == len(other.tensors)
                and all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
                        for a, b in zip(self.tensors, other.tensors, strict=True)))

    __hash__ = None  # type: ignore[assignment]


def fingerprint(roots: Sequence[Tensor | None], stop: Tensor,
                max_nodes: int = MAX_NODES) -> Fingerprint | None:
    r"""The fingerprint of the graph from ``roots`` (the recorded scores) back to ``stop`` (the
    canonical hidden states), or ``None`` where it cannot be taken (see the module docstring)."""
    if not stop.requires_grad or not all(isinstance(r, Tensor) and r.requires_grad
                                         for r in roots):
        return None
    try:
        return _walk(roots, stop, max_nodes)  # type: ignore[arg-type]
    except (_Unreadable, RuntimeError):  # RuntimeError: a saved tensor already freed
        return None


def _walk(roots: Sequence[Tensor], stop: Tensor, max_nodes: int) -> Fingerprint:
    """Number the nodes in a fixed depth-first order and record each one."""
    tensors = _Kept()
    ordinal: dict[Any, int] = {}
    nodes: list[Any] = []
    structure: list[Any] = [tuple((tuple(r.shape), r.dtype, r.output_nr) for r in roots),
                            (tuple(stop.shape), tuple(stop.stride()), stop.output_nr)]

    def number(node: Any) -> int:
        if node is None:
            return _NONE
        if _is_stop(node, stop):
            return _STOP
        if node not in ordinal:
            if len(nodes) >= max_nodes:
                raise _Unreadable("too many nodes")
            ordinal[node] = len(nodes)
            nodes.append(node)
        return ordinal[node]

    structure.append(tuple(number(r.grad_fn) if r.grad_fn is not None else _NONE
                           for r in roots))
    done = 0
    while done < len(nodes):  # breadth-first: nodes are numbered as they are first reached
        node = nodes[done]
        done += 1
        name = type(node).__name__
        if name not in STRUCTURAL:
            raise _Unreadable(name)
        if name == "AccumulateGrad":  # a parameter or input other than the tokens
            structure.append((name, tuple(node.variable.shape), node.variable.stride()))
            continue
        edges = tuple((number(n), nr) for n, nr in node.next_functions)
        # the shapes it made (a view's target, where a cat splits: not among its saved values)
        made = tuple((tuple(m.shape), m.dtype) for m in node._input_metadata)
        saved = _copied(node, tensors) if name == "CopySlices" else _saved(node, tensors)
        structure.append((name, edges, made, saved))
    return Fingerprint(tuple(structure), list(tensors))


def _is_stop(node: Any, stop: Tensor) -> bool:
    if stop.grad_fn is not None:
        return node is stop.grad_fn
    return type(node).__name__ == "AccumulateGrad" and node.variable is stop


@functools.cache
def _saved_names(kind: type) -> tuple[str, ...]:
    return tuple(sorted(a for a in dir(kind) if a.startswith("_saved_")))


def _saved(node: Any, tensors: _Kept) -> tuple[Any, ...]:
    """A node's saved values: non-tensor ones as they are, tensors by :func:`_tensor`."""
    return tuple(_value(getattr(node, name), tensors) for name in _saved_names(type(node)))


def _value(value: Any, tensors: _Kept) -> Any:
    if isinstance(value, Tensor):
        return _tensor(value, tensors)
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype,
                                           torch.device, torch.layout, torch.memory_format)):
        return value
    if isinstance(value, (tuple, list, torch.Size)):
        return tuple(_value(v, tensors) for v in value)
    raise _Unreadable(type(value).__name__)


def _tensor(value: Tensor, tensors: _Kept) -> tuple[Any, ...]:
    """A saved tensor: its shape, strides and type; an integer or bool tensor kept whole, a
    float tensor by where it is zero (``"dense"`` when nowhere: nothing kept). A tensor several
    nodes saved (the hidden states each projection saves) is read once per walk."""
    meta = (tuple(value.shape), tuple(value.stride()), value.dtype, value.requires_grad)
    data = value.detach()
    same = (data.data_ptr(), data.storage_offset(), *meta, data._version)
    memo = tensors.memo
    if same in memo:
        kind, kept = memo[same]
        if kept is not None:
            tensors.append(kept)
        return (*meta, kind)
    kept = None
    if not (data.is_floating_point() or data.is_complex()):
        kept, kind = data.clone(), "exact"
    elif int(torch.count_nonzero(data)) == data.numel():
        kind = "dense"
    else:
        kept, kind = data.eq(0), "zeros"
    memo[same] = (kind, kept)
    if kept is not None:
        tensors.append(kept)
    return (*meta, kind)


class _Kept(list):
    """The tensors a fingerprint keeps, and (``memo``) the saved tensors read so far."""

    def __init__(self) -> None:
        super().__init__()
        self.memo: dict[tuple[Any, ...], tuple[str, Tensor | None]] = {}


# ------------------------------------------------------------------------- in-place writes
def _copied(node: Any, tensors: _Kept) -> tuple[Any, ...]:
    r"""A ``CopySlices`` node (an in-place write into a view of a tensor) read by applying it
    to a gradient numbering the tensor's elements: each other input's gradient must be a
    strided read of those numbers (its view), and the tensor's own gradient those numbers
    with the elements the write covers scaled by one constant (``0``: replaced, as
    ``x[..] = y`` does; ``1/c``: ``x[..] /= c``); the positions it changes are recorded."""
    (meta,) = node._input_metadata
    shape = tuple(meta.shape)
    count = math.prod(shape)
    if count >= 1 << 24 or meta.dtype not in (torch.float32, torch.float64):
        raise _Unreadable("CopySlices: too large to number exactly")
    numbers = _numbers(shape, meta.dtype, meta.device)
    out = node(numbers)
    out = out if isinstance(out, tuple) else (out,)
    regions = tuple(None if g is None else _region(g, numbers) for g in out[1:])
    base = out[0]
    if base is None:
        return ("CopySlices", shape, regions, None)
    if torch.equal(base, numbers):  # one pass, nothing allocated: the common in-place add
        return ("CopySlices", shape, regions, "kept")
    replaced = _replaced(base, numbers, regions)
    if replaced is not None:
        return ("CopySlices", shape, regions, ("replaced", replaced))
    changed = base != numbers
    ratio = base[changed] / numbers[changed]
    scale = float(ratio[0])
    if not bool((ratio == scale).all()):
        raise _Unreadable("CopySlices: a write that mixes elements")
    for region in regions:  # the common write: the region a source reads, replaced
        if region is not None and scale == 0.0:
            covered = torch.zeros_like(changed)
            covered.reshape(-1).as_strided(*region).fill_(True)
            if torch.equal(changed, covered):
                return ("CopySlices", shape, regions, ("replaced", region))
    if bool(changed.all()):
        return ("CopySlices", shape, regions, ("scaled", scale))
    tensors.append(changed.reshape(-1).nonzero().flatten().to(torch.int32))
    return ("CopySlices", shape, regions, ("scaled at", scale))


def _replaced(base: Tensor, numbers: Tensor, regions: tuple[Any, ...]) -> Any:
    """The region a source reads that the write replaced (zeroed in ``base``, all else kept),
    in passes over the region and one over ``base``: the region is put back and ``base`` must
    then equal ``numbers`` (``base`` is this reading's own gradient); ``None`` otherwise."""
    if (not base.is_contiguous() or base.storage_offset() != 0
            or base.untyped_storage().data_ptr() == numbers.untyped_storage().data_ptr()):
        return None  # (never write into the numbers, kept for the next reading)
    flat, numbered = base.view(-1), numbers.view(-1)
    for region in regions:
        if region is None:
            continue
        view = flat.as_strided(*region)
        if bool(view.ne(0).any()):
            continue
        view.copy_(numbered.as_strided(*region))
        if torch.equal(base, numbers):
            return region
        view.zero_()  # as it was
    return None


@functools.lru_cache(maxsize=8)
def _numbers(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``1, 2, …`` in ``shape``: each element's number, exact in ``dtype`` below ``2**24``."""
    count = math.prod(shape)
    return torch.arange(1, count + 1, dtype=dtype, device=device).view(shape)


def _region(grad: Tensor, numbers: Tensor) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """The strided view of ``numbers`` that ``grad`` equals: sizes, strides, offset."""
    flat = grad.reshape(-1)
    if flat.numel() == 0:
        raise _Unreadable("CopySlices: an empty region")
    offset = int(flat[0]) - 1
    strides = []
    for dim, size in enumerate(grad.shape):
        index = [0] * grad.dim()
        index[dim] = 1 if size > 1 else 0
        strides.append(int(grad[tuple(index)]) - 1 - offset if size > 1 else 0)
    try:
        read = numbers.reshape(-1).as_strided(tuple(grad.shape), tuple(strides), offset)
    except RuntimeError as error:
        raise _Unreadable("CopySlices: not a strided region") from error
    if not torch.equal(read.to(grad.dtype), grad):
        raise _Unreadable("CopySlices: not a strided region")
    return tuple(grad.shape), tuple(strides), offset
