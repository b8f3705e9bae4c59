r"""Pictures of token relevance: image overlays drawn with ``captum.attr.visualization``, text as
coloured boxes (figures) or HTML, a self-contained (offline) HTML report with figures inlined as
base64 PNG, and interactive views of an explanation.

- :mod:`~captum_hetattn.visualization.colors`: the colour scale of a relevance vector and of
  every token, the readout token's own share left out.
- :mod:`~captum_hetattn.visualization.figures`: matplotlib figures (:func:`plot_image_text`,
  :func:`plot_contrast`, :func:`plot_explanation`) and :func:`figure_png`.
- :mod:`~captum_hetattn.visualization.html`: :func:`text_html`, :func:`png_tag`,
  :func:`report_html`.
- :mod:`~captum_hetattn.visualization.report`: the report of ``captum-hetattn demo``.
- :mod:`~captum_hetattn.visualization.views`: head view, model view, neuron view and relevance
  flow (after bertviz), offline HTML.

Every display leaves the **read tokens' own share** out (as GAE's reference code does: its
identity entry, 1, swamps everything else): ``explain`` already takes it out of ``relevance``
by default (``Explanation.own``), and a single readout token is drawn grey and does not set the
colour scale (:func:`relevance_scale`, :func:`token_colors`, :func:`text_html`), so a raw row
(``include_own=True``) draws the same; a readout over several tokens (mean pooling) greys none.
All-zero, single-sign and non-finite maps draw without error (non-finite values count as 0; an
all-zero map draws the plain image with a note). Importing this package leaves matplotlib's
backend as it is.
"""

from captum_hetattn.visualization.colors import (
    MAGNITUDE_CMAP,
    READOUT_FACE,
    READOUT_TEXT,
    SIGNED_CMAP,
    RelevanceLike,
    explanation_readout_token,
    relevance_scale,
    token_colors,
)
from captum_hetattn.visualization.figures import (
    GridLike,
    ImageLike,
    draw_overlay,
    figure_png,
    grid_heatmap,
    plot_contrast,
    plot_explanation,
    plot_image_text,
)
from captum_hetattn.visualization.html import REPORT_STYLE, png_tag, report_html, text_html

__all__ = [
    "MAGNITUDE_CMAP",
    "READOUT_FACE",
    "READOUT_TEXT",
    "REPORT_STYLE",
    "SIGNED_CMAP",
    "GridLike",
    "ImageLike",
    "RelevanceLike",
    "draw_overlay",
    "explanation_readout_token",
    "figure_png",
    "grid_heatmap",
    "plot_contrast",
    "plot_explanation",
    "plot_image_text",
    "png_tag",
    "relevance_scale",
    "report_html",
    "text_html",
    "token_colors",
]
