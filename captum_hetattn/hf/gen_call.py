r"""How a ``generate()`` output is fed back to the model to be explained, as data.

:func:`~captum_hetattn.hf.generation.explain_generation` runs the processor, calls
``model.generate(...)`` and then runs the model **once more on the generated sequence** (teacher
forcing), so that logits row ``p − 1`` scores the token ``generate()`` put at position ``p``;
every generated token is one target of that single forward. What that forward needs depends on
the architecture, and is kept in the tables below rather than in code:

- :data:`SEQUENCE_ROLE`: which argument the generated sequence becomes — ``decoder_input_ids``
  for encoder–decoder models (T5, BART, Whisper: the encoder reads the processor's output
  unchanged), ``input_ids`` for decoder-only models (GPT-2, Llama, LLaVA, and BLIP's captioner,
  whose text decoder reads the picture by cross-attention), where the generated sequence
  replaces the prompt ids;
- :data:`~captum_hetattn.hf.inputs.ATTRIBUTED`: the processor outputs that are explained (ids,
  pixels, audio features); every other tensor (masks, image sizes) is passed along, not
  attributed;
- :data:`PROMPT_ONLY`: prompt-length outputs a decoder-only model is not given (they would not
  cover the generated tokens);
- the attention mask of a decoder-only model grows by one 1 per generated token, and its
  position ids are those ``generate()`` used (``cumsum(mask) − 1``, 1 on padding), so that a
  left-padded prompt is explained at the positions it was generated with.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from captum_hetattn.hf.inputs import ATTRIBUTED

#: the argument the generated sequence becomes, by ``config.is_encoder_decoder``
SEQUENCE_ROLE = {True: "decoder_input_ids", False: "input_ids"}
#: model classes whose config says otherwise (none known yet; BLIP's captioner is decoder-only)
SEQUENCE_ROLE_BY_CLASS: dict[str, str] = {}
#: prompt-length outputs a decoder-only model is not given with the generated sequence
PROMPT_ONLY = ("token_type_ids",)
#: the keyword a decoder-only forward takes its position ids by
POSITION_KEY = "position_ids"


@dataclass
class Prompt:
    r"""The raw prompt, one entry per example.

    Attributes:
        text: per example, the text (or None).
        images: per example, the picture (or None).
        audio: per example, the waveform (or None).
        size: the batch size.
    """

    text: list[str] | None
    images: list[Any] | None
    audio: list[Any] | None
    size: int


def _listed(value: Any, what: str) -> list[Any] | None:
    """A single prompt part as a one-element list; a list / tuple as it is."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"explain_generation: {what}= is an empty list")
        if what == "audio" and all(isinstance(v, (int, float)) for v in value):
            return [value]  # one waveform given as a list of samples
        return list(value)
    return [value]


def prompt_of(text: Any, images: Any, audio: Any) -> Prompt:
    r"""The prompt as per-example lists, checked: at least one part, equal batch sizes.

    Raises:
        ValueError: no prompt, or parts of different batch sizes.
        TypeError: text that is not a string.
    """
    if text is None and images is None and audio is None:
        raise ValueError("explain_generation needs a prompt: give text=, images= and/or audio=")
    texts = _listed(text, "text")
    if texts is not None and not all(isinstance(t, str) for t in texts):
        raise TypeError("explain_generation: text= must be a string or a list of strings, got "
                        f"{[type(t).__name__ for t in texts]}")
    parts = {"text": texts, "images": _listed(images, "images"), "audio": _listed(audio, "audio")}
    sizes = {name: len(part) for name, part in parts.items() if part is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"explain_generation: the prompt's parts differ in batch size: {sizes}")
    return Prompt(texts, parts["images"], parts["audio"], next(iter(sizes.values())))


def tokenizer_of(processor: Any) -> Any:
    """The tokenizer inside a processor (or the processor itself if it is one), else None."""
    if processor is None:
        return None
    if hasattr(processor, "convert_ids_to_tokens"):
        return processor
    return getattr(processor, "tokenizer", None)


