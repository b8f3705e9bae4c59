"""Tiny processors for the hf tests, built offline: a WordPiece tokenizer from a vocabulary
written to a folder, image processors from their classes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import transformers as tf


def wordpiece(folder: Path, pieces: Sequence[str]) -> tf.PreTrainedTokenizerBase:
    """A BERT WordPiece tokenizer over ``pieces``, read back from ``folder/vocab.txt``."""
    path = folder / "vocab.txt"
    path.write_text("\n".join(pieces) + "\n")
    vocab = {line: i for i, line in enumerate(path.read_text().split("\n")) if line}
    return tf.BertTokenizer(vocab=vocab)


def image_processor(name: str, **settings: Any) -> Any:
    """The torchvision-free class of ``name`` where transformers has one (no torchvision)."""
    cls = getattr(tf, name + "Pil", None) or getattr(tf, name)
    return cls(**settings)
