r"""Every readout rule and check, once: which final tokens explain the output.

The readout weights ``{stream: (B, n)}`` come from the objective's gradient at the output tokens
of the streams nothing reads after their last call (:func:`gradient_readout`), or from the
user's ``readout`` (an int, a ``(B,)`` tensor, ``"last"``, ``(B, n)`` weights, or a dict of
them per stream), range-checked by :func:`~captum_hetattn.rules.ops.readout_weights`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from captum_hetattn.binding import BoundRecording
from captum_hetattn.binding.tokens import tokens_view
from captum_hetattn.capture import AttentionRecord, autograd_node
from captum_hetattn.rules.ops import readout_weights

Readout = int | str | Tensor | Mapping[str, Any] | None
#: ``(stream, output of its last call, token dim)`` of a stream nothing reads afterwards
Terminal = tuple[str, Tensor | None, int]


def is_int(value: Any) -> bool:
    """An index: a Python int, not a bool (``True`` would silently mean 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_readout_token(value: Any, what: str) -> None:
    """Readout tokens are indices: a float or a bool is an error, never truncated."""
    if isinstance(value, list):
        value = torch.tensor(value)
    if isinstance(value, Tensor):
        if value.dim() < 2 and (value.is_floating_point() or value.dtype == torch.bool):
            raise TypeError(
                f"{what} is a {value.dtype} tensor; token indices must be integers ((batch, n) "
                "float tensors are readout weights)"
            )
    elif not (is_int(value) or isinstance(value, str)):  # strings: 'last', checked later
        raise TypeError(
            f"{what} must be an int, 'last', a (batch,) integer tensor or (batch, n) weights, "
            f"got {type(value).__name__} {value!r}"
        )


def check_score_rows(scores: Tensor, arguments: Sequence[Any]) -> None:
    r"""One score row per example: scores with ``k`` rows for each example of a batch that every
    batched argument holds (``k > 1``) fold another dimension into the batch (Dia's logits are
    ``(batch · channels, ...)``, one row per audio channel); no hidden state holds those rows,
    so the call is refused here, naming the shapes, rather than later by a layout that fails.

    Raises:
        ValueError: naming the score's and the arguments' shapes.
    """
    batched = [(i, a) for i, a in enumerate(arguments) if isinstance(a, Tensor) and a.dim() >= 2]
    batches = {a.shape[0] for _, a in batched}
    if scores.dim() == 0 or len(batches) != 1:
        return
    batch, rows = batches.pop(), scores.shape[0]
    if batch < 2 or rows <= batch or rows % batch:
        return  # one row may pack several images (MiniCPM's slices): the layouts decide
    where = ", ".join(f"argument {i} {tuple(a.shape)}" for i, a in batched)
    raise ValueError(
        f"forward_func returns scores of shape {tuple(scores.shape)}: {rows // batch} rows for "
        f"each of the {batch} examples its arguments hold ({where}); the output folds another "
        "dimension into the batch (one row per audio channel, codebook or crop?), and the "
        f"explanation reads one score row per example: return ({batch}, ...) scores (reshape "
        f"to ({batch}, {rows // batch}, ...) and pick or sum the rows of each example)"
    )


def resolve_readout(
    readout: Readout,
    main_stream: str | None,
    recording: BoundRecording,
    terminal: list[Terminal],
    grads: list[Tensor | None],
    padding: Mapping[str, Tensor],
    batch: int,
) -> dict[str, Tensor]:
    r"""Readout weights ``{stream: (B, n)}``: from the gradient, or as the user asked.

    Args:
        readout: the ``readout`` argument.
        main_stream: the graph's readout stream (``None``: the gradient's main stream).
        recording: the bound recording.
        terminal: the terminal streams' outputs (:func:`terminal_outputs`).
        grads: the objective's gradient at each of them.
        padding: per stream, ``(B, n)`` padding tokens (for ``"last"``).
        batch: the batch size.
    """
    from_gradient = gradient_readout(recording, terminal, grads, batch)
    given = user_readout(readout, main_stream, recording, padding, batch)
    if given is not None:
        return given
    if readout is None:
        return from_gradient
    stream = main_of(from_gradient)
    return {stream: readout_vector(readout, stream, recording, padding, batch)}


def user_readout(
    readout: Readout, main_stream: str | None, recording: BoundRecording,
    padding: Mapping[str, Tensor], batch: int,
) -> dict[str, Tensor] | None:
    """The weights the user's ``readout`` gives by itself; ``None`` where the gradient is
    needed (no readout, or tokens of a main stream the graph does not name)."""
    if readout is None:
        return None
    if isinstance(readout, Mapping):
        return {stream: readout_vector(value, stream, recording, padding, batch)
                for stream, value in readout.items()}
    if main_stream is None or main_stream not in recording.sizes:
        return None  # the main stream is read from the gradient
    return {main_stream: readout_vector(readout, main_stream, recording, padding, batch)}


def known_readout(readout: Readout, main_stream: str | None, recording: BoundRecording,
                  batch: int) -> dict[str, Tensor] | None:
    """The weights :func:`resolve_readout` gives for a ``readout`` that needs neither the
    gradient nor the padding (no ``"last"``), else ``None``: known before the maps arrive."""
    if isinstance(readout, str) or (isinstance(readout, Mapping) and any(
            isinstance(v, str) for v in readout.values())):
        return None
    return user_readout(readout, main_stream, recording, {}, batch)


def terminal_outputs(
    recording: BoundRecording, records: Sequence[AttentionRecord],
    scores: Sequence[Tensor] = (),
) -> list[Terminal]:
    """``(stream, output of its last call, token dim)`` for every stream that nothing reads
    after its last call (the objective reads these tokens directly), then for every other
    stream, latest last call first: the objective reads those where every stream that reads
    them afterwards gets no gradient (a pooling head that runs but is not used).

    A score computed from an earlier state of the model (``hidden_states[-2]``, a probe on an
    intermediate layer) depends on no stream's last call: with ``scores``, such streams are
    read at the output of their latest call the scores are computed from, and the calls after
    it get no gradient (reported by name; under the gradient correction they add nothing, as
    for a model cut after that call)."""
    flow = recording.flow
    if flow is None:
        return []
    ends = flow.terminal_streams()
    earlier = sorted((s.index for s in flow.streams if s.calls and s.index not in ends),
                     key=lambda s: -(flow.last_call(s) or 0))
    early = _read_early(records, flow, ends, scores) if scores else {}
    out = []
    for stream in [*ends, *earlier]:
        last = early.get(stream, flow.last_call(stream))
        name = recording.stream_names.get(stream)
        if last is None or name is None:
            continue
        out.append((name, records[last].output, records[last].token_dim))
    return out


def _read_early(records: Sequence[AttentionRecord], flow: Any, ends: Sequence[int],
                scores: Sequence[Tensor]) -> dict[int, int]:
    """Per terminal stream, the latest of its calls whose output the scores are computed from,
    where the scores depend on no terminal stream's last call; else nothing. A walk of the
    autograd graph from the scores, breadth first, so that the usual answer (a last call a few
    nodes below the score) stops it at once."""
    lasts = {autograd_node(records[c].output) for s in ends if (c := flow.last_call(s)) is not None}
    lasts.discard(None)
    calls = {autograd_node(records[c].output): (s, c) for s in ends
             for c in flow.streams[s].calls}
    calls.pop(None, None)
    if not lasts:
        return {}
    queue = deque(n for n in (autograd_node(t) for t in scores) if n is not None)
    seen, early = set(queue), {}
    while queue:
        node = queue.popleft()
        if node in lasts:
            return {}
        if node in calls:
            stream, call = calls[node]
            early[stream] = max(early.get(stream, call), call)
        for child, _ in getattr(node, "next_functions", ()):
            if child is not None and child not in seen:
                seen.add(child)
                queue.append(child)
    return early


def terminal_names(recording: BoundRecording) -> set[str]:
    """The names of the streams nothing reads after their last call."""
    flow = recording.flow
    if flow is None:
        return set()
    return {recording.stream_names[s] for s in flow.terminal_streams()
            if s in recording.stream_names}


def _readers(recording: BoundRecording, stream: str) -> set[str]:
    """The streams that read ``stream`` after its last call (by a call or a junction)."""
    flow = recording.flow
    index = {name: i for i, name in recording.stream_names.items()}.get(stream)
    if flow is None or index is None:
        return set()
    last = flow.last_call(index)
    last = -1 if last is None else last
    read = {c.query for i, c in enumerate(flow.calls) if c.key == index and i > last}
    read |= {j.into for j in flow.junctions if j.origin == index and j.before > last}
    for copy in [s for s in read if not flow.streams[s].calls]:  # a copy: read by its readers
        read |= {c.query for c in flow.calls if c.key == copy}
        read |= {j.into for j in flow.junctions if j.origin == copy}
    return {recording.stream_names[s] for s in read if s in recording.stream_names}


def gradient_readout(
    recording: BoundRecording,
    terminal: list[Terminal],
    grads: list[Tensor | None],
    batch: int,
) -> dict[str, Tensor]:
    r"""The default readout: ``w_x[i] ∝ ‖∂objective/∂y_x[i]‖`` over the output tokens ``y_x`` of
    every terminal stream's last call, normalised to sum 1 per example. A stream read after its
    last call (``terminal``'s later entries) is read where no stream that reads it is live (gets
    gradient at its final tokens, or feeds one that does): there the objective's gradient
    arrives at its tokens directly (a classifier that mean-pools the tower, not the pooling
    head that runs anyway)."""
    ends = terminal_names(recording)
    weights: dict[str, Tensor] = {}
    live: set[str] = set()
    for (stream, _, token_dim), grad in zip(terminal, grads, strict=True):
        if stream not in ends and _readers(recording, stream) & live:
            live.add(stream)  # its gradient arrives through a live stream that reads it
            continue
        if grad is None:
            continue
        norms = tokens_view(grad.detach().float(), token_dim).norm(dim=-1)
        if norms.shape != (batch, recording.sizes[stream]) or not bool(norms.any()):
            continue
        weights[stream] = norms
        live.add(stream)
    if not weights:
        _no_gradient_at_the_end(recording, terminal, grads)
    total = sum(w.sum(dim=1) for w in weights.values())
    check_every_example_read(total, sorted(recording.stream_names.values()))
    total = torch.where(total > 0, total, torch.ones_like(total))
    return {stream: (w / total[:, None]).contiguous() for stream, w in weights.items()}


def check_every_example_read(total: Tensor, streams: Sequence[str]) -> None:
    r"""Each example of a batch is read as it is alone: an example whose objective's gradient
    is zero at the final tokens of every stream is refused by name, as it is alone, instead of
    an explanation that is all zero for it (``total``: per example, the summed readout norms).

    Raises:
        ValueError: naming the example(s) and the streams.
    """
    unread = (total.detach() <= 0).nonzero().flatten().tolist()
    if unread:
        raise ValueError(
            f"the objective's gradient is zero at the final tokens of every stream ({streams}) "
            f"for example(s) {unread} of the batch (the others get gradient): their score does "
            "not depend on the model's attention (a score saturated or constant for them, such "
            "as the channel mean of a layer-normed feature, or a sigmoid that underflows?); "
            "explain those examples apart, or pass readout= to say which tokens explain them"
        )


def bypassed(recording: BoundRecording, weights: Mapping[str, Tensor]) -> list[str]:
    """Terminal streams the default readout does not read because their final tokens get no
    gradient while a stream they read does (a pooling head that runs but is not used)."""
    ends = terminal_names(recording)
    if all(stream in ends for stream in weights):
        return []
    after, todo = set(), list(weights)
    while todo:  # every stream that reads a read stream, directly or through others
        for reader in _readers(recording, todo.pop()) - after:
            after.add(reader)
            todo.append(reader)
    return sorted(s for s in ends & after if s not in weights)


def main_of(weights: Mapping[str, Tensor]) -> str:
    return max(weights, key=lambda s: float(weights[s].sum()))


def readout_vector(
    value: Any, stream: str, recording: BoundRecording, padding: Mapping[str, Tensor],
    batch: int,
) -> Tensor:
    if stream not in recording.sizes:
        raise ValueError(
            f"readout names stream '{stream}', which the model does not have (streams: "
            f"{list(recording.sizes)})"
        )
    n_tokens = recording.sizes[stream]
    if isinstance(value, list):
        value = torch.tensor(value)
    if isinstance(value, Tensor) and value.dim() == 2:
        if tuple(value.shape) != (batch, n_tokens):
            raise ValueError(
                f"readout weights for stream '{stream}' must be ({batch}, {n_tokens}), got "
                f"{tuple(value.shape)}"
            )
        return value.float()
    if isinstance(value, str):
        if value != "last":
            raise ValueError(f"readout must be an int, a tensor, 'last' or None, got {value!r}")
        real = padding.get(stream)
        real = torch.ones(batch, n_tokens, dtype=torch.bool) if real is None else ~real
        positions = torch.arange(n_tokens, device=real.device).expand(batch, n_tokens)
        value = torch.where(real, positions, torch.full_like(positions, -1)).amax(dim=1)
    return readout_weights(recording.sizes, stream, from_end(value, n_tokens), batch)[stream]


def from_end(index: Any, n_tokens: int) -> Any:
    """A negative token index counts from the stream's end, as ``target=-1`` and Python do
    (``readout=-1``: the last token); beyond ``-n_tokens`` it stays out of range."""
    if is_int(index):
        return index + n_tokens if -n_tokens <= index < 0 else index
    if isinstance(index, Tensor) and not index.is_floating_point():
        return torch.where((index < 0) & (index >= -n_tokens), index + n_tokens, index)
    return index


def masked_tokens(recording: BoundRecording) -> dict[str, Tensor]:
    r"""Per stream, ``(B, n)``: tokens the attention mask hides from every query of one of the
    stream's self calls (as the capture saw the mask; calls laid out otherwise say nothing)."""
    masked: dict[str, Tensor] = {}
    for call in recording.calls:
        hidden, stream = call.record.masked_keys, call.node.query
        if call.node.is_cross or hidden is None or stream not in recording.sizes:
            continue
        if hidden.shape[1] != recording.sizes[stream]:
            continue
        masked[stream] = hidden if stream not in masked else masked[stream] | hidden
    return masked


def check_not_padding(weights: Mapping[str, Tensor], masked: Mapping[str, Tensor]) -> None:
    r"""A readout must read a real token: an example whose readout weight lies on tokens the
    attention mask hides only (padding; :func:`masked_tokens`) would be explained by the
    padding token's own row.

    Raises:
        ValueError: naming the stream, the example and the padding token(s) read.
    """
    for stream, weight in weights.items():
        pad = masked.get(stream)
        if pad is None or pad.shape != weight.shape:
            continue
        read = weight.detach() != 0
        only_padding = read.any(1) & ((read & ~pad.to(read.device)).sum(1) == 0)
        for example in only_padding.nonzero().flatten().tolist():
            tokens = read[example].nonzero().flatten().tolist()
            raise ValueError(
                f"the readout of example {example} reads only padding: token(s) {tokens} of "
                f"stream '{stream}' are hidden by the attention mask, so the explanation would "
                "be the padding token's own row; " + (
                    "the mask hides every token of the stream from every query in this "
                    "example (a mask of zeros, or a streaming or chunked mask that does not fit "
                    "inputs this short?): its attention calls see no key, so nothing is "
                    "explained" if bool(pad[example].all()) else
                    "read a real token (readout='last' takes each example's last non-padding "
                    "token, or pass the index per example)")
            )


def absent_tokens(
    recording: BoundRecording,
    padding: Mapping[str, Tensor],
    causal: set[tuple[str, int]],
    readout: Mapping[str, Tensor],
) -> dict[str, Tensor]:
    """Tokens that would not exist in a reference run on one example: padding, and in a causal
    readout stream the positions after the last readout token (generation stops there)."""
    absent = dict(padding)
    for stream, weights in readout.items():
        first_self = next(
            (c for c in recording.calls if c.node.query == stream and not c.node.is_cross), None
        )
        if first_self is None or (first_self.record.name,
                                  first_self.record.call_index) not in causal:
            continue
        positions = torch.arange(weights.shape[1], device=weights.device)
        last = torch.where(weights > 0, positions, torch.full_like(positions, -1)).amax(dim=1)
        future = positions[None, :] > last[:, None]
        absent[stream] = absent.get(stream, torch.zeros_like(future)) | future
    return absent


def _no_gradient_at_the_end(recording: BoundRecording, terminal: list[Terminal],
                            grads: list[Tensor | None]) -> None:
    """Refuse a readout with no gradient at any stream's final tokens, telling a gradient that
    is exactly zero from one too small to weigh tokens (it vanished in a deep randomly
    initialised model: MobileViT's tester weights give 1e-31), naming the call it reaches."""
    streams = sorted(recording.stream_names.values())
    tiny = [(float(g.abs().max()), stream, out) for (stream, out, _), g
            in zip(terminal, grads, strict=True) if g is not None and bool(g.any())]
    if tiny:
        largest, stream, out = max(tiny, key=lambda each: each[0])
        module = next((c.node.label for c in reversed(recording.calls)
                       if c.record.output is out or c.node.query == stream), "?")
        raise ValueError(
            f"the objective's gradient at the final tokens of stream '{stream}' (the output of "
            f"{module}) is at most {largest:.2g} per element: not zero, but "
            "too small to weigh its tokens in float32 (a gradient that vanished through a deep "
            "randomly initialised model?); explain trained weights, or pass readout= to say "
            "which tokens explain the output"
        )
    raise ValueError(
        f"the objective's gradient is zero at the final tokens of every stream ({streams}): a "
        "score that does not depend on the model's attention (a constant logit, such as a "
        "padding token's tied to a zero embedding row?), or one read from tokens before the "
        "last attention call; pass readout= to say which tokens explain the output"
    )
