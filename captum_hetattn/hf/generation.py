r"""``hf.explain_generation``: every token a HuggingFace model generates, explained over the
prompt's words, the tokens generated before it, the picture (at its own size) and the audio.

One call runs the processor, ``model.generate(...)`` (greedy unless told otherwise), then the
model once more on the generated sequence (how the sequence is fed back, per architecture, is
data: :mod:`captum_hetattn.hf.gen_call`) with one target per generated token
(:func:`~captum_hetattn.generation_targets`): one forward, one backward per token. Before the
rows are built, the logits of that forward are checked against the logits ``generate()``
computed: a model the tables do not feed as it was fed while generating is a warning naming it,
not a silently wrong answer.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captum_hetattn.engine.result import Explanation
from captum_hetattn.engine.targets import generation_targets
from captum_hetattn.hf.api import explainer_for
from captum_hetattn.hf.audio import AudioTiming, audio_relevance, clip_length
from captum_hetattn.hf.gen_call import (
    FedCall,
    Prompt,
    encode,
    eos_ids,
    fed_call,
    generate_arguments,
    generated_counts,
    prompt_of,
    sequence_role,
    to_model,
    tokenizer_of,
    unwrap,
)
from captum_hetattn.hf.inputs import Encoded, explain_and_map
from captum_hetattn.hf.pixels import as_rgb, attribution_to_pixels, geometry_for, image_size
from captum_hetattn.hf.result import ExplainedTarget, HFExplanation, Row
from captum_hetattn.hf.words import word_scores, words_of

#: options that go to the explainer (``explain`` / its constructor); every other keyword goes
#: to ``generate()``
EXPLAIN_OPTIONS = ("correction", "noise_link", "weighting", "include_own", "graph", "capture",
                   "normalize", "cross_term")
#: ``explain`` options that do not fit every generated token explained from one forward
NOT_HERE = ("target", "targets", "readout", "objective", "stage", "return_maps")
#: ``generate()`` options a one-sequence-per-prompt explanation cannot take
REFUSED_GENERATE = {"num_beams": 1, "num_return_sequences": 1}
#: relative difference of the re-run logits from ``generate()``'s beyond which it warns
#: (float32); half models get ``8 × eps`` of their type (a cached and an uncached forward round
#: differently)
REPRODUCE_TOLERANCE = 1e-3


@dataclass
class GeneratedRow(Row):
    r"""One generated token, explained (a :class:`~captum_hetattn.hf.result.Row`).

    Attributes:
        generated: ``[(token, score), ...]``: relevance over the tokens generated before this
            one, in order (``[]`` for the first).
    """

    generated: list[tuple[str, float]] | None = None


@dataclass
class _Generated:
    """What ``generate()`` gave: the sequences, the first generated position, the raw logits
    of every step ``(steps, B, V)`` (None where not returned) and tokens per example."""

    sequences: Tensor
    start: int
    logits: Tensor | None
    counts: list[int]


def _checked_count(max_new_tokens: Any) -> int:
    """``max_new_tokens`` as a positive int, else a ValueError / TypeError."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise TypeError(f"explain_generation: max_new_tokens must be an int, got "
                        f"{max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"explain_generation: max_new_tokens={max_new_tokens} explains no "
                         "token; give at least 1")
    return int(max_new_tokens)


def _generate(model: nn.Module, encoded: dict[str, Tensor], max_new_tokens: int,
              generate_kwargs: dict[str, Any]) -> _Generated:
    """``model.generate`` (greedy by default), with the first generated position and the raw
    logits of every step."""
    for name, only in REFUSED_GENERATE.items():
        if generate_kwargs.get(name, only) != only:
            raise ValueError(f"explain_generation explains one sequence per prompt: {name}="
                             f"{generate_kwargs[name]} is not supported (use {name}={only})")
    call = {"do_sample": False, **generate_kwargs, "max_new_tokens": max_new_tokens,
            "return_dict_in_generate": True, "output_scores": True, "output_logits": True}
    with torch.no_grad():
        out = model.generate(**generate_arguments(model, encoded), **call)
    sequences = out.sequences
    steps = len(out.scores)
    start = sequences.shape[1] - steps
    if steps == 0:
        raise ValueError(f"explain_generation: {type(model).__name__}.generate() generated no "
                         "token (max_length or a stopping criterion reached): nothing to explain")
    if start < 1:  # the first new token's logits row would lie before the sequence
        raise ValueError(f"explain_generation: {type(model).__name__}.generate() returned the "
                         "new tokens without the prompt or decoder start they follow; the "
                         "logits row of each cannot be placed")
    raw = getattr(out, "logits", None)
    logits = torch.stack(list(raw)).float() if raw is not None and len(raw) == steps else None
    return _Generated(sequences, start, logits,
                      generated_counts(sequences, start, eos_ids(model, generate_kwargs)))


