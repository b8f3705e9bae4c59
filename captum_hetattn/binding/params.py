r"""Parameter tokens: rows of a stream made of learned parameters only.

A probe (SigLIP's attention-pooling query), latents (Perceiver), learned queries (the BLIP-2
Q-Former) or a ``[CLS]`` added inside the model join a stream with no input relevance: they are
never a source (docs/architecture.md §2). Rows that no traced input feeds are either such
parameter tokens or tokens of an input the engine does not trace (pixel values passed as an
additional argument): the autograd graph tells them apart, since an untraced tensor enters an
operation as an edge without a gradient function, while a parameter is a leaf of the graph.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import torch
from torch import Tensor, nn

from captum_hetattn.binding.tokens import tokens_view
from captum_hetattn.capture import autograd_node

#: the largest part of the autograd graph walked (a parameter token is a few nodes deep)
_LIMIT = 4096


def parameter_only(tensor: Tensor, stop: Container[object] = ()) -> bool:
    r"""Whether ``tensor`` is computed from learned parameters alone.

    Walks the autograd graph from ``tensor`` towards its leaves, not below the nodes in
    ``stop`` (tensors of earlier calls or inputs, which another stream or source accounts for).
    True when it reaches at least one ``nn.Parameter`` and nothing else: no tensor outside the
    graph (an untraced input, a constant or buffer added in), no leaf that is not a parameter.
    A tensor without a graph (a constant), or a graph too large to walk, is not.
    """
    leaves = _leaves(tensor, stop)
    return leaves is not None and leaves == {"parameter"}  # no edge outside the graph either


def takes_untraced(tensor: Tensor, stop: Container[object] = (), batch: int | None = None
                   ) -> bool:
    r"""Whether float data outside the autograd graph (an input the engine does not trace:
    pixel values passed as an additional argument; a float mask) enters ``tensor`` above the
    nodes in ``stop``: an operation with an edge without a gradient function that saved a
    float tensor for its backward (not an absent bias) — with ``batch``, one with a leading
    dimension of ``batch`` examples (not a buffer of the model: a scale, position codes). A
    graph too large to walk does not count (its rows stay the traced input's)."""
    leaves = _leaves(tensor, stop, batch)
    return leaves is not None and "untraced" in leaves


def fed_rows(tensor: Tensor, token_dim: int, origins: Sequence[Tensor]) -> Tensor | None:
    r"""``(B, n)``: the tokens of ``tensor`` that some element of ``origins`` feeds (a row
    the inputs do not reach is a parameter token or padding the model made).

    One Jacobian-vector product ``J·v`` for random ``v`` (a token is fed where its row of ``J``
    is non-zero; ``v`` misses that with probability 0), taken as the gradient of a vector-Jacobian
    product ``uᵀJ`` with respect to ``u``: two backward passes through the part of the graph
    between the origins and ``tensor``, whatever its size in tokens. ``None`` where that part
    has no double backward (a custom function's)."""
    direction = torch.zeros_like(tensor, requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.enable_grad():
            grads = torch.autograd.grad(tensor, list(origins), direction, create_graph=True,
                                        retain_graph=True, allow_unused=True)
            pairs = [(g, torch.randn(g.shape, generator=generator).to(g))
                     for g in grads if g is not None]
            if not pairs:
                return torch.zeros(tokens_view(tensor, token_dim).shape[:2], dtype=torch.bool,
                                   device=tensor.device)
            if not all(g.requires_grad for g, _ in pairs):
                return None
            (product,) = torch.autograd.grad([g for g, _ in pairs], direction,
                                             [v for _, v in pairs], allow_unused=True)
    except RuntimeError:
        return None
    if product is None:
        return torch.zeros(tokens_view(tensor, token_dim).shape[:2], dtype=torch.bool,
                           device=tensor.device)
    return tokens_view(product, token_dim).abs().amax(dim=-1) != 0


def untraced_weights(tensor: Tensor, stop: Container[object] = (), batch: int | None = None
                     ) -> list[Tensor]:
    r"""The parameters that operations on untraced float data read beside it, above the nodes
    in ``stop`` (a patch embedding's weight, with pixel values passed as an additional
    argument): a row depends on such a weight where the untraced data feeds it, so they stand
    for that data in :func:`fed_rows`. Empty where none is found (or past the walk's limit)."""
    root = autograd_node(tensor)
    found: dict[int, Tensor] = {}
    seen, stack = {root}, [root] if root is not None else []
    while stack:
        node = stack.pop()
        children = [child for child, _ in getattr(node, "next_functions", ())]
        if None in children and _saves_untraced(node, batch):
            for child in children:
                variable = getattr(child, "variable", None)
                if isinstance(variable, nn.Parameter):
                    found[id(variable)] = variable
        for child in children:
            if child is None or child in seen or child in stop:
                continue
            seen.add(child)
            if len(seen) > _LIMIT:
                return []
            stack.append(child)
    return list(found.values())


def _leaves(tensor: Tensor, stop: Container[object], batch: int | None = None
            ) -> set[str] | None:
    """The kinds of leaves above ``stop``: ``parameter``, ``outside`` (an edge without a
    gradient function: untraced data, a constant, an absent bias), ``untraced`` (such an edge
    of an operation that saved float data without a gradient), ``other`` (a leaf that is not
    a parameter); ``None`` past the limit."""
    root = autograd_node(tensor)
    if root is None:
        return {"outside"}
    kinds: set[str] = set()
    seen, stack = {root}, [root]
    while stack:
        node = stack.pop()
        variable = getattr(node, "variable", None)
        if variable is not None:  # AccumulateGrad: a leaf
            kinds.add("parameter" if isinstance(variable, nn.Parameter) else "other")
            continue
        for child, _ in getattr(node, "next_functions", ()):
            if child is None:
                kinds.add("untraced" if _saves_untraced(node, batch) else "outside")
                continue
            if child in seen or child in stop:
                continue
            seen.add(child)
            if len(seen) > _LIMIT:
                return None
            stack.append(child)
    return kinds


def _saves_untraced(node: object, batch: int | None = None) -> bool:
    """Whether an autograd node saved a float tensor that requires no gradient (with ``batch``
    examples along its first dimension, where given)."""
    for name in dir(node):
        if not name.startswith("_saved_"):
            continue
        try:
            value = getattr(node, name)
        except RuntimeError:  # freed after a backward
            continue
        if (isinstance(value, Tensor) and value.is_floating_point() and not value.requires_grad
                and (batch is None or (value.dim() >= 2 and value.shape[0] == batch))):
            return True
    return False


__all__ = ["fed_rows", "parameter_only", "takes_untraced", "untraced_weights"]
