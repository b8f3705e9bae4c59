r"""Token relevance → relevance per **word**: word pieces merged, special tokens and padding left
out.

A tokenizer splits a word into pieces (``unbelievable`` → ``un ##believ ##able``) and adds
special tokens (``[CLS]``, ``[SEP]``, ``<s>``) and padding. A user reads words, so
:func:`words_of` groups the token positions of one example into :class:`Word` s, and
:func:`word_scores` sums a relevance vector over each word's pieces (the sum of the words'
scores is the relevance of the tokens they cover: nothing is rescaled).

How the pieces are grouped, best first:

1. the text is given and the tokenizer is a fast one: the text is encoded again with
   ``return_offsets_mapping=True``; where its ids are the example's ids (padding and specials
   aside), the pieces are grouped by ``word_ids()`` and each word's text is the slice of the
   original text its pieces cover (``"Don't"`` keeps its apostrophe and case);
2. otherwise by the pieces' own markers: ``##`` continues a word (WordPiece); ``Ġ`` / ``▁``
   start one (byte-level BPE, SentencePiece); the word's text is
   ``tokenizer.convert_tokens_to_string(pieces)``.

Special tokens are the tokenizer's ``all_special_ids`` except its unknown token (``[UNK]``
stands for a real word); padding is what the attention mask hides (and the pad id).

Examples::

    >>> encoding = tokenizer(["the cat sat"], return_tensors="pt")
    >>> words = words_of(tokenizer, encoding["input_ids"][0], text="the cat sat",
    ...                  mask=encoding["attention_mask"][0])
    >>> word_scores(words, explanation.relevance["text"][0])
    [('the', 0.01), ('cat', 0.2), ('sat', 0.05)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: markers a piece that starts a word carries (byte-level BPE, SentencePiece)
WORD_START = ("Ġ", "▁", "Ċ")
#: the marker of a piece that continues a word (WordPiece)
CONTINUES = "##"


@dataclass(frozen=True)
class Word:
    r"""One word of an example.

    Attributes:
        text: the word as the user wrote it (or as the tokenizer spells its pieces).
        tokens: its positions in the token sequence (into the relevance vector).
    """

    text: str
    tokens: tuple[int, ...]


def _as_list(values: Tensor | np.ndarray | Sequence[int] | None) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, Tensor):
        return [int(v) for v in values.reshape(-1).tolist()]
    return [int(v) for v in np.asarray(values).reshape(-1).tolist()]


def special_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's special token ids, its unknown token aside (it stands for a word)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    unknown = getattr(tokenizer, "unk_token_id", None)
    ids.discard(unknown)
    return ids


def kept_positions(tokenizer: Any, ids: Sequence[int], mask: Sequence[int] | None = None,
                   positions: Sequence[int] | None = None) -> list[int]:
    r"""Token positions that hold text: not special, not padding.

    Args:
        tokenizer: the tokenizer that made ``ids``.
        ids: one example's token ids.
        mask: its attention mask (0 = padding), or None.
        positions: only these positions (e.g. the prompt part of a generated sequence).
    """
    specials = special_ids(tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    candidates = range(len(ids)) if positions is None else positions
    return [i for i in candidates
            if ids[i] not in specials and (mask is None or mask[i]) and ids[i] != pad]


def _by_offsets(tokenizer: Any, ids: list[int], kept: list[int], text: str | tuple[str, str]
                ) -> list[Word] | None:
    """Words from a fresh fast encoding of ``text`` (or of a text pair) whose ids match the
    kept ones, or None."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    texts = text if isinstance(text, tuple) else (text,)
    try:
        encoding = tokenizer(*texts, return_offsets_mapping=True, add_special_tokens=True)
        word_ids = encoding.word_ids()
        sequences = encoding.sequence_ids()
    except (TypeError, ValueError, NotImplementedError, AttributeError):
        return None
    fresh = [(i, (sequences[i] or 0, word)) for i, word in enumerate(word_ids)
             if word is not None]
    fresh_ids = [encoding["input_ids"][i] for i, _ in fresh]
    kept_ids = [ids[i] for i in kept]
    if fresh_ids[: len(kept_ids)] != kept_ids:  # truncated by the processor: a prefix
        return None
    offsets = encoding["offset_mapping"]
    spans: dict[tuple[int, int], list[int]] = {}  # word → its pieces in the fresh encoding
    places: dict[tuple[int, int], list[int]] = {}  # word → its positions in the example
    for (fresh_index, word), position in zip(fresh, kept, strict=False):
        spans.setdefault(word, []).append(fresh_index)
        places.setdefault(word, []).append(position)
    words = []
    for word, indices in spans.items():
        source = texts[word[0]]
        start, end = offsets[indices[0]][0], offsets[indices[-1]][1]
        words.append(Word(source[start:end].strip() or source[start:end], tuple(places[word])))
    return words


