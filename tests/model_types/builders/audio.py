r"""Sweep data for audio model types (see :mod:`model_types.builders`)."""

from __future__ import annotations

from typing import Any

OVERRIDES: dict[str, dict[str, Any]] = {}
BUILDERS: dict[str, Any] = {}
SKIP: dict[str, str] = {}
