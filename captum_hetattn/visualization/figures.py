r"""Figures of token relevance (matplotlib): image overlays drawn with
``captum.attr.visualization``, text as coloured boxes.

- :func:`plot_image_text`: the image with its relevance blended over it, beside the text tokens
  as coloured boxes (magnitude, max-scaled).
- :func:`plot_contrast`: the same for signed relevance (the paper's logical inspection, Fig. 8:
  ``Contrast(a, b)`` under ``correction="full"``): red = evidence for ``a``, blue = for ``b``, a
  diverging colour map centred at 0 with a symmetric scale.
- :func:`plot_explanation`: either of them for one example of an
  :class:`~captum_hetattn.Explanation`.

The readout token is drawn grey and does not set the colour scale
(:mod:`captum_hetattn.visualization.colors`). All-zero, single-sign and non-finite maps draw
without error (non-finite values count as 0; an all-zero map draws the plain image with a note).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from captum.attr import visualization as viz
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from torch import Tensor

from captum_hetattn import PatchGrid, to_heatmap
from captum_hetattn.visualization.colors import (
    MAGNITUDE_CMAP,
    READOUT_TEXT,
    SIGNED_CMAP,
    RelevanceLike,
    as_vector,
    explanation_readout_token,
    readout_index,
    relevance_scale,
    token_colors,
    without_readout,
)

if TYPE_CHECKING:
    from captum_hetattn import Explanation

#: an image: ``H × W × 3`` (or ``× 1``, or ``H × W``) uint8 / float array, or a ``(C, H, W)``
#: tensor
ImageLike = Tensor | np.ndarray
#: how image tokens lie over the picture: a :class:`~captum_hetattn.mapping.PatchGrid`,
#: ``(rows, cols)`` (the last ``rows * cols`` tokens) or None (inferred from the token count)
GridLike = PatchGrid | tuple[int, int] | None


def _as_rgb(image: ImageLike) -> np.ndarray:
    """``H × W × 3`` float32 in ``[0, 1]`` from an array / tensor image."""
    if isinstance(image, Tensor):
        array = image.detach().to("cpu", torch.float32).numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # channels first → last
    else:
        array = np.asarray(image)
    integer = np.issubdtype(array.dtype, np.integer)
    array = np.nan_to_num(array.astype(np.float32))
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be H×W, H×W×C or a (C, H, W) tensor; got shape "
                         f"{tuple(array.shape)}")
    array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if integer or array.max(initial=0.0) > 1.0:
        array = array / 255.0
    return np.clip(array, 0.0, 1.0)


def _image_heat(
    relevance: RelevanceLike, image_hw: tuple[int, int], grid: GridLike
) -> np.ndarray:
    """``H × W`` heat map over the image from token relevance (or an already 2-D map)."""
    height, width = image_hw
    array = (relevance.detach().to("cpu", torch.float64).numpy()
             if isinstance(relevance, Tensor) else np.asarray(relevance, dtype=np.float64))
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        if array.shape == (height, width):
            return array
        grid = PatchGrid("image", prefix_tokens=0, grid=array.shape, interpolation="nearest")
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"image relevance must be (n_tokens,), (rows, cols) or (H, W); got "
                         f"shape {tuple(array.shape)}")
    if isinstance(grid, tuple):
        grid = PatchGrid("image", grid=tuple(grid), interpolation="nearest")
    elif grid is None:
        grid = PatchGrid("image", interpolation="nearest")
    return grid_heatmap(torch.from_numpy(array), (height, width), grid)[..., 0].astype(np.float64)


def grid_heatmap(relevance: Tensor, image_hw: tuple[int, int], grid: PatchGrid) -> np.ndarray:
    """``(n_tokens,)`` relevance of one example → ``H × W × 1`` heat map over the image."""
    height, width = image_hw
    placeholder = torch.zeros(1, 1, height, width)
    return to_heatmap(grid.to_input(relevance[None].float(), placeholder, 0))


def draw_overlay(axis: plt.Axes, image: np.ndarray, heat: np.ndarray, title: str) -> None:
    """Blend ``heat`` over ``image`` on ``axis`` with Captum's ``visualize_image_attr``."""
    axis.set_axis_off()
    axis.set_title(title, fontsize=8)
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if not np.any(heat):  # Captum cannot normalise an all-zero map
        axis.imshow(image)
        return
    sign = "absolute_value" if (heat < 0).any() else "positive"
    viz.visualize_image_attr(
        heat, image.astype(np.float32) / 255.0, method="blended_heat_map", sign=sign,
        plt_fig_axis=(axis.figure, axis), use_pyplot=False, alpha_overlay=0.55,
    )
    axis.set_title(title, fontsize=8)


