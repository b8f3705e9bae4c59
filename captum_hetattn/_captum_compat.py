"""The one place that imports Captum's private helpers (stable from Captum 0.6 to 0.9)."""

from captum._utils.common import (
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _select_targets,
)
from captum.log import log_usage

__all__ = [
    "_format_additional_forward_args",
    "_format_output",
    "_format_tensor_into_tuples",
    "_is_tuple",
    "_select_targets",
    "log_usage",
]
