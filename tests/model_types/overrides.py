r"""Per-type data for :mod:`model_types.build`: config values beyond the generic shrink (what the
type's own test suite uses, in our own words), a forced model class, extra forward kwargs, and
the types that cannot be built here with the reason."""

from __future__ import annotations

from typing import Any

#: model_type -> {"config": {...}, "head": (kind, class name), "kwargs": {...}}
OVERRIDES: dict[str, dict[str, Any]] = {}

#: model_type -> why it is not built here (does not count in the sweep's total)
SKIP: dict[str, str] = {}
