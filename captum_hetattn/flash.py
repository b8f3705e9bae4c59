r"""Deprecated: moved to :mod:`captum_hetattn.capture.backends.flash`.

Flash capture's kernel (:class:`FlashAttention`) and map (:func:`attention_map`) now live with
the flash backend of the capture package; this alias re-exports them for one release.
"""

import warnings

from captum_hetattn.capture.backends.flash import FlashAttention, Sink, attention_map

__all__ = ["FlashAttention", "Sink", "attention_map"]

warnings.warn(
    "captum_hetattn.flash moved to captum_hetattn.capture.backends.flash; import FlashAttention "
    "and attention_map from there (this alias goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
