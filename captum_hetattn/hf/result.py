r"""What :func:`captum_hetattn.hf.explain` (and ``explain_generation``) return: one
:class:`HFExplanation` holding one :class:`Row` per explained ``(example, target)``.

A row is what a user reads: what was explained (:class:`ExplainedTarget`: the class with its
label name, the answer, the matched text, the detected box, the generated token), the words with
their scores and the relevance over the picture at its own size. Most tasks explain one target
per example (rows = examples); token classification (one per word), object detection (one per
detected box) and generation (one per generated token) give several rows per example, in example
order; :meth:`HFExplanation.example` picks one example's rows.

Building one by hand (e.g. in ``explain_generation``)::

    rows = [Row(ExplainedTarget(example=0, index=(5, 42), label="cat", kind="generated",
                                position=5),
                words=[("a", 0.1), ("photo", 0.4)], pixels=heat, image=rgb)]
    HFExplanation(rows=rows, explanation=explanation, task="generation")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from captum_hetattn.engine.result import Explanation


@dataclass(frozen=True)
class ExplainedTarget:
    r"""What one row explains.

    Attributes:
        example: the example (text / image / pair) of the batch.
        index: what the engine was given as target for it (a class index, ``(position,
            class)`` for a token, ``(query, class)`` for a detection, ``(position, token_id)``
            for a generated token).
        label: readable name: ``config.id2label`` of the class, the answer, the matched text,
            the generated token's text.
        kind: ``"class"``, ``"token"``, ``"answer"``, ``"match"``, ``"box"`` or
            ``"generated"``.
        score: the model's probability (or similarity logit for ``"match"``) of it, if known.
        box: ``(x0, y0, x1, y1)`` in the original picture's pixels (detections).
        word: the word a token-classification row is about.
        position: the token position explained (token classification, generation).
    """

    example: int
    index: Any
    label: str
    kind: str
    score: float | None = None
    box: tuple[float, float, float, float] | None = None
    word: str | None = None
    position: int | None = None

    def title(self) -> str:
        """One line for displays: ``"positive (0.91)"``, ``"cat @ 'Paris' (0.88)"``."""
        about = f" @ {self.word!r}" if self.word is not None else ""
        score = f" ({self.score:.3g})" if self.score is not None else ""
        box = (" [" + ", ".join(f"{v:.0f}" for v in self.box) + "]") if self.box else ""
        return f"{self.label}{about}{box}{score}"


@dataclass
class Row:
    r"""One explained ``(example, target)``.

    Attributes:
        target: what was explained.
        words: ``[(word, score), ...]`` of the example's text (special tokens and padding left
            out, word pieces merged), or None for a model that reads no text.
        pixels: ``(H, W)`` relevance over the example's picture at its own size, or None.
        image: the picture as ``H × W × 3`` uint8 (for overlays), or None.
        audio: relevance per sample (waveform) or frame (spectrogram) of the example's clip,
            real length only, or None.
        audio_times: the second at which each of them starts.
    """

    target: ExplainedTarget
    words: list[tuple[str, float]] | None = None
    pixels: np.ndarray | None = None
    image: np.ndarray | None = None
    audio: np.ndarray | None = None
    audio_times: np.ndarray | None = None


class CaptumViews(NamedTuple):
    r"""What Captum's visualisers take (:meth:`HFExplanation.to_captum`).

    Attributes:
        records: one ``VisualizationDataRecord`` per row with words, for
            ``captum.attr.visualization.visualize_text(records)``; word scores divided by
            their largest magnitude (Captum colours values in ``[-1, 1]``).
        heatmaps: one ``H × W × 1`` array per row with a picture, for
            ``visualize_image_attr(heatmap, image, ...)``.
        images: the matching ``H × W × 3`` pictures as floats in ``[0, 1]``.
    """

    records: list[Any]
    heatmaps: list[np.ndarray]
    images: list[np.ndarray]


@dataclass
class HFExplanation:
    r"""The answer of :func:`~captum_hetattn.hf.explain`: words, pixels, target, everything.

    Attributes:
        rows: one :class:`Row` per explained ``(example, target)``, in example order.
        explanation: the engine's full :class:`~captum_hetattn.Explanation` (token relevance
            per source, readout, streams, calls; a target dimension after the batch where
            several targets were explained from one forward).
        task: the task that was explained (``"sequence-classification"``, ...).
        inputs: the processor's output the model read (ids, masks, pixel values).
        tokenizer: the tokenizer that made the ids (labels the attention views), or None.

    Examples::

        >>> result = hf.explain(model, tokenizer, text="a gripping, unbelievable film")
        >>> result.words[0]            # [('a', 0.01), ('gripping', 0.3), ...]
        >>> result.target[0].label     # 'POSITIVE'
        >>> result.show()              # coloured words (and the overlay for a picture)
        >>> from captum.attr import visualization as viz
        >>> viz.visualize_text(result.to_captum().records)
    """

    rows: list[Row]
    explanation: Explanation
    task: str
    inputs: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None

    @property
    def words(self) -> list[list[tuple[str, float]] | None]:
        """Per row, ``[(word, score), ...]`` (None where the model reads no text)."""
        return [row.words for row in self.rows]

    @property
    def pixels(self) -> list[np.ndarray | None]:
        """Per row, the ``(H, W)`` relevance over its picture (None without a picture)."""
        return [row.pixels for row in self.rows]

    @property
    def target(self) -> list[ExplainedTarget]:
        """Per row, what was explained."""
        return [row.target for row in self.rows]

    def example(self, index: int) -> list[Row]:
        """The rows of example ``index`` (several for tokens, boxes, generated tokens)."""
        return [row for row in self.rows if row.target.example == index]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        shown = "; ".join(row.target.title() for row in self.rows[:4])
        more = f"; … {len(self.rows) - 4} more" if len(self.rows) > 4 else ""
        return f"HFExplanation({self.task}: {shown}{more})"

    def _repr_html_(self) -> str:
        from captum_hetattn.hf.display import explanation_html

        return explanation_html(self)

    def show(self, max_rows: int = 12) -> None:
        r"""Display the rows in a notebook (coloured words, picture overlays); prints the words
        outside one.

        Args:
            max_rows: how many rows to draw.
        """
        from captum_hetattn.hf.display import show

        show(self, max_rows)

    def views(self, example: int = 0) -> str:
        r"""The attention views of one example: the model view (every head of every call; a
        click opens its head view) and the relevance flow, as notebook HTML.

        Needs ``hf.explain(..., return_maps=True)`` (one target per example). The HTML is a
        ``str`` that a notebook draws (``_repr_html_``).

        Args:
            example: which example.

        Raises:
            ValueError: the explanation kept no maps.
        """
        from captum_hetattn.hf.display import Page, views_html

        return Page(views_html(self, example))

    def to_captum(self) -> CaptumViews:
        r"""Captum's visualiser inputs: ``VisualizationDataRecord`` s and heat maps.

        Examples::

            >>> views = result.to_captum()
            >>> viz.visualize_text(views.records)
            >>> viz.visualize_image_attr(views.heatmaps[0], views.images[0],
            ...                          method="blended_heat_map", sign="positive")
        """
        from captum_hetattn.hf.display import captum_views

        return captum_views(self)


__all__ = ["CaptumViews", "ExplainedTarget", "HFExplanation", "Row"]