def _draw_image(axis: Axes, rgb: np.ndarray, heat: np.ndarray, *, signed: bool,
                cmap: str | mcolors.Colormap, label: str) -> float:
    """The image with ``heat`` blended over it (Captum), max-scaled (symmetric when signed), and
    a colour bar; the plain image with a note when ``heat`` is all zero. Returns the scale."""
    axis.set_axis_off()
    values = heat if signed else np.abs(heat)
    scale = float(np.abs(values).max()) if values.size else 0.0
    if not np.isfinite(scale) or scale <= 0:
        axis.imshow(rgb)
        axis.text(0.5, -0.04, "no relevance on the image (all zero)", transform=axis.transAxes,
                  ha="center", va="top", fontsize=7, color="#555555")
        return 0.0
    # max-scaled here (Captum would clip the top 2 %): Captum then draws it at [0, 1] / [-1, 1]
    normalised = (values / scale).astype(np.float32)[..., None]
    viz.visualize_image_attr(
        normalised, rgb, method="blended_heat_map", sign="all" if signed else "positive",
        plt_fig_axis=(axis.figure, axis), use_pyplot=False, alpha_overlay=0.55, cmap=cmap,
        outlier_perc=0,
    )
    _colour_bar(axis, cmap, scale, signed, label)
    return scale


def _colour_bar(axis: Axes, cmap: str | mcolors.Colormap, scale: float, signed: bool,
                label: str) -> None:
    top = scale if scale > 0 else 1.0
    norm = mcolors.Normalize(-top if signed else 0.0, top)
    bar = axis.figure.colorbar(ScalarMappable(norm=norm, cmap=plt.get_cmap(cmap)), ax=axis,
                               orientation="horizontal", fraction=0.06, pad=0.04)
    bar.ax.tick_params(labelsize=6)
    bar.set_label(label, fontsize=7)
    if scale <= 0:
        bar.set_ticks([])


