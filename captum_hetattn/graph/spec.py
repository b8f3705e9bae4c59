r"""The dict / JSON form of a layer graph: its keys, its format version, and the check that
names a misspelt key (with where it is and the closest valid one) instead of ignoring it.

Plain Python (no torch), like the whole core of the graph room: nodes, junctions, layer graphs.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

GRAPH_FORMAT_VERSION = 1
GRAPH_KEYS: tuple[str, ...] = ("format_version", "name", "streams", "steps", "readout", "junctions")
NODE_KEYS: tuple[str, ...] = ("module", "query", "key", "type", "call_index")
STREAM_KEYS: tuple[str, ...] = ("name", "description")
READOUT_KEYS: tuple[str, ...] = ("stream", "token")


def _check_keys(data: Mapping[str, Any], valid: Sequence[str], path: str, what: str) -> None:
    r"""A misspelt key would be ignored silently: raise ``ValueError`` naming it, where it is
    (``path``, e.g. ``readout.tokn``) and the closest valid key."""
    unknown = [key for key in data if key not in valid]
    if not unknown:
        return
    first = str(unknown[0])
    close = difflib.get_close_matches(first, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    where = f"{path}.{first}" if path else first
    raise ValueError(
        f"{what} has unknown fields {sorted(map(str, unknown))} (at '{where}'; valid: "
        f"{', '.join(valid)}){hint}"
    )

