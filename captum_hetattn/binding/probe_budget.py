r"""The cost guard of the data flow's probes: no explanation runs for minutes where the forward
takes milliseconds.

Which rows of a stream each earlier token feeds is found with ``2⌈log₂ n⌉`` backward passes
when every token feeds one row (a copy, a permutation, a merge). Where tokens feed several rows
(a convolutional or deformable pixel decoder between a backbone and a decoder's keys, as in
OneFormer / Mask2Former), the exact map takes one backward pass per row *per earlier stream*:
thousands of passes for a feature map of 64×64 rows, minutes for a model whose forward takes
0.1 s. :func:`guarded` wraps the probe: such a map is traced exactly while the recording's
passes stay within :data:`captum_hetattn.capture.PROBE_PASSES`; past it, rows are traced in
contiguous blocks (each row fed by what its block is fed by: one pass per block for every
earlier stream at once, so the map over-approximates each row's support by its block's), with a
warning naming the module whose input it is. The decision counts passes, never seconds, so the
same inputs always give the same explanation.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from captum_hetattn.binding.dataflow import _Dependence, _pass_rows
from captum_hetattn.binding.tokens import tokens_view

__all__ = [
    "LayoutBudgetExceeded", "backward", "guarded", "layout_budget", "row_support",
    "several_reason",
]

# the refutations draw from their own stream: the layout probes' draws stay as they were
_REFUTE = torch.Generator().manual_seed(20261207)

Probe = Callable[..., list[_Dependence]]


def _limit() -> int | None:
    from captum_hetattn import capture  # the package's value now: setting it there works

    limit = capture.PROBE_PASSES
    return None if limit is None else max(1, int(limit))


class _Guard:
    """The passes a recording's exact fallbacks have spent, and the probe through them."""

    def __init__(self, probe: Probe, names: Sequence[str]) -> None:
        self.probe = probe
        self.names = names  # per call index: the module name (for the warning)
        self.spent = 0

    def __call__(self, site: Any, into: Tensor, into_dim: int,
                 origins: Sequence[tuple[Tensor, int]], batch: int,
                 exact: bool = True) -> list[_Dependence]:
        limit = _limit()
        if not exact or limit is None:
            return self.probe(site, into, into_dim, origins, batch, exact=exact)
        found = self.probe(site, into, into_dim, origins, batch, exact=False)
        clash = [k for k, d in enumerate(found) if d.codes is None and d.full is None]
        if not clash:
            return found
        n_into = tokens_view(into, into_dim).shape[1]
        needed = n_into * len(clash)  # the exact fallback: a pass per row per origin
        if self.spent + needed <= limit:
            self.spent += needed
            return self.probe(site, into, into_dim, origins, batch, exact=True)
        # what is left of the budget, a quarter of it at most, and 8 blocks at least
        blocks = min(n_into, max(8, min(limit - self.spent, limit // 4)))
        self.spent += blocks
        size = math.ceil(n_into / blocks)
        self._warn(site, n_into, needed, size, len(clash))
        maps = _by_blocks(into, into_dim, [origins[k] for k in clash], batch, n_into, size)
        for k, full in zip(clash, maps, strict=True):
            found[k] = _Dependence(n_into, None, full)
        return found

    def _warn(self, site: Any, n_into: int, needed: int, size: int, origins: int) -> None:
        where = f"the hidden states of {n_into} rows of {self._module(site)}"
        warnings.warn(
            f"{where} mix the tokens of {origins} earlier stream(s) or input(s) (each token "
            f"feeds several rows: a convolution, an interpolation or deformable attention "
            f"between them); the exact token map takes {needed} backward passes, past the "
            f"recording's budget (captum_hetattn.capture.PROBE_PASSES = {_limit()}), so it is "
            f"traced in blocks of {size} consecutive rows (each row is taken as fed by what "
            "its block is fed by: relevance through it is spread over the block); set "
            "captum_hetattn.capture.PROBE_PASSES = None (or higher) to trace it exactly",
            UserWarning, stacklevel=2)

    def _module(self, site: Any) -> str:
        if isinstance(site, tuple) and len(site) >= 2 and site[0] == "stream":
            index = site[1]
            if isinstance(index, int) and 0 <= index < len(self.names):
                return f"attention module '{self.names[index]}' (call {index})"
        return "the model's input rows"


def _by_blocks(into: Tensor, into_dim: int, origins: Sequence[tuple[Tensor, int]], batch: int,
               n_into: int, size: int) -> list[Tensor]:
    """Per origin ``(B, n_into, n_origin)``: each block of ``size`` rows fed by the tokens one
    backward pass from the whole block reaches."""
    maps: list[Tensor] = []
    for start in range(0, n_into, size):
        rows = torch.zeros(n_into, dtype=into.dtype, device=into.device)
        rows[start:start + size] = 1
        support = _pass_rows(into, into_dim, origins, batch, rows)
        if not maps:
            maps = [torch.zeros(batch, n_into, s.shape[1], dtype=torch.bool, device=s.device)
                    for s in support]
        for full, reached in zip(maps, support, strict=True):
            full[:, start:start + size] = reached[:, None, :]
    return maps


def guarded(probe: Probe | None, names: Sequence[str]) -> Probe:
    r"""The data flow's probe (``dependence(site, into, into_dim, origins, batch, exact)``,
    see :func:`~captum_hetattn.binding.dataflow.analyse`) under the recording's budget of
    exact-fallback passes (:data:`captum_hetattn.capture.PROBE_PASSES`).

    Args:
        probe: the probe to guard (``None``: the traced one).
        names: the recorded calls' module names, by call index (named in the warning).

    Returns:
        The guarded probe; one per recording (it counts the passes spent).
    """
    from captum_hetattn.binding.dataflow import _dependence

    inner = probe or (lambda site, *args, **kwargs: _dependence(*args, **kwargs))
    return _Guard(inner, list(names))


def row_support(into: Tensor, row: int, origin: Tensor, origin_dim: int) -> Tensor | None:
    r"""``(B, n)`` bool: the tokens of ``origin`` that row ``row`` of ``into`` (flattened over
    all dimensions but the last) is computed from, in one backward pass; ``None`` where
    ``into`` is not computed from ``origin``.

    The layout probes decode every row's token with two passes per bit of the token count,
    and forward-mode ones at that (a second-order pass through everything between ``origin``
    and ``into``); a hidden state whose slots are not its tokens is ruled out by one row that
    reads several of them, so candidates that fail (CvT's and MobileViT's convolutional
    projections against each enclosing layer, patches of pixels) cost one first-order pass
    each instead of forty. A row depends on a token iff its Jacobian block is nonzero, which a
    random cotangent shows as the forward-mode probes do (both are exact zero tests)."""
    if not into.requires_grad or not origin.requires_grad:
        return None
    weights = torch.zeros(into.shape, dtype=into.dtype, device=into.device)
    flat = weights.view(-1, into.shape[-1])
    flat[row] = torch.randn(into.shape[-1], generator=_REFUTE).to(weights)
    (grad,) = backward(into, origin, weights, retain_graph=True, allow_unused=True)
    if grad is None:
        return None
    return (tokens_view(grad, origin_dim) != 0).any(dim=-1)


def several_reason(side: str, support: Tensor, canonical: Any, name: str) -> str | None:
    r"""Why the hidden states ``canonical`` (a ``_Canonical``: ``where``, ``size``) cannot hold
    the ``side`` slots of a call of module ``name`` when one of them reads the tokens
    ``support`` (``(B, n)`` bool, from :func:`row_support`), or ``None`` where it reads one
    token or none. The module's own hidden states are not named again (the message is shared
    by every layer it fits, and the caller names each module)."""
    count = int(support.sum())
    if count < 2:
        return None
    where = "its own hidden states" if canonical.where == f"'{name}'" else canonical.where
    start = f"its {side} slots are each computed from several tokens of {where} (one reads "
    if bool((support.sum(dim=1) == canonical.size).any()):
        return (f"{start}every token of its example): the softmax is not over tokens (e.g. "
                "channel attention), or its slots are computed from the whole example")
    return (f"{start}{count} of them): the slots are new tokens made from several of these (a "
            "patch of pixels, a convolutional or pooled projection), not tokens of them")


# ------------------------------------------------------------------ the layouts' pass budget
class LayoutBudgetExceeded(Exception):
    r"""Raised by :func:`backward` inside :func:`layout_budget` once one call's layout probes
    have spent :data:`captum_hetattn.capture.LAYOUT_PASSES` backward passes."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def reason(self) -> str:
        """Why the call is left out (the engine's warning names the module)."""
        return (f"finding which tokens its maps are over took more than {self.limit} backward "
                "passes (captum_hetattn.capture.LAYOUT_PASSES; each is a backward through the "
                "layers between the call and the hidden states it is laid out over), so it is "
                "left out rather than run for minutes: relevance passes through it as through "
                "an MLP; set captum_hetattn.capture.LAYOUT_PASSES = None (or higher) to probe "
                "it fully")


_SPENT = threading.local()  # .passes: the passes of the call being laid out (None: none is)


def _layout_limit() -> int | None:
    from captum_hetattn import capture  # the package's value now: setting it there works

    limit = getattr(capture, "LAYOUT_PASSES", None)
    return None if limit is None else max(1, int(limit))


@contextmanager
def layout_budget() -> Iterator[None]:
    r"""Count the backward passes :func:`backward` runs while one call is laid out; past
    :data:`captum_hetattn.capture.LAYOUT_PASSES` the next one raises
    :class:`LayoutBudgetExceeded`. Passes, never seconds: the same inputs always give the same
    verdict."""
    outer = getattr(_SPENT, "passes", None)
    _SPENT.passes = 0
    try:
        yield
    finally:
        _SPENT.passes = outer


def spent() -> int | None:
    """The passes the call being laid out has spent so far (``None``: none is being laid out)."""
    return getattr(_SPENT, "passes", None)


def backward(outputs: Any, inputs: Any, grad_outputs: Any = None, **options: Any
             ) -> tuple[Tensor | None, ...]:
    r""":func:`torch.autograd.grad` for the layout probes, counted against the budget of the
    call being laid out (:func:`layout_budget`; outside one it is not counted)."""
    passes = getattr(_SPENT, "passes", None)
    if passes is not None:
        limit = _layout_limit()
        if limit is not None and passes >= limit:
            raise LayoutBudgetExceeded(limit)
        _SPENT.passes = passes + 1
    return torch.autograd.grad(outputs, inputs, grad_outputs, **options)
