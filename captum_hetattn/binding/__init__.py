r"""The binding room: from one recorded forward to the calls, streams and sources an explanation
walks.

- :mod:`~captum_hetattn.binding.trace`: :func:`trace` — lay out the calls, then read the data flow;
- :mod:`~captum_hetattn.binding.tokens`: how hidden states hold tokens (:func:`tokens_view`);
- :mod:`~captum_hetattn.binding.dataflow`: streams, junctions and sources from the autograd graph
  (its data in :mod:`~captum_hetattn.binding.flowdata`, its gradient probes in
  :mod:`~captum_hetattn.binding.probes`, sources in :mod:`~captum_hetattn.binding.sources`,
  parameter tokens in :mod:`~captum_hetattn.binding.params`, tokens of another stream added
  into a stream that goes on in :mod:`~captum_hetattn.binding.fusion`);
- :mod:`~captum_hetattn.binding.layouts` (with :mod:`~captum_hetattn.binding.canonical` and
  :mod:`~captum_hetattn.binding.layout_scores`): windowed, packed, banded and blocked maps folded
  into dense maps over tokens;
- :mod:`~captum_hetattn.binding.streams`: stream and source naming, towers, size checks;
- :mod:`~captum_hetattn.binding.junctions`: the token maps of junctions;
- :mod:`~captum_hetattn.binding.bind`: the one binder (:func:`bind_records`, :func:`bind_graph`).
"""

from captum_hetattn.binding.bind import (
    BoundCall,
    BoundInput,
    BoundRecording,
    Step,
    bind_graph,
    bind_records,
)
from captum_hetattn.binding.streams import (
    BoundSource,
    layer_pattern,
    name_sources,
    name_streams,
    stream_towers,
    tower_of,
)
from captum_hetattn.binding.tokens import tokens_view
from captum_hetattn.binding.trace import trace

__all__ = [
    "BoundCall",
    "BoundInput",
    "BoundRecording",
    "BoundSource",
    "Step",
    "bind_graph",
    "bind_records",
    "layer_pattern",
    "name_sources",
    "name_streams",
    "stream_towers",
    "tokens_view",
    "tower_of",
    "trace",
]
