r"""captum_hetattn: Captum attributions for transformers with heterogenous attention structures.

Implements "Generic Interpretation Approach for Transformer Models Incorporating Heterogenous
Attention Structures" (Cui, Fan, Chen): attention maps corrected by their gradients, rolled out
through self-attention (TypeA/TypeC) and propagated through cross-attention (TypeB) with every
information source kept separate.
"""

from captum_hetattn.graph import AttentionNode, BoundNode, LayerGraph, Stream

__version__ = "0.1.0"

__all__ = ["AttentionNode", "BoundNode", "LayerGraph", "Stream", "__version__"]