def _by_markers(tokenizer: Any, ids: list[int], kept: list[int]) -> list[Word]:
    """Words from the pieces' markers (``##`` continues, ``Ġ`` / ``▁`` start)."""
    pieces = tokenizer.convert_ids_to_tokens([ids[i] for i in kept])
    starts_marked = any(str(p).startswith(WORD_START) for p in pieces)
    groups: list[list[int]] = []
    for index, piece in enumerate(pieces):
        piece = str(piece)
        new = (piece.startswith(WORD_START) if starts_marked
               else not piece.startswith(CONTINUES))
        if new or not groups:
            groups.append([])
        groups[-1].append(index)
    words = []
    for group in groups:
        text = tokenizer.convert_tokens_to_string([pieces[i] for i in group]).strip()
        words.append(Word(text or str(pieces[group[0]]), tuple(kept[i] for i in group)))
    return words


def words_of(
    tokenizer: Any,
    ids: Tensor | Sequence[int],
    *,
    text: str | tuple[str, str] | None = None,
    mask: Tensor | Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> list[Word]:
    r"""The words of one example, each with the token positions of its pieces.

    Args:
        tokenizer: the (fast or slow) tokenizer that made ``ids``.
        ids: the example's token ids ``(T,)``, as the model read them (padding included).
        text: the example's text (or ``(text, text_pair)``), if known: words keep the user's
            spelling (fast tokenizers); a pair's words come in order, the first text's first.
        mask: the example's attention mask ``(T,)``; masked positions are padding.
        positions: only these positions count as text (e.g. a fusion model's text part, or a
            prompt within a generated sequence); ``None``: all.

    Returns:
        ``list[Word]`` in text order; special tokens and padding belong to no word.

    Examples::

        >>> words_of(tokenizer, [101, 4895, 8671, 102], text="unbelievable")
        [Word(text='unbelievable', tokens=(1, 2))]
    """
    id_list = _as_list(ids) or []
    kept = kept_positions(tokenizer, id_list, _as_list(mask), positions)
    if not kept:
        return []
    if text is not None:
        words = _by_offsets(tokenizer, id_list, kept, text)
        if words is not None:
            return words
    return _by_markers(tokenizer, id_list, kept)


def word_scores(words: Sequence[Word], relevance: Tensor | np.ndarray | Sequence[float]
                ) -> list[tuple[str, float]]:
    r"""``(word, score)`` pairs: the relevance of each word's pieces summed.

    Args:
        words: from :func:`words_of`.
        relevance: one example's token relevance ``(T,)`` (the same positions as the ids).

    Returns:
        ``[(word, score), ...]`` in text order.
    """
    if isinstance(relevance, Tensor):
        values = relevance.detach().to("cpu", torch.float64).reshape(-1).numpy()
    else:
        values = np.asarray(relevance, dtype=np.float64).reshape(-1)
    return [(word.text, float(values[list(word.tokens)].sum())) for word in words]


__all__ = ["Word", "kept_positions", "special_ids", "word_scores", "words_of"]