def encode(processor: Any, prompt: Prompt, *, left_pad: bool,
           sampling_rate: int | None = None) -> dict[str, Tensor]:
    r"""Run the processor (or tokenizer) on the prompt; decoder-only models get left padding.

    Args:
        processor: a tokenizer, or a processor holding a tokenizer / image processor / feature
            extractor.
        prompt: from :func:`prompt_of`.
        left_pad: pad on the left (decoder-only models continue the last real token).
        sampling_rate: the waveforms' rate (default: the feature extractor's own).

    Returns:
        The processor's tensors by name.
    """
    if processor is None:
        raise ValueError("explain_generation needs the model's processor or tokenizer")
    call: dict[str, Any] = {"return_tensors": "pt"}
    if prompt.text is not None:
        call["text"] = prompt.text
        if prompt.audio is None:  # audio features keep the extractor's own padding (Whisper's
            call["padding"] = True  # 30-second window)
    if prompt.images is not None:
        call["images"] = prompt.images
    if prompt.audio is not None:
        extractor = getattr(processor, "feature_extractor", processor)
        call["audio"] = prompt.audio
        call["sampling_rate"] = sampling_rate or getattr(extractor, "sampling_rate", None)
    tokenizer = tokenizer_of(processor)
    settings = {"padding_side": "left" if left_pad else None,
                # GPT-2 and Llama tokenizers have no pad token: their end token pads (masked)
                "pad_token": None if getattr(tokenizer, "pad_token", None) is not None
                else getattr(tokenizer, "eos_token", None)}
    before = {name: getattr(tokenizer, name, None) for name in settings}
    try:
        for name, value in settings.items():
            if tokenizer is not None and value is not None:
                setattr(tokenizer, name, value)
        encoded = processor(**call)
    finally:
        for name, value in before.items():
            if tokenizer is not None and settings[name] is not None:
                setattr(tokenizer, name, value)
    if "labels" in encoded:
        raise ValueError(f"explain_generation: {type(processor).__name__} reads text= as the "
                         "expected output (labels), not as a prompt; leave text= out")
    return {key: value for key, value in dict(encoded).items() if isinstance(value, Tensor)}


def to_model(model: nn.Module, encoded: dict[str, Tensor]) -> dict[str, Tensor]:
    """The processor's tensors on the model's device, its float inputs (pixels, audio
    features) in the model's float type (what ``generate()`` needs of a half model)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return encoded
    return {key: value.to(parameter.device, parameter.dtype) if value.is_floating_point()
            else value.to(parameter.device) for key, value in encoded.items()}


def unwrap(model_or_pipeline: Any, processor: Any) -> tuple[nn.Module, Any]:
    r"""The model and its processor, from a model and processor or from a ``transformers``
    pipeline (``"text-generation"``, ``"image-to-text"``, ``"image-text-to-text"``,
    ``"automatic-speech-recognition"``), which holds both.

    Raises:
        TypeError: neither a model with ``generate()`` nor a pipeline holding one.
    """
    model = model_or_pipeline
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        model = model_or_pipeline.model
        if processor is None:
            processor = next((p for p in (getattr(model_or_pipeline, name, None) for name in
                                          ("processor", "tokenizer")) if p is not None), None)
            extractor = getattr(model_or_pipeline, "feature_extractor", None)
            if processor is not None and extractor is not None and not hasattr(
                    processor, "feature_extractor"):
                raise ValueError("explain_generation: this pipeline keeps its tokenizer and "
                                 "feature extractor apart; pass the model's processor "
                                 "(e.g. WhisperProcessor) as processor=")
    if not isinstance(model, nn.Module) or not callable(getattr(model, "generate", None)):
        raise TypeError(f"explain_generation needs a transformers model with generate() or a "
                        f"pipeline holding one, got {type(model_or_pipeline).__name__}")
    return model, processor


def sequence_role(model: nn.Module) -> str:
    """``"input_ids"`` or ``"decoder_input_ids"``: where the generated sequence goes."""
    by_class = SEQUENCE_ROLE_BY_CLASS.get(type(model).__name__)
    if by_class is not None:
        return by_class
    return SEQUENCE_ROLE[bool(getattr(model.config, "is_encoder_decoder", False))]


def _accepts(model: nn.Module, name: str) -> bool:
    """Whether the model's forward takes ``name`` by keyword."""
    return name in inspect.signature(model.forward).parameters


def generation_position_ids(mask: Tensor) -> Tensor:
    """The position ids ``generate()`` gives a decoder-only model: ``cumsum(mask) − 1``, 1 on
    padding (transformers' ``prepare_inputs_for_generation``)."""
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 1)