def _explain(explainer: Any, call: FedCall, targets: list, options: dict[str, Any]
             ) -> tuple[Explanation, list[Tensor]]:
    r"""One forward, one backward per target: the explanation (``(B, K, n)`` relevance) and
    each attributed input's relevance laid out like it, ``(B, K, *input.shape[1:])``."""
    encoded = Encoded([*call.names, *call.extra_names], [*call.inputs, *call.extra],
                      len(call.names))
    explanation, laid_out = explain_and_map(explainer, encoded, targets=targets, **options)
    return explanation, [each.detach().cpu() for each in laid_out]


def _differs(ours: Tensor, theirs: Tensor, tolerance: float) -> bool:
    """Whether re-run logits rows ``ours`` are not ``generate()``'s ``theirs`` ``(n, V)``:
    beyond ``tolerance`` relative to the logits' spread (their standard deviation, so that
    masked ``-inf`` entries, which must stay where they are, do not set the scale)."""
    finite = theirs.isfinite()
    if not torch.equal(finite, ours.isfinite()):
        return True
    if not bool(finite.any()):
        return False
    scale = tolerance * (1.0 + float(theirs[finite].std()) if finite.sum() > 1 else 1.0)
    return float((ours - theirs)[finite].abs().max()) > scale


def _check_reproduces(model: nn.Module, logits: Tensor, generated: _Generated) -> None:
    """Warn, naming the model, where the re-run's logits are not ``generate()``'s."""
    if generated.logits is None:
        return
    start = generated.start
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    tolerance = max(REPRODUCE_TOLERANCE, 8 * torch.finfo(dtype).eps)
    for example, count in enumerate(generated.counts):
        ours = logits[example, start - 1:start - 1 + count].float().cpu()
        theirs = generated.logits[:count, example].cpu()
        if _differs(ours, theirs, tolerance):
            difference = float((ours - theirs).abs().max())
            warnings.warn(
                f"explain_generation: {type(model).__name__} run on its generated sequence does "
                f"not reproduce the logits generate() computed (example {example}: max "
                f"difference {difference:.3g}); the relevance may not explain what was "
                "generated. Its inputs are fed as captum_hetattn.hf.gen_call's tables say; "
                "a family that needs other decoder inputs belongs there.",
                UserWarning, stacklevel=3)
            return


def token_text(tokenizer: Any, token: int) -> str:
    """A generated token as text (its decoded form; the raw piece where that is blank)."""
    if tokenizer is None:
        return str(token)
    decoded = tokenizer.decode([token]).strip()
    return decoded or str(tokenizer.convert_ids_to_tokens(token))


def _prompt_words(tokenizer: Any, call: FedCall, prompt: Prompt, generated: _Generated
                  ) -> tuple[int | None, list[list] | None]:
    """Which input holds the prompt's text and the words of each example (None without a
    tokenizer or a text prompt)."""
    if tokenizer is None or prompt.text is None or "input_ids" not in call.names:
        return None, None
    source = call.names.index("input_ids")
    ids = call.inputs[source]
    mask = dict(zip(call.extra_names, call.extra, strict=True)).get("attention_mask")
    positions = range(generated.start) if source == call.sequence else None
    words = [words_of(tokenizer, ids[b], text=prompt.text[b],
                      mask=None if mask is None else mask[b], positions=positions)
             for b in range(ids.shape[0])]
    return source, words


def _pictures(processor: Any, call: FedCall, prompt: Prompt) -> list[tuple[Any, Any]] | None:
    """Per example, the picture's geometry and its RGB array (None without a picture)."""
    if prompt.images is None or "pixel_values" not in call.names:
        return None
    pixels = call.inputs[call.names.index("pixel_values")]
    if pixels.dim() != 4 or pixels.shape[0] != prompt.size:
        warnings.warn(f"explain_generation: pixel_values of shape {tuple(pixels.shape)} is not "
                      "one (C, H, W) picture per example; no pixel maps (the token relevance "
                      "is in result.explanation)", UserWarning, stacklevel=3)
        return None
    masks = dict(zip(call.extra_names, call.extra, strict=True)).get("pixel_mask")
    image_processor = getattr(processor, "image_processor", processor)
    return [(geometry_for(image_processor, image_size(image), pixels.shape[-2:],
                          None if masks is None else masks[b]), as_rgb(image))
            for b, image in enumerate(prompt.images)]


