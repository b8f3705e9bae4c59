r"""Deprecated alias: graph inference moved to :mod:`captum_hetattn.graph.inference`
(``infer_graph``, ``graph_from_flow``, ``is_causal``) and the trace of a recorded forward to
:mod:`captum_hetattn.binding` (``trace``, ``layer_pattern``, ``tower_of``).

Kept for one release; import from the new places.
"""

import warnings

from captum_hetattn.binding.streams import layer_pattern, tower_of
from captum_hetattn.binding.trace import trace
from captum_hetattn.graph.inference import graph_from_flow, infer_graph, is_causal

warnings.warn(
    "captum_hetattn.infer moved to captum_hetattn.graph.inference (infer_graph, graph_from_flow, "
    "is_causal) and captum_hetattn.binding (trace, layer_pattern, tower_of); import from there",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["graph_from_flow", "infer_graph", "is_causal", "layer_pattern", "tower_of", "trace"]
