r"""Deprecated: the explainers moved to :mod:`captum_hetattn.explainers`, their engine to
:mod:`captum_hetattn.engine` (results in :mod:`captum_hetattn.engine.result`,
:func:`generation_targets` in :mod:`captum_hetattn.engine.targets`). Import the public names
from :mod:`captum_hetattn`; this alias goes away in a later release."""

import warnings

from captum_hetattn.engine.result import CallMaps, Explanation, FlowShare
from captum_hetattn.engine.targets import generation_targets
from captum_hetattn.explainers import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    RawAttention,
    _AttentionAttribution,
)

warnings.warn(
    "captum_hetattn.attribution moved to captum_hetattn.explainers (the classes) and "
    "captum_hetattn.engine (Explanation, CallMaps, FlowShare, generation_targets); import the "
    "public names from captum_hetattn",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "AttentionRollout",
    "CallMaps",
    "Explanation",
    "FlowShare",
    "GenericAttentionExplainability",
    "HeterogenousAttentionAttribution",
    "RawAttention",
    "_AttentionAttribution",
    "generation_targets",
]
