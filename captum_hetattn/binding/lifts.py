r"""Input rows where the structure says them: a float model input read by a non-overlapping
patch embedding (an ``nn.Conv2d`` with stride = kernel and no padding) or by a linear map per
token (region features, boxes) feeds each of the module's output tokens from known elements.

The data flow then probes which stream row each output token of the module feeds — passes that
stop at the module's output, never through it to every pixel — and the rows of the input's
elements follow by index arithmetic; an element the module's weights never read (a kernel
position or input feature whose weights are all zero) feeds no row, as a traced probe would find.
Everything else (an input that also reaches the stream another way, overlapping or padded
convolutions, a token fed to several rows) keeps the traced path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from captum_hetattn.binding.dataflow import _Dependence, _dependence
from captum_hetattn.binding.tokens import CHANNELS_FIRST

#: the graph walk that confirms an input has no other path gives up after this many nodes
_WALK_LIMIT = 20000


@dataclass
class _Lift:
    module: nn.Module
    input: Tensor
    output: Tensor
    node: Any
    name: str = ""

    @property
    def token_dim(self) -> int:
        return CHANNELS_FIRST if isinstance(self.module, nn.Conv2d) else 1

    def elements(self, codes: Tensor) -> Tensor:
        """``(B, elements)``: the row each element of the input feeds, from ``codes``
        ``(B, n_out)``, the row each output token feeds (``-1``: none)."""
        batch = codes.shape[0]
        weight = self.module.weight
        if isinstance(self.module, nn.Conv2d):
            channels, height, width = self.input.shape[1:]
            k_y, k_x = self.module.kernel_size
            rows, cols = self.output.shape[2:]
            y, x = torch.arange(height), torch.arange(width)
            inside = (y // k_y < rows)[:, None] & (x // k_x < cols)[None, :]
            patch = (y // k_y).clamp(max=rows - 1)[:, None] * cols + (x // k_x).clamp(
                max=cols - 1)[None, :]
            read = weight.detach().ne(0).any(dim=0).cpu()  # (C, k_y, k_x)
            alive = read[:, (y % k_y)[:, None], (x % k_x)[None, :]] & inside  # (C, H, W)
            found = codes[:, patch.flatten().to(codes.device)].view(batch, 1, height * width)
            found = found.expand(batch, channels, height * width)
            alive = alive.view(1, channels, height * width).to(codes.device)
        else:
            features = self.input.shape[-1]
            found = codes[:, :, None].expand(batch, codes.shape[1], features)
            alive = weight.detach().ne(0).any(dim=0).view(1, 1, features).to(codes.device)
        return torch.where(alive, found, -1).reshape(batch, -1)

    def token_codes(self, codes: Tensor) -> Tensor:
        """``(B, n_out)``: the row each output token feeds through some element it reads
        (``-1``: none) — every token reads the same kernel positions or features, so all of them
        or none do (:meth:`elements` gives every element of an unread one ``-1``)."""
        if bool(self.module.weight.detach().ne(0).any()):
            return codes
        return torch.full_like(codes, -1)


@dataclass
class _Lifted(_Dependence):
    r"""An input's dependence read through a :class:`_Lift`: ``codes`` per input element, and
    ``token_codes`` per output token of the module, from which the rows fed follow exactly
    (:meth:`feeds` on ``n_out`` tokens instead of every pixel: 20 ms a call at ViT-base
    batch 8)."""

    token_codes: Tensor | None = None

    def feeds(self) -> Tensor:
        if self.token_codes is None:
            return super().feeds()
        return _Dependence(self.n_into, self.token_codes).feeds()


def _lift_of(module: nn.Module, tensor: Tensor, output: Tensor) -> bool:
    """Whether ``module`` maps ``tensor`` to tokens element by known element."""
    if isinstance(module, nn.Conv2d):
        return (tensor.dim() == 4 and output.dim() == 4 and module.groups == 1
                and tuple(module.stride) == tuple(module.kernel_size)
                and tuple(module.dilation) == (1, 1) and not isinstance(module.padding, str)
                and tuple(module.padding) == (0, 0))
    return isinstance(module, nn.Linear) and tensor.dim() == 3 and output.dim() == 3


def _only_path(into: Tensor, lift: _Lift) -> bool:
    """Whether every path of the autograd graph from ``into`` back to the input passes through
    the module's output (the walk stops there)."""
    start = into.grad_fn
    seen: set[int] = set()
    stack = [start] if start is not None else []
    while stack:
        node = stack.pop()
        if node is lift.node or id(node) in seen:
            continue
        seen.add(id(node))
        if len(seen) > _WALK_LIMIT or getattr(node, "variable", None) is lift.input:
            return False
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return True


