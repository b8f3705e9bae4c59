r"""Per-family data and builders for the sweep, one module per family so each can grow alone.

Each module may define:

* ``OVERRIDES``: model_type -> ``{"config": {...}, "head": (kind, class name), "kwargs": {...},
  "inputs": callable(config) -> list of {name: tensor}}`` (``inputs`` replaces the generic input
  variants: each dict is one batch of 2, in the order the inputs are attributed);
* ``BUILDERS``: model_type -> callable() -> :class:`model_types.build.Case`, for types a config and
  inputs cannot describe (a custom score, a sub-model);
* ``SKIP``: model_type -> why it cannot be built here (a missing optional library, ...).
"""

from __future__ import annotations

from typing import Any

from . import audio, multimodal, text, towers, vision

_FAMILIES = (vision, towers, audio, text, multimodal)


def _merged(name: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for module in _FAMILIES:
        for key, value in getattr(module, name, {}).items():
            if key in found:
                raise ValueError(f"model type {key!r} is in {name} of two builder modules")
            found[key] = value
    return found


OVERRIDES = _merged("OVERRIDES")
BUILDERS = _merged("BUILDERS")
SKIP = _merged("SKIP")
