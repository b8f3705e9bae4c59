r"""From raw input to the model's tensors and back: the model and its processors out of a
pipeline, the processor run on text and pictures, the forward function over the attributed
inputs, and one engine call that gives both the :class:`~captum_hetattn.Explanation` and the
relevance laid out like every input (ids, ``pixel_values``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captum_hetattn.engine.result import Explanation
from captum_hetattn.hf.audio import AudioTiming, encode_audio
from captum_hetattn.hf.pixels import Geometry, as_rgb, geometry_for, image_size
from captum_hetattn.hf.tasks import Task

#: inputs that carry what is explained, in the order the forward function takes them
ATTRIBUTED = ("input_ids", "pixel_values", "input_features", "input_values")


@dataclass
class Processors:
    r"""The processing a model needs: a tokenizer, an image processor, a feature extractor."""

    tokenizer: Any = None
    image_processor: Any = None
    feature_extractor: Any = None


@dataclass
class Encoded:
    r"""The processor's output, split as the engine takes it.

    Attributes:
        names: the forward's input names: the attributed ones first, then the rest.
        tensors: the tensors in that order.
        count: how many of them are attributed (``inputs``); the rest go in
            ``additional_forward_args``.
        texts: the text (or ``(text, text_pair)``) of each example of the batch.
        geometries: per example, how its picture became ``pixel_values`` (None without one).
        pictures: per example, its picture as ``H × W × 3`` uint8 (None without one).
        audio: where the clips lie in the audio input (None without audio).
    """

    names: list[str]
    tensors: list[Tensor]
    count: int
    texts: list[Any] = field(default_factory=list)
    geometries: list[Geometry | None] = field(default_factory=list)
    pictures: list[Any] = field(default_factory=list)
    audio: AudioTiming | None = None

    def get(self, name: str) -> Tensor | None:
        """The tensor called ``name``, if the model reads it."""
        return self.tensors[self.names.index(name)] if name in self.names else None

    def select(self, index: Sequence[int], column: Sequence[int] | None = None) -> Encoded:
        """The examples ``index`` (text inputs) and ``column`` (picture inputs; default the
        same): a batch of text–picture pairs from separate text and picture batches."""
        column = index if column is None else column
        picked = []
        for name, tensor in zip(self.names, self.tensors, strict=True):
            rows = column if name.startswith("pixel") else index
            picked.append(tensor[list(rows)])
        return Encoded(self.names, picked, self.count,
                       [self.texts[i] for i in index] if self.texts else [],
                       [self.geometries[j] for j in column] if self.geometries else [],
                       [self.pictures[j] for j in column] if self.pictures else [],
                       None if self.audio is None else AudioTiming(
                           tuple(self.audio.lengths[i] for i in index), self.audio.rate))

    def as_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.tensors, strict=True))


def unwrap(model_or_pipeline: Any, processor: Any) -> tuple[nn.Module, Processors]:
    r"""The model and its processors, from a model and processor or from a pipeline.

    ``processor`` may be a tokenizer, an image processor, a combined processor (with
    ``.tokenizer`` and ``.image_processor``) or a tuple of them; a pipeline brings its own.

    Raises:
        TypeError: neither an ``nn.Module`` nor a pipeline.
    """
    model = model_or_pipeline
    found = Processors()
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        pipe = model_or_pipeline
        model = pipe.model
        if processor is None:
            processor = tuple(p for p in (getattr(pipe, "processor", None),
                                          getattr(pipe, "tokenizer", None),
                                          getattr(pipe, "image_processor", None)) if p)
    if not isinstance(model, nn.Module):
        raise TypeError(f"hf.explain needs a transformers model or pipeline, got "
                        f"{type(model_or_pipeline).__name__}")
    parts = processor if isinstance(processor, (tuple, list)) else (processor,)
    for part in parts:
        if part is None:
            continue
        found.tokenizer = found.tokenizer or getattr(part, "tokenizer", None)
        found.image_processor = found.image_processor or getattr(part, "image_processor", None)
        found.feature_extractor = found.feature_extractor or getattr(part, "feature_extractor",
                                                                     None)
        if callable(getattr(part, "convert_ids_to_tokens", None)):
            found.tokenizer = found.tokenizer or part
        elif hasattr(part, "sampling_rate") and hasattr(part, "feature_size"):
            found.feature_extractor = found.feature_extractor or part
        elif hasattr(part, "preprocess") and not hasattr(part, "tokenizer"):
            found.image_processor = found.image_processor or part
    return model, found


def as_list(value: Any, what: str) -> list[Any] | None:
    """One item or a list of them as a list (None stays None; a batch of pictures, ``(B, C,
    H, W)`` or ``(B, H, W, C)``, or of clips, ``(B, samples)``, is a list of ``B``)."""
    if value is None:
        return None
    batched = isinstance(value, (Tensor, np.ndarray)) and value.ndim == (
        2 if what == "audio" else 4)
    items = list(value) if isinstance(value, (list, tuple)) or batched else [value]
    if not items:
        raise ValueError(f"{what} is empty")
    return items


def check_reads(task: Task, model: nn.Module, processors: Processors,
                texts: list[Any] | None, images: list[Any] | None,
                audio: list[Any] | None = None) -> None:
    r"""Each input the task needs is given, with the processor that reads it.

    Raises:
        ValueError: naming the missing input or processor.
    """
    name = type(model).__name__
    needs = {"text": (texts, processors.tokenizer, "a tokenizer"),
             "images": (images, processors.image_processor, "an image processor"),
             "audio": (audio, processors.feature_extractor, "a feature extractor")}
    for what in task.reads:
        given, processor, kind = needs[what]
        if given is None:
            raise ValueError(f"{name} ({task.name}) reads {what}: give {what}=...")
        if processor is None:
            raise ValueError(f"{name} ({task.name}) reads {what}: pass {kind} (or a processor "
                             "holding one) as processor=...")
    for what in needs:
        if what not in task.reads and needs[what][0] is not None:
            raise ValueError(f"{name} ({task.name}) does not read {what}; leave {what}= out")


def on_model(model: nn.Module, tensor: Tensor) -> Tensor:
    """``tensor`` on the model's device; floats (pixels, audio features) in its dtype."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return tensor
    dtype = parameter.dtype if tensor.is_floating_point() else tensor.dtype
    return tensor.to(device=parameter.device, dtype=dtype)


