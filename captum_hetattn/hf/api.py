r""":func:`explain`: a HuggingFace model (or pipeline) and raw input → words, pixels, target.

The steps, one function each: the model and processors out of the arguments
(:func:`~captum_hetattn.hf.inputs.unwrap`), the task (:func:`~captum_hetattn.hf.tasks.task_of`),
the processors run (:func:`~captum_hetattn.hf.inputs.encode`), the model's own answer
(one forward without gradient), what to explain (:mod:`~captum_hetattn.hf.targets`), one engine
call (:func:`~captum_hetattn.hf.inputs.explain_and_map`), and the relevance read back as words
and as pixels of each picture at its own size.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_hetattn.explainers import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    RawAttention,
    _AttentionAttribution,
)
from captum_hetattn.hf.audio import audio_relevance
from captum_hetattn.hf.inputs import (
    Encoded,
    Processors,
    as_list,
    check_reads,
    encode,
    explain_and_map,
    forward_function,
    unwrap,
)
from captum_hetattn.hf.pixels import attribution_to_pixels
from captum_hetattn.hf.result import HFExplanation, Row
from captum_hetattn.hf.targets import PLANNER_OPTIONS, PLANNERS, Context, Plan
from captum_hetattn.hf.tasks import task_of
from captum_hetattn.hf.words import word_scores, words_of

#: ``method=`` names and the explainer each picks
METHODS: dict[str, type[_AttentionAttribution]] = {
    "ours": HeterogenousAttentionAttribution,
    "gae": GenericAttentionExplainability,
    "rollout": AttentionRollout,
    "raw": RawAttention,
}
#: options that go to the explainer's constructor rather than to ``explain``
CONSTRUCTOR_OPTIONS = ("graph", "capture", "normalize", "cross_term")


def explainer_for(method: str, forward: Any, model: torch.nn.Module,
                  options: dict[str, Any]) -> _AttentionAttribution:
    r"""The explainer ``method`` names (``"ours"``, ``"gae"``, ``"rollout"``, ``"raw"`` or a
    class name), built with the constructor options taken out of ``options``.

    Raises:
        ValueError: an unknown method.
    """
    by_class = {cls.__name__: cls for cls in METHODS.values()}
    cls = METHODS.get(method) or by_class.get(method)
    if cls is None:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    built = {key: options.pop(key) for key in CONSTRUCTOR_OPTIONS if key in options}
    return cls(forward, model=model, **built)


def _pair_texts(texts: list[Any] | None, images: list[Any] | None, kind: str
                ) -> tuple[list[str] | None, list[Any] | None]:
    """A question per picture for VQA: one question for every picture, or one each."""
    if kind != "answer" or texts is None or images is None or len(texts) == len(images):
        return texts, images
    if len(texts) == 1:
        return texts * len(images), images
    if len(images) == 1:
        return texts, images * len(texts)
    raise ValueError(f"{len(texts)} questions for {len(images)} pictures: give one question "
                     "per picture, or one for all")


def _row(plan: Plan, laid: list[Tensor], processors: Processors, index: int) -> Row:
    """One row: its words (from the ids' relevance) and pixels (from ``pixel_values``')."""
    example, slot, what = plan.rows[index]
    encoded = plan.encoded

    def relevance(name: str) -> Tensor | None:
        if name not in encoded.names[: encoded.count]:
            return None
        laid_out = laid[encoded.names.index(name)]
        return laid_out[example] if slot is None else laid_out[example, slot]

    row = Row(what)
    ids, ids_relevance = encoded.get("input_ids"), relevance("input_ids")
    if ids is not None and ids_relevance is not None and processors.tokenizer is not None:
        mask = encoded.get("attention_mask")
        words = words_of(processors.tokenizer, ids[example],
                         text=encoded.texts[example] if encoded.texts else None,
                         mask=None if mask is None else mask[example])
        row.words = word_scores(words, ids_relevance)
    pixel_relevance = relevance("pixel_values")
    if pixel_relevance is not None and encoded.geometries:
        row.pixels = attribution_to_pixels(pixel_relevance, encoded.geometries[example])
        row.image = encoded.pictures[example]
    heard = relevance("input_values")
    heard = relevance("input_features") if heard is None else heard
    if heard is not None and encoded.audio is not None:
        row.audio, row.audio_times = audio_relevance(heard, encoded.audio, example)
    return row


def _warn_if_empty(rows: list[Row], method: str, correction: Any) -> None:
    """One warning naming the rows whose every word and pixel got zero relevance: a display
    of them shows nothing (under ``pos``, no attention map had a positive gradient)."""
    empty = [index for index, row in enumerate(rows)
             if not any(score for _, score in row.words or [])
             and (row.pixels is None or not np.any(row.pixels))
             and (row.audio is None or not np.any(row.audio))]
    if not empty:
        return
    setting = "default correction" if correction is None else f"correction={correction!r}"
    warnings.warn(
        f"hf.explain ({method}, {setting}): rows {empty} "
        f"({'; '.join(rows[i].target.title() for i in empty[:3])}) got zero relevance on "
        "every word and pixel: no attention map had a gradient of the kept sign towards the "
        "target; correction='abs' (or 'full', signed) shows them", UserWarning, stacklevel=3)


def _check_patch_counts(model: torch.nn.Module, encoded: Encoded) -> None:
    r"""ViLT reads a batch at its largest picture's patch count: the smaller pictures are
    filled with random repeats of their padding patches (a different input at every call, whose
    pixels cannot be traced back). Refused here, before the work, as the engine would refuse it.

    Raises:
        ValueError: a ViLT batch of pictures of different processed sizes.
    """
    mask = encoded.get("pixel_mask")
    if getattr(getattr(model, "config", None), "model_type", "") != "vilt" or mask is None:
        return
    real = mask.flatten(1).sum(1)
    smaller = [int(i) for i in (real < real.max()).nonzero().flatten()]
    if smaller:
        raise ValueError(
            f"{type(model).__name__} reads a batch of pictures at the largest one's patch "
            f"count: examples {smaller} get random repeats of their padding patches (the "
            "answer changes from call to call); explain pictures of different sizes one at "
            "a time")


def _plan(context: Context, target: Any, options: dict[str, Any]) -> Plan:
    """What to explain, with the planner's own options taken out of ``options``."""
    for key in ("targets", "objective"):
        if key in options:
            raise ValueError(f"hf.explain chooses the targets itself (target= picks one); for "
                             f"{key}= call an explainer with your own forward function")
    kind = context.task.kind
    own = {key: options.pop(key) for key in PLANNER_OPTIONS.get(kind, ()) if key in options}
    for key, where in (("token", "token classification"), ("threshold", "object detection")):
        if key in options:
            raise ValueError(f"{key}= applies to {where}, not to {context.task.name}")
    return PLANNERS[kind](context, target, **own)