def _audio_timing(processor: Any, prompt: Prompt, call: FedCall, sampling_rate: int | None
                  ) -> tuple[int, AudioTiming] | None:
    """Which input holds the audio and where each clip's real frames (or samples) lie in it
    (None without audio)."""
    held = [name for name in ("input_features", "input_values") if name in call.names]
    if prompt.audio is None or not held:
        return None
    at = call.names.index(held[0])
    extractor = getattr(processor, "feature_extractor", processor)
    rate = float(sampling_rate or getattr(extractor, "sampling_rate", 16000))
    hop = int(getattr(extractor, "hop_length", 1) or 1) if held[0] == "input_features" else 1
    units = call.inputs[at].shape[-1]
    lengths = tuple(min(math.ceil(clip_length(clip) / hop), units) for clip in prompt.audio)
    return at, AudioTiming(lengths, rate / hop)


@dataclass
class _Parts:
    """Everything one row is read from."""

    tokenizer: Any
    generated: _Generated
    attributions: list[Tensor]
    sequence: int
    probabilities: Tensor
    text_at: int | None
    words: list[list] | None
    pictures: list[tuple[Any, Any]] | None
    audio: tuple[int, AudioTiming] | None
    image_at: int | None


def _row(parts: _Parts, example: int, k: int) -> GeneratedRow:
    """Generated token ``k`` of ``example``: what it is and its relevance over everything."""
    generated, tokenizer = parts.generated, parts.tokenizer
    position = generated.start + k
    ids = generated.sequences[example].tolist()
    token = int(ids[position])
    target = ExplainedTarget(
        example=example, index=(position - 1, token), label=token_text(tokenizer, token),
        kind="generated", score=float(parts.probabilities[example, position - 1, token]),
        position=position)
    on_sequence = parts.attributions[parts.sequence][example, k]
    row = GeneratedRow(target=target, generated=[
        (token_text(tokenizer, ids[p]), float(on_sequence[p]))
        for p in range(generated.start, position)])
    if parts.words is not None and parts.text_at is not None:
        row.words = word_scores(parts.words[example],
                                parts.attributions[parts.text_at][example, k])
    if parts.pictures is not None and parts.image_at is not None:
        geometry, row.image = parts.pictures[example]
        row.pixels = attribution_to_pixels(parts.attributions[parts.image_at][example, k],
                                           geometry)
    if parts.audio is not None:
        at, timing = parts.audio
        row.audio, row.audio_times = audio_relevance(parts.attributions[at][example, k], timing,
                                                     example)
    return row