@dataclass
class FedCall:
    r"""The forward that explains a generated sequence, with its arguments.

    Attributes:
        names: the attributed arguments' names, in order (the generated sequence among them).
        inputs: their tensors (Captum's ``inputs``).
        extra_names: the other tensor arguments' names.
        extra: their tensors (Captum's ``additional_forward_args``).
        forward_func: ``(*inputs, *extra) → logits``.
        sequence: the position of the generated sequence in ``names``.
    """

    names: list[str]
    inputs: tuple[Tensor, ...]
    extra_names: list[str]
    extra: tuple[Tensor, ...]
    forward_func: Callable[..., Tensor]
    sequence: int


def _decoder_only_extras(model: nn.Module, encoded: dict[str, Tensor], sequences: Tensor,
                         start: int) -> dict[str, Tensor]:
    """The mask (grown by the generated tokens) and position ids of a decoder-only forward."""
    kept = {k: v for k, v in encoded.items() if k not in ATTRIBUTED and k not in PROMPT_ONLY}
    mask = kept.pop("attention_mask", None)
    if mask is None:
        return kept
    new = sequences.shape[1] - start
    # a prompt the model shortened before generating (BLIP drops its final [SEP]) keeps the
    # mask of the part it read
    grown = torch.cat([mask[:, :start], mask.new_ones(mask.shape[0], new)], dim=1)
    kept["attention_mask"] = grown
    if _accepts(model, POSITION_KEY) and bool((grown == 0).any()):
        kept[POSITION_KEY] = generation_position_ids(grown)
    return kept


def fed_call(model: nn.Module, encoded: dict[str, Tensor], sequences: Tensor,
             start: int) -> FedCall:
    r"""The forward of ``model`` on its generated ``sequences`` and the processor's output.

    Args:
        model: the generating model.
        encoded: the processor's tensors.
        sequences: ``(B, n)`` what ``generate()`` returned.
        start: the first generated position.

    Returns:
        A :class:`FedCall`.
    """
    role = sequence_role(model)
    if role == "input_ids":
        arguments = {k: v for k, v in encoded.items() if k in ATTRIBUTED and k != "input_ids"}
        arguments = {"input_ids": sequences, **arguments}
        extras = _decoder_only_extras(model, encoded, sequences, start)
    else:
        arguments = {k: v for k, v in encoded.items() if k in ATTRIBUTED}
        arguments[role] = sequences
        extras = {k: v for k, v in encoded.items() if k not in ATTRIBUTED}
    names = [k for k in (*ATTRIBUTED, role) if k in arguments]
    extra_names = sorted(extras)

    def forward_func(*tensors: Tensor) -> Tensor:
        return model(**dict(zip([*names, *extra_names], tensors, strict=True))).logits

    return FedCall(names, tuple(arguments[k] for k in names), extra_names,
                   tuple(extras[k] for k in extra_names), forward_func, names.index(role))


def generate_arguments(model: nn.Module, encoded: dict[str, Tensor]) -> dict[str, Tensor]:
    """The processor's tensors ``generate()`` is given (prompt-only ones dropped for a
    decoder-only model)."""
    if sequence_role(model) == "decoder_input_ids":
        return dict(encoded)
    return {k: v for k, v in encoded.items() if k not in PROMPT_ONLY}


def eos_ids(model: nn.Module, generate_kwargs: dict[str, Any]) -> set[int]:
    """The token ids that end a sequence (the call's ``eos_token_id``, else the model's)."""
    value = generate_kwargs.get("eos_token_id")
    if value is None:
        config = getattr(model, "generation_config", None)
        value = getattr(config, "eos_token_id", None)
    if value is None:
        return set()
    return {int(v) for v in (value if isinstance(value, Sequence) else [value])}


def generated_counts(sequences: Tensor, start: int, stops: set[int]) -> list[int]:
    """Per example, how many tokens it generated: up to and with its first end token (what
    follows is the padding ``generate()`` adds while the rest of the batch goes on)."""
    counts = []
    for row in sequences[:, start:].tolist():
        ends = [k for k, token in enumerate(row) if token in stops]
        counts.append(ends[0] + 1 if ends else len(row))
    return counts


__all__ = [
    "PROMPT_ONLY",
    "SEQUENCE_ROLE",
    "SEQUENCE_ROLE_BY_CLASS",
    "FedCall",
    "Prompt",
    "encode",
    "eos_ids",
    "fed_call",
    "generate_arguments",
    "generated_counts",
    "generation_position_ids",
    "prompt_of",
    "sequence_role",
    "to_model",
    "tokenizer_of",
    "unwrap",
]
