r"""Deprecated alias: the views moved to :mod:`captum_hetattn.visualization.views`.

``from captum_hetattn.views import head_view`` keeps working for one release, with a
``DeprecationWarning``; import from ``captum_hetattn.visualization.views`` instead.
"""

import warnings

from captum_hetattn.visualization.views import (
    View,
    head_view,
    model_view,
    neuron_view,
    relevance_flow,
)

warnings.warn(
    "captum_hetattn.views moved to captum_hetattn.visualization.views; import from there "
    "(this alias goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["View", "head_view", "model_view", "neuron_view", "relevance_flow"]
