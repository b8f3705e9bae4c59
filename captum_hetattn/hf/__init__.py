r"""Explain a HuggingFace model from raw input, in one call.

- :func:`explain` (``captum_hetattn.hf.explain``): a model with its tokenizer / image processor /
  feature extractor / processor, or a ``transformers`` pipeline, and raw text / pictures /
  clips → an :class:`HFExplanation` with relevance per **word**, per **pixel of the picture as
  given** and per sample or frame of a clip, what was explained (the predicted class with its
  label, the answer, the matched text, the detected boxes), the engine's full
  :class:`~captum_hetattn.Explanation`, ``show()`` and ``to_captum()``.
- :func:`explain_generation` (from :mod:`captum_hetattn.hf.generation`, where present): every
  generated token explained over the prompt's words and the picture.

The pieces both build on, for anyone adding a task:

- :mod:`~captum_hetattn.hf.words`: :func:`words_of` (word pieces → words, special tokens and
  padding left out) and :func:`word_scores` (token relevance summed per word);
- :mod:`~captum_hetattn.hf.pixels`: :func:`geometry_for` (what the image processor did to a
  picture) and :func:`tokens_to_pixels` / :func:`attribution_to_pixels` (relevance over the
  processed picture → over the picture at its own size);
- :mod:`~captum_hetattn.hf.audio`: ``encode_audio`` and ``audio_relevance`` (a clip's
  relevance over its own time);
- :mod:`~captum_hetattn.hf.result`: :class:`HFExplanation`, :class:`Row`,
  :class:`ExplainedTarget`;
- :mod:`~captum_hetattn.hf.tasks`: what each model class answers, as data (``TASKS``).

Examples::

    >>> from captum_hetattn import hf
    >>> result = hf.explain(model, tokenizer, text="a gripping, unbelievable film")
    >>> result.target[0].label, result.words[0]
"""

from __future__ import annotations

from typing import Any

from captum_hetattn.hf.api import explain
from captum_hetattn.hf.pixels import (
    Geometry,
    attribution_to_pixels,
    geometry_for,
    image_size,
    to_picture,
    tokens_to_pixels,
)
from captum_hetattn.hf.result import CaptumViews, ExplainedTarget, HFExplanation, Row
from captum_hetattn.hf.words import Word, word_scores, words_of

try:  # generation lives in its own module, which a build may leave out
    from captum_hetattn.hf.generation import GeneratedRow, explain_generation  # noqa: F401
except ModuleNotFoundError as missing:
    if missing.name != "captum_hetattn.hf.generation":
        raise
    _GENERATION = False
else:
    _GENERATION = True


def __getattr__(name: str) -> Any:
    if name == "explain_generation":
        raise AttributeError("captum_hetattn.hf.explain_generation is not available in this "
                             "build (captum_hetattn/hf/generation.py is missing)")
    raise AttributeError(f"module 'captum_hetattn.hf' has no attribute {name!r}")


__all__ = [
    "CaptumViews",
    "ExplainedTarget",
    "Geometry",
    "HFExplanation",
    "Row",
    "Word",
    "attribution_to_pixels",
    "explain",
    "geometry_for",
    "image_size",
    "to_picture",
    "tokens_to_pixels",
    "word_scores",
    "words_of",
] + (["GeneratedRow", "explain_generation"] if _GENERATION else [])
