r"""Deprecated alias: the data flow moved to :mod:`captum_hetattn.binding.dataflow`, and
``tokens_view`` (with ``CHANNELS_FIRST`` and ``TILES``) to :mod:`captum_hetattn.binding.tokens`.

Kept for one release; import from the new places.
"""

import warnings

from captum_hetattn.binding.dataflow import (
    DataFlow,
    FlowCall,
    FlowJunction,
    FlowSource,
    FlowStream,
    InputRows,
    TokenRows,
    analyse,
)
from captum_hetattn.binding.tokens import CHANNELS_FIRST, TILES, tokens_view

warnings.warn(
    "captum_hetattn.dataflow moved to captum_hetattn.binding.dataflow (tokens_view to "
    "captum_hetattn.binding.tokens); import from there",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "CHANNELS_FIRST",
    "TILES",
    "DataFlow",
    "FlowCall",
    "FlowJunction",
    "FlowSource",
    "FlowStream",
    "InputRows",
    "TokenRows",
    "analyse",
    "tokens_view",
]
