r"""captum_hetattn: Captum attributions for transformers with heterogenous attention structures.

Implements "Generic Interpretation Approach for Transformer Models Incorporating Heterogenous
Attention Structures" (Cui, Fan, Chen): attention maps corrected by their gradients, rolled out
through self-attention (TypeA/TypeC) and propagated through cross-attention (TypeB) with every
information source kept separate.
"""

import warnings
from typing import Any

with warnings.catch_warnings():
    # tqdm.auto (which Captum and transformers import) warns "IProgress not found" once in a
    # notebook without ipywidgets, then draws text bars: imported here first, without that line
    warnings.filterwarnings("ignore", message="IProgress not found")
    import tqdm.autonotebook  # noqa: F401

from captum_hetattn.capture import AttentionRecord, AttentionRecorder  # noqa: E402
from captum_hetattn.engine.result import CallMaps, Explanation, FlowShare
from captum_hetattn.engine.targets import generation_targets
from captum_hetattn.explainers import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    RawAttention,
)
from captum_hetattn.graph import AttentionNode, Junction, LayerGraph, Stream
from captum_hetattn.graph.inference import infer_graph
from captum_hetattn.graph.presets import graph_for, preset, register_preset
from captum_hetattn.mapping import AudioFrames, NoAttribution, PatchGrid, Tokens, to_heatmap
from captum_hetattn.objectives import Contrast, Ratio, RelativeContrast

#: binding internals that this module exported before they had a room of their own: still
#: importable from here for one release, with a DeprecationWarning naming where they live now
_MOVED = {
    "BoundNode": "captum_hetattn.graph",
    "BoundRecording": "captum_hetattn.binding",
    "bind_records": "captum_hetattn.binding",
}


def __getattr__(name: str) -> Any:
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'captum_hetattn' has no attribute {name!r}")
    warnings.warn(
        f"captum_hetattn.{name} is an internal of the binding step: import it from {home}; "
        "this alias goes away in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: `from captum_hetattn import X` looks the name up twice
    return value


__version__ = "0.1.0"

__all__ = [
    "AttentionNode",
    "AttentionRollout",
    "AudioFrames",
    "CallMaps",
    "Contrast",
    "Explanation",
    "FlowShare",
    "GenericAttentionExplainability",
    "HeterogenousAttentionAttribution",
    "Junction",
    "NoAttribution",
    "PatchGrid",
    "Ratio",
    "RawAttention",
    "RelativeContrast",
    "Tokens",
    "to_heatmap",
    "AttentionRecord",
    "AttentionRecorder",
    "LayerGraph",
    "Stream",
    "__version__",
    "generation_targets",
    "graph_for",
    "infer_graph",
    "preset",
    "register_preset",
]
