r"""The safety net for an explanation with no source: when no stream's tokens could be traced
back to a model input, every relevance is an empty dictionary (or all zeros), which reads like
"nothing mattered". It is refused instead, naming the streams, the calls and the inputs, and
the first module that consumed each input (an ``nn.Embedding`` looking up ids of another kind,
e.g. hashed or transposed ids the engine did not recognise as the input)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from captum_hetattn.binding import BoundRecording


def check_sources(recording: BoundRecording, inputs: Sequence[Any],
                  embeddings: Sequence[tuple[str, Tensor, Tensor, Any]], model: str) -> None:
    r"""Refuse an explanation whose streams hold no source (or only sources with no token).

    Args:
        recording: the bound recording.
        inputs: the forward's arguments (the formatted inputs, then the additional ones).
        embeddings: the recorder's ``nn.Embedding`` lookups ``(name, ids, output, node)``.
        model: the model's class name.

    Raises:
        ValueError: no stream holds a token of any source.
    """
    if any(part.numel() for source in recording.sources.values()
           for _, part in (source.parts or ((source.stream, source.columns),))):
        return
    streams = ", ".join(f"'{name}' ({size} tokens)" for name, size in recording.sizes.items())
    calls = [f"'{c.record.name}' [call {c.record.call_index}]" for c in recording.calls]
    shown = ", ".join(calls[:4]) + (f" and {len(calls) - 4} more" if len(calls) > 4 else "")
    raise ValueError(
        f"{model}: no attention stream could be traced back to a model input, so there is no "
        f"source to give relevance to (streams {streams}; calls {shown}). "
        + _why(inputs, embeddings)
        + " Pass float inputs (e.g. inputs_embeds) the model's tokens are computed from, or a "
        "layer graph with its sources."
    )


def _why(inputs: Sequence[Any], embeddings: Sequence[tuple[str, Tensor, Tensor, Any]]) -> str:
    """Per tensor input, what the engine saw of it."""
    parts = []
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, Tensor) or tensor.dim() == 0:
            continue
        shape = tuple(tensor.shape)
        if tensor.is_floating_point():
            parts.append(f"float input {position} {shape} reaches no attention call's hidden "
                         "states through autograd")
            continue
        if bool(((tensor == 0) | (tensor == 1)).all()):
            continue  # an attention mask or token types, not the tokens
        lookups = [name for name, ids, _, _ in embeddings
                   if isinstance(ids, Tensor) and ids.numel() == tensor.numel()]
        if lookups:
            parts.append(
                f"integer input {position} {shape} is looked up by no embedding as it is; the "
                f"first lookup of that many ids is '{lookups[0]}', on ids that are not the "
                "input's values (hashed, shifted or re-laid-out ids the engine does not follow)")
        elif embeddings:
            name, ids = embeddings[0][0], embeddings[0][1]
            looked = f" on ids of shape {tuple(ids.shape)}" if isinstance(ids, Tensor) else ""
            parts.append(f"integer input {position} {shape} is looked up by no embedding "
                         f"(the first embedding called is '{name}'{looked}: padded or "
                         "reshaped ids?)")
        else:
            parts.append(f"integer input {position} {shape}: no nn.Embedding ran")
    return "; ".join(parts) + "." if parts else "No tensor input was given."
