r"""The colours of token relevance, shared by the figures and the HTML: one colour scale per
relevance vector with the **readout token's own share left out** (as GAE's reference code does:
its identity entry, 1, swamps everything else), the readout token drawn grey. Non-finite values
count as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import colors as mcolors
from torch import Tensor

if TYPE_CHECKING:
    from captum_hetattn import Explanation

#: what a relevance vector may be given as
RelevanceLike = Tensor | np.ndarray | Sequence[float]

#: colour of the readout token's box (neutral: its own share is left out)
READOUT_FACE = "#d9d9d9"
READOUT_TEXT = "#7a7a7a"
#: colour maps: magnitude (Captum's default for positive maps) and signed (red = positive)
MAGNITUDE_CMAP = "Greens"
SIGNED_CMAP = "bwr"


def as_vector(relevance: RelevanceLike) -> np.ndarray:
    """1-D float64 array with non-finite values set to 0."""
    if isinstance(relevance, Tensor):
        values = relevance.detach().to("cpu", torch.float64).numpy()
    else:
        values = np.asarray(relevance, dtype=np.float64)
    return np.nan_to_num(values.reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)


def readout_index(readout_token: int | Tensor | None, n: int) -> int | None:
    """The readout token's position among ``n`` tokens (negative counts from the end); None
    when there is none or it lies outside them (e.g. a token that is not drawn)."""
    if readout_token is None:
        return None
    index = int(readout_token)
    return index % n if -n <= index < n else None


def without_readout(values: np.ndarray, readout_token: int | None) -> np.ndarray:
    """``values`` with the readout token's entry set to 0 (a copy)."""
    values = values.copy()
    index = readout_index(readout_token, len(values))
    if index is not None:
        values[index] = 0.0
    return values


def relevance_scale(relevance: RelevanceLike, *, readout_token: int | None = None) -> float:
    r"""The colour scale of a relevance vector: its largest magnitude, the readout token's own
    entry left out (non-finite values count as 0).

    Args:
        relevance: ``(n,)`` token relevance (tensor, array or list).
        readout_token: index of the readout token in ``relevance``, or None.

    Returns:
        float: ``max |relevance|`` over the other tokens; 0.0 when they are all zero.

    Examples::

        >>> relevance_scale([1.0, 0.2, -0.4], readout_token=0)
        0.4
    """
    values = without_readout(as_vector(relevance), readout_token)
    return float(np.abs(values).max()) if values.size else 0.0


def token_colors(
    relevance: RelevanceLike,
    *,
    readout_token: int | None = None,
    signed: bool = False,
    cmap: str | mcolors.Colormap | None = None,
    scale: float | None = None,
) -> np.ndarray:
    r"""The RGBA colour of every token's box, as :func:`plot_image_text` and
    :func:`plot_contrast` draw them.

    Magnitude (``signed=False``): ``|r| / scale`` on a sequential colour map (0 is white).
    Signed (``signed=True``): ``r / scale`` on a diverging colour map centred at 0 with the
    symmetric range ``[-scale, scale]`` (default: red positive, blue negative, 0 white). The
    scale is :func:`relevance_scale` (the readout token left out); the readout token itself is
    drawn neutral grey (:data:`READOUT_FACE`). An all-zero vector gives the colour of 0 for
    every token; no colour is ever NaN.

    Args:
        relevance: ``(n,)`` token relevance.
        readout_token: index of the readout token, or None.
        signed: diverging (signed) rather than magnitude colours.
        cmap: a matplotlib colour map or its name; default :data:`MAGNITUDE_CMAP` /
            :data:`SIGNED_CMAP`.
        scale: the value drawn at full colour (default :func:`relevance_scale`); values beyond
            it saturate.

    Returns:
        np.ndarray: ``(n, 4)`` RGBA in ``[0, 1]``.

    Examples::

        >>> colours = token_colors(torch.tensor([1.0, 0.5, 0.1]), readout_token=0)
        >>> colours[1]  # the largest non-readout token: full colour
    """
    values = as_vector(relevance)
    colour_map = plt.get_cmap(cmap or (SIGNED_CMAP if signed else MAGNITUDE_CMAP))
    top = relevance_scale(values, readout_token=readout_token) if scale is None else float(scale)
    if not np.isfinite(top) or top <= 0:
        top = 1.0
    if signed:
        positions = (np.clip(values / top, -1.0, 1.0) + 1.0) / 2.0
    else:
        positions = np.clip(np.abs(values) / top, 0.0, 1.0)
    colours = np.asarray(colour_map(positions), dtype=np.float64).reshape(len(values), 4)
    index = readout_index(readout_token, len(values))
    if index is not None:
        colours[index] = mcolors.to_rgba(READOUT_FACE)
    return colours


def explanation_readout_token(explanation: Explanation, source: str, example: int) -> int | None:
    r"""The readout token's index among ``source``'s tokens, or None when the readout stream is
    another stream (or ``source`` is only part of its stream), or when the readout reads
    several tokens of the example (mean pooling: every read token is a word whose context
    relevance is shown; their own shares are already out of ``relevance``).

    Args:
        explanation: from ``explain``.
        source: a source name (e.g. ``"text"``).
        example: which example of the batch.

    Returns:
        int or None.

    Examples::

        >>> explanation = explainer.explain(inputs, target=label)  # LXMERT: read at text [CLS]
        >>> explanation_readout_token(explanation, "text", 0)
        0
        >>> explanation_readout_token(explanation, "image", 0) is None
        True
    """
    stream = (explanation.sources or {}).get(source, source)
    if stream != explanation.readout_stream:
        return None
    streams = explanation.streams or {}
    if stream in streams and explanation.sizes.get(source) != streams[stream]:
        return None  # the source is part of a stream: its columns are not the stream's
    weights = (explanation.readout or {}).get(stream)
    if weights is not None and weights.dim() == 2 and int((weights[example] != 0).sum()) > 1:
        return None  # a pooled readout: no one readout token
    return int(explanation.readout_token[example])


__all__ = [
    "MAGNITUDE_CMAP",
    "READOUT_FACE",
    "READOUT_TEXT",
    "SIGNED_CMAP",
    "RelevanceLike",
    "as_vector",
    "explanation_readout_token",
    "readout_index",
    "relevance_scale",
    "token_colors",
    "without_readout",
]
