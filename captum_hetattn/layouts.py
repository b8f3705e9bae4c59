r"""Deprecated alias: token layouts moved to :mod:`captum_hetattn.binding.layouts`.

Kept for one release; import from the new place.
"""

import warnings

from captum_hetattn.binding.layouts import (
    NO_SOURCE,
    SEVERAL_SOURCES,
    TokenLayout,
    canonical_batch,
    canonicalise,
    row_sources,
    rows_sources,
)

warnings.warn(
    "captum_hetattn.layouts moved to captum_hetattn.binding.layouts; import from there",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "NO_SOURCE",
    "SEVERAL_SOURCES",
    "TokenLayout",
    "canonical_batch",
    "canonicalise",
    "row_sources",
    "rows_sources",
]
