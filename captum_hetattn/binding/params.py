r"""Parameter tokens: rows of a stream made of learned parameters only.

A probe (SigLIP's attention-pooling query), latents (Perceiver), learned queries (the BLIP-2
Q-Former) or a ``[CLS]`` added inside the model join a stream with no input relevance: they are
never a source (docs/architecture.md §2). Rows that no traced input feeds are either such
parameter tokens or tokens of an input the engine does not trace (pixel values passed as an
additional argument): the autograd graph tells them apart, since an untraced tensor enters an
operation as an edge without a gradient function, while a parameter is a leaf of the graph.
"""

from __future__ import annotations

from collections.abc import Container

from torch import Tensor, nn

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
    root = autograd_node(tensor)
    if root is None:
        return False
    seen, stack, parameters = {root}, [root], 0
    while stack:
        node = stack.pop()
        variable = getattr(node, "variable", None)
        if variable is not None:  # AccumulateGrad: a leaf
            if not isinstance(variable, nn.Parameter):
                return False
            parameters += 1
            continue
        for child, _ in getattr(node, "next_functions", ()):
            if child is None:
                return False
            if child in seen or child in stop:
                continue
            seen.add(child)
            if len(seen) > _LIMIT:
                return False
            stack.append(child)
    return parameters > 0


__all__ = ["parameter_only"]