def explain(
    model_or_pipeline: Any,
    processor: Any = None,
    *,
    text: str | list[str] | None = None,
    images: Any = None,
    audio: Any = None,
    target: Any = None,
    method: str = "ours",
    **options: Any,
) -> HFExplanation:
    r"""Explain a HuggingFace model's answer from raw text and pictures, in one call.

    Runs the processor, the model (for its own answer), and one explanation (one forward and
    one backward, several targets from the same forward where a task has several answers per
    example), and maps the relevance back to words and to the pixels of each picture at its
    own size.

    Covered (:data:`~captum_hetattn.hf.tasks.TASKS`): sequence classification, token
    classification (one row per word), image classification, VQA (ViLT: the answer = argmax
    label), image–text matching (CLIP, SigLIP: text ``i`` against picture ``j``), object
    detection (DETR: one row per detected box), audio classification (relevance per sample or
    spectrogram frame of the clip, ``.rows[i].audio``). Generation: :func:`explain_generation`.

    Args:
        model_or_pipeline: a transformers model, or a pipeline (which brings its processors).
        processor: the model's tokenizer, image processor or processor (or a tuple of them);
            not needed with a pipeline.
        text: a string or a list of strings (one per example; VQA: one question per picture
            or one for all; matching: the candidate texts); a list of ``(text, text_pair)``
            tuples for sentence-pair classifiers (NLI). A bare tuple is a list of texts.
        images: a picture (PIL image, ``H × W × C`` array, ``(C, H, W)`` tensor), a list of
            them or a batch ``(B, C, H, W)`` / ``(B, H, W, C)``.
        audio: for audio classifiers, a mono clip (1-D array or tensor at the feature
            extractor's sampling rate) or a list; a batch ``(B, samples)``. Speech-to-text
            models generate: :func:`explain_generation`.
        target: what to explain; ``None`` = the model's answer. Classification, VQA: a class
            index or label name (or one per example). Token classification: the class for
            each explained word. Matching: a text index (against every picture) or a list of
            ``(text, picture)`` pairs. Detection: a query index or ``(query, class)`` pairs.
        method: ``"ours"`` (the paper), ``"gae"``, ``"rollout"`` or ``"raw"``.
        **options: ``token=`` (token classification: the word index or indices to explain),
            ``threshold=`` (detection: class probability a box must pass; default 0.5),
            the explainer's ``graph=`` / ``capture=``, and ``explain``'s options
            (``correction=``, ``weighting=``, ``include_own=``, ``return_maps=``, ...).

    Returns:
        :class:`~captum_hetattn.hf.result.HFExplanation`: ``.words`` / ``.pixels`` /
        ``.target`` per row (one row per example, or per word / box), ``.explanation``,
        ``.show()``, ``.to_captum()``.

    Raises:
        ValueError: a model class no task covers, an input the model needs missing (or one it
            does not read), no processor for it, no detection above the threshold.

    Examples::

        >>> from captum_hetattn import hf
        >>> result = hf.explain(model, tokenizer, text=["a gripping film", "dull"])
        >>> result.target[0].label, result.words[0]
        >>> result = hf.explain(vit, image_processor, images=picture)
        >>> result.pixels[0].shape          # the picture's own (H, W)
    """
    model, processors = unwrap(model_or_pipeline, processor)
    task = task_of(model)
    texts, pictures = _pair_texts(as_list(text, "text"), as_list(images, "images"), task.kind)
    clips = as_list(audio, "audio")
    check_reads(task, model, processors, texts, pictures, clips)
    encoded = encode(model, processors, texts, pictures, task.padding, clips)
    _check_patch_counts(model, encoded)
    with torch.no_grad():
        output = model(**encoded.as_dict())
    plan = _plan(Context(model, task, encoded, output, processors), target, options)
    forward = forward_function(model, task, plan.encoded.names, pairs=plan.pairs)
    explainer = explainer_for(method, forward, model, options)
    explanation, laid = explain_and_map(explainer, plan.encoded, target=plan.target,
                                        targets=plan.targets, **options)
    rows = [_row(plan, laid, processors, index) for index in range(len(plan.rows))]
    _warn_if_empty(rows, method, options.get("correction"))
    return HFExplanation(rows, explanation, task.name, plan.encoded.as_dict(),
                         processors.tokenizer)


__all__ = ["CONSTRUCTOR_OPTIONS", "METHODS", "Encoded", "explain", "explainer_for"]
