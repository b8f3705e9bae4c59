r"""Deprecated alias: the presets (and their JSON files) moved to
:mod:`captum_hetattn.graph.presets`.

Kept for one release; import from the new place. ``PRESETS`` is the same dict, so
:func:`register_preset` through either path registers for both.
"""

import warnings

from captum_hetattn.graph.presets import (
    PRESETS,
    Preset,
    find_preset,
    graph_for,
    known_presets,
    preset,
    register_preset,
    torch_layer_graph,
)

warnings.warn(
    "captum_hetattn.presets moved to captum_hetattn.graph.presets; import from there",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "PRESETS",
    "Preset",
    "find_preset",
    "graph_for",
    "known_presets",
    "preset",
    "register_preset",
    "torch_layer_graph",
]