def _luminance(rgba: Sequence[float]) -> float:
    r, g, b = rgba[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _draw_tokens(axis: Axes, tokens: Sequence[str], colours: np.ndarray,
                 readout_token: int | None, fontsize: float) -> None:
    """Tokens as coloured boxes flowing left to right from the axis' top-left corner, wrapped at
    its width (the font shrinks until they fit). Offsets are in points, so a later layout change
    (``tight_layout``) moves the boxes without stretching the gaps between them."""
    axis.set_axis_off()
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    n = len(tokens)
    readout = readout_index(readout_token, n)
    renderer = axis.figure.canvas.get_renderer()
    to_points = 72.0 / axis.figure.dpi
    box = axis.get_window_extent(renderer)
    width, height = max(box.width, 1.0) * to_points, max(box.height, 1.0) * to_points
    size = fontsize
    while True:
        texts = []
        margin = 0.4 * size  # the box's padding around the text
        x, y, line = margin, margin, 0.0
        for i, token in enumerate(tokens):
            is_readout = i == readout
            face = colours[i]
            text = axis.annotate(
                str(token), xy=(0.0, 1.0), xycoords="axes fraction", xytext=(x, -y),
                textcoords="offset points", ha="left", va="top", fontsize=size,
                color=READOUT_TEXT if is_readout else
                ("white" if _luminance(face) < 0.45 else "black"),
                fontstyle="italic" if is_readout else "normal",
                bbox={"boxstyle": "round,pad=0.3", "facecolor": tuple(face),
                      "edgecolor": READOUT_TEXT if is_readout else "#bbbbbb",
                      "linestyle": "--" if is_readout else "-", "linewidth": 0.6},
            )
            extent = text.get_window_extent(renderer)
            step = extent.width * to_points + 2.2 * margin
            line = max(line, extent.height * to_points + 2.4 * margin)
            if x > margin and x + step > width:
                x, y = margin, y + line
                text.xyann = (x, -y)
            x += step
            texts.append(text)
        if y + 1.5 * line <= height or size <= 4:
            break
        for text in texts:
            text.remove()
        size -= 1
    if readout is not None and n:
        axis.annotate(f"grey: readout token '{tokens[readout]}' (its own share left out)",
                      xy=(0.0, 1.0), xycoords="axes fraction", xytext=(0.0, -(y + line)),
                      textcoords="offset points", ha="left", va="top", fontsize=6,
                      color=READOUT_TEXT)


def _check_lengths(tokens: Sequence[str], text_relevance: RelevanceLike) -> np.ndarray:
    values = as_vector(text_relevance)
    if len(values) < len(tokens):
        raise ValueError(f"{len(tokens)} tokens but relevance for {len(values)}")
    return values[: len(tokens)]


def _plot(image: ImageLike, image_relevance: RelevanceLike | None, tokens: Sequence[str],
          text_relevance: RelevanceLike, *, signed: bool, grid: GridLike,
          readout_token: int | None, image_readout_token: int | None, title: str | None,
          cmap: str | mcolors.Colormap, labels: tuple[str, str],
          figsize: tuple[float, float] | None, axes: Sequence[Axes] | None, show_input: bool,
          fontsize: float) -> Figure:
    tokens = [str(t) for t in tokens]
    values = _check_lengths(tokens, text_relevance)
    if axes is None:
        ratios = (1.0, 1.0, 1.6) if show_input else (1.0, 1.6)
        figure, created = plt.subplots(
            1, len(ratios), figsize=figsize or (2.2 * sum(ratios), 2.6),
            gridspec_kw={"width_ratios": ratios})
        axes = list(created)
    if len(axes) not in (2, 3):
        raise ValueError("axes must be (image_axis, text_axis) or (input_axis, image_axis, "
                         f"text_axis); got {len(axes)} axes")
    *image_axes, text_axis = axes
    image_axis = image_axes[-1]
    figure = image_axis.figure
    for axis, panel in zip(axes, ("input", "image", "text")[-len(axes):], strict=True):
        axis.set_label(f"hetattn-{panel}")  # findable: figure.axes in order of creation
    rgb = _as_rgb(image)
    if len(image_axes) == 2:
        image_axes[0].imshow(rgb)
        image_axes[0].set_axis_off()
        image_axes[0].set_title("input", fontsize=8)
    heat = np.zeros(rgb.shape[:2])
    if image_relevance is not None:
        image_values: Any = image_relevance
        if image_readout_token is not None:
            image_values = without_readout(as_vector(image_relevance), image_readout_token)
        heat = _image_heat(image_values, rgb.shape[:2], grid)
    _draw_image(image_axis, rgb, heat, signed=signed, cmap=cmap, label=labels[0])
    image_axis.set_title("image relevance", fontsize=8)
    scale = relevance_scale(values, readout_token=readout_token)
    colours = token_colors(values, readout_token=readout_token, signed=signed, cmap=cmap)
    _draw_tokens(text_axis, tokens, colours, readout_token, fontsize)
    _colour_bar(text_axis, cmap, scale, signed, labels[1])
    text_axis.set_title("text relevance" if scale > 0 else "text (no relevance: all zero)",
                        fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


# ------------------------------------------------------------------------------ figures

def plot_image_text(
    image: ImageLike,
    image_relevance: RelevanceLike | None,
    tokens: Sequence[str],
    text_relevance: RelevanceLike,
    *,
    grid: GridLike = None,
    readout_token: int | None = None,
    image_readout_token: int | None = None,
    title: str | None = None,
    cmap: str | mcolors.Colormap = MAGNITUDE_CMAP,
    show_input: bool = True,
    figsize: tuple[float, float] | None = None,
    axes: Sequence[Axes] | None = None,
    fontsize: float = 9.0,
) -> Figure:
    r"""The image with its relevance heat map blended over it (Captum's
    ``visualize_image_attr``), beside the text tokens drawn as coloured boxes.

    Both show the relevance's magnitude ``|r|``, max-scaled per stream on a sequential colour
    map with a colour bar in relevance units (use :func:`plot_contrast` for signed relevance).
    The readout token (``readout_token``, an index into ``tokens``) is drawn grey and left out
    of the scale. An all-zero image map draws the plain image with a note; non-finite values
    count as 0.

    Args:
        image: ``H × W × 3`` (or ``H × W``) uint8 or float array, or a ``(C, H, W)`` tensor.
        image_relevance: the image stream's token relevance ``(n_tokens,)`` laid out by
            ``grid``, a ``(rows, cols)`` map of cells, an ``H × W`` map, or None (no overlay).
        tokens: the text tokens (labels).
        text_relevance: ``(n,)`` relevance of the text tokens, ``n ≥ len(tokens)`` (extra
            entries, e.g. padding, are not drawn).
        grid: how image tokens lie over the picture: a
            :class:`~captum_hetattn.mapping.PatchGrid`, ``(rows, cols)`` (the last
            ``rows * cols`` tokens) or None (inferred from the token count, prefix tokens
            such as ``[CLS]`` skipped).
        readout_token: index of the readout token in ``tokens`` (e.g.
            ``explanation.readout_token[i]`` when the readout stream is the text), or None.
        image_readout_token: index of the readout token in ``image_relevance`` when it is an
            image token (a single-stream ViT read at a patch), or None.
        title: the figure's title.
        cmap: the sequential colour map (image and tokens).
        show_input: in a new figure, also show the plain picture in colour on the left (the
            overlay draws it in grey, as Captum's ``blended_heat_map`` does).
        figsize: size of a new figure, in inches (default: from the panels).
        axes: ``(image_axis, text_axis)`` or ``(input_axis, image_axis, text_axis)`` to draw
            into instead of a new figure (e.g. rows of a larger figure).
        fontsize: the tokens' font size (shrunk until all tokens fit).

    Returns:
        matplotlib.figure.Figure: the figure (save it with ``savefig``, close it with
        ``plt.close``). Its panels carry the labels ``"hetattn-input"``, ``"hetattn-image"``
        and ``"hetattn-text"`` (``axis.get_label()``); each token is a ``Text`` of the text
        panel whose box has the colour :func:`token_colors` gives.

    Examples::

        >>> from captum_hetattn.visualization import plot_image_text
        >>> explanation = explainer.explain(inputs, target=label)
        >>> figure = plot_image_text(
        ...     example.image, explanation.relevance["image"][0], example.tokens["text"],
        ...     explanation.relevance["text"][0], grid=(4, 4), readout_token=0)
        >>> figure.savefig("example.png")
    """
    return _plot(image, image_relevance, tokens, text_relevance, signed=False, grid=grid,
                 readout_token=readout_token, image_readout_token=image_readout_token,
                 title=title, cmap=cmap, labels=("|relevance|", "|relevance|"),
                 figsize=figsize, axes=axes, show_input=show_input, fontsize=fontsize)


def plot_contrast(
    image: ImageLike,
    image_relevance: RelevanceLike | None,
    tokens: Sequence[str],
    text_relevance: RelevanceLike,
    *,
    answers: tuple[str, str] = ("a", "b"),
    grid: GridLike = None,
    readout_token: int | None = None,
    image_readout_token: int | None = None,
    title: str | None = None,
    cmap: str | mcolors.Colormap = SIGNED_CMAP,
    show_input: bool = True,
    figsize: tuple[float, float] | None = None,
    axes: Sequence[Axes] | None = None,
    fontsize: float = 9.0,
) -> Figure:
    r"""Red/blue maps of signed relevance: the paper's logical inspection (Fig. 8).

    Explain with a contrastive objective under the ``full`` correction, e.g.
    ``explain(inputs, objective=Contrast(a, b), correction="full")``: positive relevance is
    evidence for answer ``a`` (red), negative for ``b`` (blue). Image and tokens use a diverging
    colour map centred at 0 with a symmetric scale ``[-m, m]``, ``m`` the largest magnitude of
    each stream (the readout token left out; it is drawn grey). Single-sign and all-zero maps
    draw without error (all zero: the plain image with a note).

    Args:
        image: ``H × W × 3`` (or ``H × W``) uint8 or float array, or a ``(C, H, W)`` tensor.
        image_relevance: the image stream's signed token relevance (see
            :func:`plot_image_text`), or None.
        tokens: the text tokens.
        text_relevance: ``(n,)`` signed relevance of the text tokens, ``n ≥ len(tokens)``.
        answers: names of ``a`` and ``b`` for the colour bars (``("yes", "no")``).
        grid: image token layout; see :func:`plot_image_text`.
        readout_token: index of the readout token in ``tokens``, or None.
        image_readout_token: index of the readout token in ``image_relevance``, or None.
        title: the figure's title.
        cmap: the diverging colour map, low = ``b``, high = ``a`` (default ``"bwr"``).
        show_input: in a new figure, also show the plain picture in colour on the left.
        figsize: size of a new figure, in inches (default: from the panels).
        axes: ``(image_axis, text_axis)`` or ``(input_axis, image_axis, text_axis)`` to draw
            into instead of a new figure.
        fontsize: the tokens' font size.

    Returns:
        matplotlib.figure.Figure: the figure.

    Examples::

        >>> from captum_hetattn import Contrast
        >>> from captum_hetattn.visualization import plot_contrast
        >>> explanation = explainer.explain(inputs, objective=Contrast(yes, no),
        ...                                 correction="full")
        >>> plot_contrast(image, explanation.relevance["image"][0], words,
        ...               explanation.relevance["text"][0], answers=("yes", "no"),
        ...               readout_token=0).savefig("why_yes.png")
    """
    label = f"← {answers[1]}   ·   {answers[0]} →"
    return _plot(image, image_relevance, tokens, text_relevance, signed=True, grid=grid,
                 readout_token=readout_token, image_readout_token=image_readout_token,
                 title=title, cmap=cmap, labels=(label, label), figsize=figsize, axes=axes,
                 show_input=show_input, fontsize=fontsize)


def plot_explanation(
    explanation: Explanation,
    example: int,
    image: ImageLike,
    tokens: Sequence[str],
    *,
    image_source: str = "image",
    text_source: str = "text",
    signed: bool = False,
    **options: Any,
) -> Figure:
    r""":func:`plot_image_text` (or, with ``signed=True``, :func:`plot_contrast`) of one example
    of an :class:`~captum_hetattn.Explanation`, the readout token found from it.

    Args:
        explanation: from ``explain`` (``HeterogenousAttentionAttribution`` or a baseline).
        example: which example of the batch.
        image: that example's picture.
        tokens: that example's text tokens.
        image_source, text_source: the sources drawn (``explanation.relevance`` keys); a
            missing image source draws the picture without an overlay.
        signed: draw signed relevance (from a ``Contrast`` objective under ``full``).
        **options: passed on (``grid``, ``title``, ``answers``, ``axes``, ...).

    Returns:
        matplotlib.figure.Figure: the figure.

    Examples::

        >>> explanation = explainer.explain(inputs, objective=Contrast(0, 1), correction="full")
        >>> plot_explanation(explanation, 0, example.image, example.tokens["text"],
        ...                  signed=True, answers=("yes", "no"), grid=(4, 4))
    """
    if text_source not in explanation.relevance:
        raise ValueError(f"the explanation has no source '{text_source}'; it has "
                         f"{sorted(explanation.relevance)}")
    text = explanation.relevance[text_source][example]
    picture = explanation.relevance.get(image_source)
    options.setdefault("readout_token", explanation_readout_token(explanation, text_source,
                                                                  example))
    if picture is not None:
        options.setdefault("image_readout_token",
                           explanation_readout_token(explanation, image_source, example))
    draw = plot_contrast if signed else plot_image_text
    return draw(image, None if picture is None else picture[example], tokens, text, **options)


# ------------------------------------------------------------------------------ PNG

def plot_image(
    image: ImageLike,
    image_relevance: RelevanceLike,
    *,
    grid: GridLike = None,
    title: str | None = None,
    cmap: str | mcolors.Colormap = MAGNITUDE_CMAP,
) -> Figure:
    r"""The input beside the image with its relevance blended over it and a colour bar in
    relevance units (magnitude ``|r|``, max-scaled): :func:`plot_image_text` for a model that
    reads no text.

    Args:
        image: ``H × W × 3`` (or ``H × W``) array, or a ``(C, H, W)`` tensor.
        image_relevance: the image's token relevance, as for :func:`plot_image_text`.
        grid: how image tokens lie over the picture (as for :func:`plot_image_text`).
        title: the figure's title.
        cmap: the colour map.
    """
    rgb = _as_rgb(image)
    figure, (input_axis, image_axis) = plt.subplots(1, 2, figsize=(4.4, 2.8))
    input_axis.imshow(rgb)
    input_axis.set_axis_off()
    input_axis.set_title("input", fontsize=8)
    _draw_image(image_axis, rgb, _image_heat(image_relevance, rgb.shape[:2], grid),
                signed=False, cmap=cmap, label="|relevance|")
    image_axis.set_title("image relevance", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def figure_png(figure: plt.Figure) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


__all__ = [
    "GridLike",
    "ImageLike",
    "draw_overlay",
    "figure_png",
    "grid_heatmap",
    "plot_contrast",
    "plot_explanation",
    "plot_image",
    "plot_image_text",
]
