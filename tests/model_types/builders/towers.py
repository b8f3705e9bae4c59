r"""Sweep data for SAM-style models and stand-alone vision towers
(see :mod:`model_types.builders`)."""

from __future__ import annotations

from typing import Any

OVERRIDES: dict[str, dict[str, Any]] = {}
BUILDERS: dict[str, Any] = {}
SKIP: dict[str, str] = {}
