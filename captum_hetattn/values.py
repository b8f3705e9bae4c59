r"""Deprecated: moved to :mod:`captum_hetattn.engine.values` (value norms and residual shares
for ``weighting="value"``); this alias goes away in a later release."""

import warnings

from captum_hetattn.engine.values import ValueTerms, ValueWatcher, check_weighting, value_terms

warnings.warn(
    "captum_hetattn.values moved to captum_hetattn.engine.values; import from there",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["ValueTerms", "ValueWatcher", "check_weighting", "value_terms"]
