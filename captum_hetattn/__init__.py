r"""captum_hetattn: Captum attributions for transformers with heterogenous attention structures.

Implements "Generic Interpretation Approach for Transformer Models Incorporating Heterogenous
Attention Structures" (Cui, Fan, Chen): attention maps corrected by their gradients, rolled out
through self-attention (TypeA/TypeC) and propagated through cross-attention (TypeB) with every
information source kept separate.
"""

from captum_hetattn.attribution import (
    AttentionRollout,
    CallMaps,
    Explanation,
    FlowShare,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    RawAttention,
    generation_targets,
)
from captum_hetattn.binding import BoundRecording, bind_records
from captum_hetattn.capture import AttentionRecord, AttentionRecorder
from captum_hetattn.graph import AttentionNode, BoundNode, Junction, LayerGraph, Stream
from captum_hetattn.infer import infer_graph
from captum_hetattn.mapping import AudioFrames, NoAttribution, PatchGrid, Tokens, to_heatmap
from captum_hetattn.objectives import Contrast, Ratio, RelativeContrast
from captum_hetattn.presets import graph_for, preset, register_preset

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
    "BoundNode",
    "BoundRecording",
    "LayerGraph",
    "Stream",
    "__version__",
    "bind_records",
    "generation_targets",
    "graph_for",
    "infer_graph",
    "preset",
    "register_preset",
]