def text_padding(model: nn.Module, padding: str) -> dict[str, Any]:
    """The tokenizer's padding options: the longest text, or the text model's positions."""
    if padding != "max_length":
        return {"padding": True}
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", config)
    return {"padding": "max_length",
            "max_length": int(getattr(text_config, "max_position_embeddings", 64))}


def encode(model: nn.Module, processors: Processors, texts: list[Any] | None,
           images: list[Any] | None, padding: str = "longest",
           audio: list[Any] | None = None) -> Encoded:
    r"""Run the tokenizer (padded as the task says), the image processor and the feature
    extractor; keep what ``model.forward`` takes."""
    produced: dict[str, Tensor] = {}
    timing = None
    if audio is not None:
        heard, timing = encode_audio(processors.feature_extractor, audio)
        produced.update(heard)
    if texts is not None:
        pairs = [t if isinstance(t, tuple) else (t,) for t in texts]
        if len({len(p) for p in pairs}) != 1 or len(pairs[0]) > 2:
            raise ValueError("text: give strings, or (text, text_pair) tuples for every example")
        columns = [list(column) for column in zip(*pairs, strict=True)]
        produced.update(processors.tokenizer(*columns, truncation=True, return_tensors="pt",
                                             **text_padding(model, padding)))
        if padding == "max_length":  # read unmasked, as trained (SigLIP)
            produced.pop("attention_mask", None)
    geometries: list[Geometry | None] = []
    pictures: list[Any] = []
    if images is not None:
        processed = processors.image_processor(images=images, return_tensors="pt")
        produced.update(processed)
        masks = processed.get("pixel_mask")
        size = produced["pixel_values"].shape[-2:]
        for index, image in enumerate(images):
            mask = None if masks is None else masks[index]
            geometries.append(geometry_for(processors.image_processor, image_size(image), size,
                                           mask))
            pictures.append(as_rgb(image))
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in ATTRIBUTED if n in produced and n in accepted]
    names += [n for n in produced if n not in names and n in accepted]
    tensors = [on_model(model, torch.as_tensor(produced[n])) for n in names]
    count = sum(1 for n in names if n in ATTRIBUTED)
    return Encoded(names, tensors, count, list(texts) if texts else [], geometries, pictures,
                   timing)


def forward_function(model: nn.Module, task: Task, names: Sequence[str],
                     pairs: bool = False) -> Callable[..., Tensor]:
    r"""``forward(*tensors)``: the model on its inputs by name, read at the task's output.

    Args:
        model: the model.
        task: its task (which output field).
        names: the inputs' names, in the order the engine passes them.
        pairs: for image–text matching, a batch of pairs: example ``b`` scores text ``b``
            against picture ``b`` (the diagonal, as ``(B, 1)``).
    """

    def forward(*tensors: Tensor) -> Tensor:
        output = model(**dict(zip(names, tensors, strict=True)))
        scores = getattr(output, task.output)
        if pairs:
            return scores.diagonal()[:, None]
        return scores

    return forward


def explain_and_map(explainer: Any, encoded: Encoded, **options: Any
                    ) -> tuple[Explanation, list[Tensor]]:
    r"""One engine call: the explanation and every attributed input's relevance laid out like
    it (what ``attribute`` returns), from the same forward and backward
    (:meth:`~captum_hetattn.HeterogenousAttentionAttribution.attribute_and_explain`).

    Args:
        explainer: one of the four explainers.
        encoded: the inputs.
        options: ``attribute_and_explain``'s keyword arguments (``target`` or ``targets``,
            ``correction``, ``return_maps``, ...).

    Raises:
        TypeError: an option the explainer does not take.

    Returns:
        ``(explanation, [relevance like input 0, like input 1, ...])``; with ``targets`` each
        relevance has a target dimension after the batch.
    """
    accepted = {name for name, parameter
                in inspect.signature(explainer.attribute_and_explain).parameters.items()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY or name == "target"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"hf.explain got unknown options {unknown}")
    attributions, explanation = explainer.attribute_and_explain(
        tuple(encoded.tensors[: encoded.count]), additional_forward_args=tuple(
            encoded.tensors[encoded.count:]) or None, **options)
    return explanation, [each.float() for each in attributions]


__all__ = ["ATTRIBUTED", "Encoded", "Processors", "as_list", "check_reads", "encode",
           "explain_and_map", "forward_function", "on_model", "unwrap"]
