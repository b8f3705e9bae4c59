r"""The graph room: what the explanation expects of a model, as plain data.

- :mod:`~captum_hetattn.graph.nodes`: :class:`Stream`, :class:`AttentionNode`,
  :class:`BoundNode` and :func:`is_cross`, the one test for cross-attention;
- :mod:`~captum_hetattn.graph.junctions`: :class:`Junction` (tokens that change streams without
  attention);
- :mod:`~captum_hetattn.graph.layer_graph`: :class:`LayerGraph` (steps, layer blocks, types,
  validation, module patterns, the dict / JSON round trip);
- :mod:`~captum_hetattn.graph.spec`: the keys and format version of the dict / JSON form;
- :mod:`~captum_hetattn.graph.presets`: the graphs of known architectures, as JSON files;
- :mod:`~captum_hetattn.graph.inference`: a graph inferred from the data flow of one forward.

Importing this package loads only the plain-Python modules (no torch); ``presets`` and
``inference`` are imported by name.
"""

from captum_hetattn.graph.junctions import (
    CONFIG_PARAM_KEYS,
    JUNCTION_KINDS,
    JUNCTION_PARAMS,
    Junction,
)
from captum_hetattn.graph.layer_graph import (
    LayerGraph,
    _check_streams,
    _match_pattern,
)
from captum_hetattn.graph.nodes import (
    NODE_TYPES,
    AttentionNode,
    BoundNode,
    NodeType,
    QueryKey,
    Step,
    Stream,
    _coerce_step,
    _coerce_stream,
    _step_nodes,
    is_cross,
)
from captum_hetattn.graph.spec import (
    GRAPH_FORMAT_VERSION,
    GRAPH_KEYS,
    NODE_KEYS,
    READOUT_KEYS,
    STREAM_KEYS,
    _check_keys,
)

__all__ = [
    "CONFIG_PARAM_KEYS",
    "GRAPH_FORMAT_VERSION",
    "GRAPH_KEYS",
    "JUNCTION_KINDS",
    "JUNCTION_PARAMS",
    "NODE_KEYS",
    "NODE_TYPES",
    "READOUT_KEYS",
    "STREAM_KEYS",
    "AttentionNode",
    "BoundNode",
    "Junction",
    "LayerGraph",
    "NodeType",
    "QueryKey",
    "Step",
    "Stream",
    "_check_keys",
    "_check_streams",
    "_coerce_step",
    "_coerce_stream",
    "_match_pattern",
    "_step_nodes",
    "is_cross",
]