def lifted_origin(into: Tensor, tensor: Tensor,
                  lifts: Sequence[tuple[str, nn.Module, Tensor, Tensor, Any]]) -> Tensor:
    r"""What stands for float input ``tensor`` when asking which rows of ``into`` it feeds: the
    output of the one patch embedding or per-token linear map that reads it, where every path
    from ``into`` to the input passes through it (a backward then stops there, not at every
    pixel); else ``tensor`` itself."""
    readers = [_Lift(m, t, o, n, name) for name, m, t, o, n in lifts if t is tensor]
    if len(readers) == 1 and _lift_of(readers[0].module, tensor, readers[0].output) \
            and _only_path(into, readers[0]):
        return readers[0].output
    return tensor


def lifted_dependences(
    dependence: Callable[..., list[_Dependence]], site: Any, into: Tensor, into_dim: int,
    origins: Sequence[tuple[Tensor, int]], batch: int, exact: bool,
    lifts: Sequence[tuple[str, nn.Module, Tensor, Tensor, Any]],
    repeated: list[tuple[int, str]] | None = None,
) -> list[_Dependence]:
    r"""``dependence(site, into, into_dim, origins, batch, exact)`` (which rows of ``into``
    each origin's elements feed), with every float input read by a known patch embedding or
    per-token linear map probed at that module's output and composed (see the module
    docstring); the traced probe where any of them cannot be. An input whose module's tokens
    each feed one row only through this module, some token feeding several rows (ViLT's
    random repeats of padding patches), is added to ``repeated`` as ``(position, module)``:
    its elements' rows are known not to be a layout by shape."""
    chosen: list[_Lift | None] = []
    for tensor, dim in origins:
        readers = [_Lift(m, t, o, n, name) for name, m, t, o, n in lifts
                   if t is tensor] if dim < 0 else []
        lift = readers[0] if len(readers) == 1 else None
        if lift is not None and not (_lift_of(lift.module, tensor, lift.output)
                                     and _only_path(into, lift)):
            lift = None
        chosen.append(lift)
    if not any(chosen):
        return dependence(site, into, into_dim, origins, batch, exact=exact)
    moved = [(c.output, c.token_dim) if c is not None else o
             for c, o in zip(chosen, origins, strict=True)]
    found = dependence((*site, "lifted"), into, into_dim, moved, batch, exact=False)
    if any(f.codes is None for f in found):  # a token fed to several rows: trace the inputs
        if repeated is not None:
            repeated.extend((position, c.name) for position, c, f in zip(
                site[2], chosen, found, strict=True) if c is not None and f.codes is None)
        return dependence(site, into, into_dim, origins, batch, exact=exact)
    return [_Lifted(f.n_into, c.elements(f.codes), token_codes=c.token_codes(f.codes))
            if c is not None else f for c, f in zip(chosen, found, strict=True)]


def with_lifts(
    dependence: Callable[..., list[_Dependence]] | None,
    lifts: Sequence[tuple[str, nn.Module, Tensor, Tensor, Any]],
    repeated: list[tuple[int, str]] | None = None,
) -> Callable[..., list[_Dependence]]:
    """The data flow's probe (``dependence(site, ...)``, default the traced one) with the
    input rows (sites ``("inputs", ...)``) read through :func:`lifted_dependences` (which
    notes repeated patch tokens in ``repeated``)."""
    probe = dependence or (lambda site, *args, **kwargs: _dependence(*args, **kwargs))

    def read(site: Any, into: Tensor, into_dim: int, origins: Sequence[tuple[Tensor, int]],
             batch: int, exact: bool = True) -> list[_Dependence]:
        if site[0] != "inputs" or not lifts:
            return probe(site, into, into_dim, origins, batch, exact=exact)
        return lifted_dependences(probe, site, into, into_dim, origins, batch, exact, lifts,
                                  repeated)

    return read
