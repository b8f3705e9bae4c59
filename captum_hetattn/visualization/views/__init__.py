r"""Interactive HTML views of an explanation (after bertviz), offline and self-contained.

Every view takes the :class:`~captum_hetattn.Explanation` that
``explain(..., return_maps=True)`` returns and gives a :class:`View`: shown inline by Jupyter /
JupyterLab (``_repr_html_``), a complete page (``.html``) or one file (``.save(path)``). The
scripts and styles are package files inlined into the page; nothing is fetched from a network.

- :func:`head_view`: per call (layer) and head, lines from query tokens to the key tokens they
  attend to; raw ``A``, corrected ``f(G) ⊙ A`` or signed gradient ``∂objective/∂A``.
- :func:`model_view`: a thumbnail per call × head, grouped by node type and stream pair.
- :func:`neuron_view`: query and key vectors of one head, their products, scores and weights.
- :func:`relevance_flow`: how the readout's relevance is shared between sources after each step
  of the layer graph.
"""

from captum_hetattn.visualization.views._base import View
from captum_hetattn.visualization.views.flow import relevance_flow
from captum_hetattn.visualization.views.head import head_view
from captum_hetattn.visualization.views.model import model_view
from captum_hetattn.visualization.views.neuron import neuron_view

__all__ = ["View", "head_view", "model_view", "neuron_view", "relevance_flow"]
