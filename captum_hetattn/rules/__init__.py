r"""Relevance rules: pure, batched tensor math (torch only).

- :mod:`~captum_hetattn.rules.ops` — the math of one call (head aggregation, the self / cross
  rules, noise link, GAE's cross term, rollout's closed form) and the readout rows;
- :mod:`~captum_hetattn.rules.propagators` — one object per method with one interface:
  :class:`Ours`, :class:`Gae`, :class:`Rollout`, :class:`Raw`;
- :mod:`~captum_hetattn.rules.adjoint` — the relevance state: every block by :func:`propagate`,
  or the readout rows backwards by :func:`propagate_row` / :class:`RowAdjoint`.

The GAE baseline (Chefer et al., ICCV 2021) and attention rollout (Abnar & Zuidema, 2020) live
here too, so every method runs on the same captured maps.
"""

from typing import Literal

from captum_hetattn.rules.adjoint import (
    RowAdjoint,
    check_flows,
    initial_relevance,
    propagate,
    propagate_row,
)
from captum_hetattn.rules.ops import (
    CORRECTIONS,
    NODE_TYPES,
    AttentionFlow,
    Block,
    Correction,
    FlowStep,
    Relevance,
    TokenMap,
    aggregate_heads,
    attention_rollout,
    corrected,
    cross_rule,
    flow_increment,
    gae_cross_increment,
    has_zero_residual_row,
    noise_link,
    read_rows,
    readout_weights,
    relevance_dtype,
    residual_shares,
    resolve_correction,
    row_increment,
    self_rule,
    value_weighted,
)
from captum_hetattn.rules.propagators import Gae, Ours, Propagator, Raw, Rollout

#: the methods' names before they became propagator objects (kept for imports)
Rule = Literal["ours", "gae"]

__all__ = [
    "CORRECTIONS",
    "NODE_TYPES",
    "AttentionFlow",
    "Block",
    "Correction",
    "FlowStep",
    "Gae",
    "Ours",
    "Propagator",
    "Raw",
    "Relevance",
    "Rollout",
    "RowAdjoint",
    "Rule",
    "TokenMap",
    "aggregate_heads",
    "attention_rollout",
    "check_flows",
    "corrected",
    "cross_rule",
    "flow_increment",
    "gae_cross_increment",
    "has_zero_residual_row",
    "initial_relevance",
    "noise_link",
    "propagate",
    "propagate_row",
    "read_rows",
    "readout_weights",
    "relevance_dtype",
    "residual_shares",
    "resolve_correction",
    "row_increment",
    "self_rule",
    "value_weighted",
]