def explain_generation(
    model: Any,
    processor: Any = None,
    *,
    text: str | list[str] | None = None,
    images: Any = None,
    audio: Any = None,
    max_new_tokens: int = 20,
    method: str = "ours",
    sampling_rate: int | None = None,
    **options: Any,
) -> HFExplanation:
    r"""Generate from a prompt and explain every generated token.

    Runs ``processor`` on the prompt, ``model.generate(...)`` (greedy by default: the same
    tokens every time), then explains each generated token — the logits row that predicted
    it, with the token itself as target — over the prompt's words, the tokens generated
    before it, the picture and the audio, from one forward of the model on the generated
    sequence (one backward per token).

    Args:
        model: a transformers model with ``generate()``: decoder-only (GPT-2, Llama, LLaVA,
            BLIP's captioner) or encoder–decoder (T5, BART, Whisper); or a pipeline holding
            one (``"text-generation"``, ``"image-to-text"``, ...).
        processor: its tokenizer, or its processor (tokenizer with an image processor or a
            feature extractor); a pipeline's own by default.
        text: the prompt's text, or one per example.
        images: a picture (PIL image, array), or one per example.
        audio: a waveform (1-D array at ``sampling_rate``), or one per example.
        max_new_tokens: how many tokens to generate (at least 1).
        method: ``"ours"`` (default), ``"gae"``, ``"rollout"``, ``"raw"`` (or a class name
            of :data:`captum_hetattn.hf.api.METHODS`).
        sampling_rate: the waveforms' rate (default: the feature extractor's).
        **options: ``correction``, ``noise_link``, ``weighting``, ``include_own`` (and the
            constructor's ``graph``, ``capture``, ``normalize``, ``cross_term``) go to the
            explainer; everything else to ``generate()`` (``do_sample=False`` unless given;
            beam search and several sequences per prompt are refused).

    Returns:
        An :class:`~captum_hetattn.hf.result.HFExplanation` with one
        :class:`GeneratedRow` per generated token, in example order (an example that ends
        early has fewer): ``.target`` the token (``label`` its text, ``score`` its
        probability, ``index`` ``(logits row, token id)``), ``.words`` the prompt's words
        (pieces merged, specials and padding out), ``row.generated`` the earlier generated
        tokens, ``.pixels`` the picture at its own size, ``row.audio`` per audio frame;
        ``.explanation`` the engine's :class:`~captum_hetattn.Explanation` with
        ``(B, K, n)`` relevance; ``.inputs`` the processor's output and ``"sequences"``.
        As everywhere, the read token's own share is left out (``include_own=True`` keeps
        it): the token a row is read at — the one just before the generated token, the
        prompt's last word for the first row — scores 0 in that row.

    Raises:
        ValueError: no prompt, ``max_new_tokens < 1``, an unknown method, beam search, or a
            ``generate()`` that returned no new token.

    Examples::

        >>> from transformers import AutoProcessor, BlipForConditionalGeneration
        >>> name = "Salesforce/blip-image-captioning-base"
        >>> model = BlipForConditionalGeneration.from_pretrained(name).eval()
        >>> result = hf.explain_generation(model, AutoProcessor.from_pretrained(name),
        ...                                images=picture, text="a picture of",
        ...                                max_new_tokens=8)
        >>> [row.target.label for row in result.rows]    # the caption, token by token
        >>> result.words[0], result.pixels[0].shape      # prompt words; (H, W) of the picture
    """
    count = _checked_count(max_new_tokens)
    prompt = prompt_of(text, images, audio)
    unknown = [name for name in options if name in NOT_HERE]
    if unknown:
        raise TypeError(f"explain_generation explains every generated token, from one forward; "
                        f"{unknown} cannot be given (for one token: an explainer's "
                        "explain(result.inputs['sequences'], target=row.target.index))")
    explain_options = {k: options.pop(k) for k in EXPLAIN_OPTIONS if k in options}
    model, processor = unwrap(model, processor)
    encoded = to_model(model, encode(processor, prompt,
                                     left_pad=sequence_role(model) == "input_ids",
                                     sampling_rate=sampling_rate))
    generated = _generate(model, encoded, count, options)
    call = fed_call(model, encoded, generated.sequences, generated.start)
    seen: dict[str, Tensor] = {}

    def forward_func(*tensors: Tensor) -> Tensor:
        seen["logits"] = logits = call.forward_func(*tensors)
        return logits

    explainer = explainer_for(method, forward_func, model, explain_options)
    targets = generation_targets(generated.sequences, generated.start)
    explanation, attributions = _explain(explainer, call, targets, explain_options)
    logits = seen["logits"].detach().float()
    _check_reproduces(model, logits, generated)
    return _result(processor, prompt, call, generated, explanation, attributions, logits,
                   sampling_rate, encoded)


def _result(processor: Any, prompt: Prompt, call: FedCall, generated: _Generated,
            explanation: Explanation, attributions: list[Tensor], logits: Tensor,
            sampling_rate: int | None, encoded: dict[str, Tensor]) -> HFExplanation:
    """The rows, one per generated token, and the result holding them."""
    tokenizer = tokenizer_of(processor)
    text_at, words = _prompt_words(tokenizer, call, prompt, generated)
    parts = _Parts(
        tokenizer=tokenizer, generated=generated, attributions=attributions,
        sequence=call.sequence, probabilities=logits.softmax(-1).cpu(), text_at=text_at,
        words=words, pictures=_pictures(processor, call, prompt),
        audio=_audio_timing(processor, prompt, call, sampling_rate),
        image_at=call.names.index("pixel_values") if "pixel_values" in call.names else None)
    rows: list[Row] = [_row(parts, example, k)
                       for example, count in enumerate(generated.counts) for k in range(count)]
    return HFExplanation(rows=rows, explanation=explanation, task="generation",
                         inputs={**encoded, "sequences": generated.sequences})


__all__ = ["EXPLAIN_OPTIONS", "GeneratedRow", "explain_generation", "token_text"]
