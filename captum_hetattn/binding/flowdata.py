r"""What the data flow finds (:func:`~captum_hetattn.binding.dataflow.analyse`): streams, calls,
junctions, sources and input rows of one recorded forward, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from captum_hetattn.binding.probes import TokenRows

# the roles a call's tensors play (inputs before output within one call)
Q_IN, K_IN, OUT = 0, 1, 2
Mark = tuple[str, int, int]  # ("call", record index, role) / ("input", position, 0) / ("emb", i, 0)


@dataclass
class FlowJunction:
    r"""Rows of stream ``into`` replaced by ``weights @ R[origin]`` before call ``before``
    (``additive``: added to what an earlier junction into the same rows put there).

    ``weights`` is ``rows.matrix`` normalised over every token that feeds a row, from all
    origins: a merged token is the mean of the tokens it merges, a row fed by two streams (a
    bridge layer adding two towers' tokens) takes half from each.
    """

    into: int
    origin: int
    before: int
    rows: TokenRows
    weights: Tensor
    additive: bool = False


@dataclass
class FlowSource:
    r"""One input modality: the ``columns`` of stream ``stream`` it owns, and the inputs that
    feed them (model input positions; ``-1`` for rows fed by parameters only)."""

    stream: int
    columns: Tensor
    inputs: tuple[int, ...]
    name: str = ""


@dataclass
class InputRows:
    r"""How the elements of model input ``position`` feed the rows of stream ``stream``:
    ``rows`` ``(B, numel per example)`` is the row index each element feeds, ``-1`` if none;
    ``None`` when an element feeds several rows (overlapping convolutions)."""

    position: int
    stream: int
    rows: Tensor | None


@dataclass
class FlowStream:
    index: int
    size: int
    calls: list[int] = field(default_factory=list)
    fresh: Tensor | None = None  # (B, n) rows no other stream feeds
    tower: str = ""


@dataclass
class FlowCall:
    query: int
    key: int
    parallel_with_previous: bool = False


@dataclass
class DataFlow:
    r"""The result of :func:`analyse`: streams, per call its streams, junctions, sources."""

    streams: list[FlowStream]
    calls: list[FlowCall]
    junctions: list[FlowJunction]
    sources: list[FlowSource]
    inputs: list[InputRows]
    batch_size: int
    #: ``(module, reason)`` of softmaxes left out of the recording (not attention over tokens)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    #: ``(input position, module)``: a patch embedding's tokens repeated in a stream (lifts.py)
    repeated: list[tuple[int, str]] = field(default_factory=list)
    #: stream index -> ``(B, n)``: rows of an input's source that no input feeds (learned
    #: parameter tokens spliced into the stream): they start with no input relevance
    parameter_rows: dict[int, Tensor] = field(default_factory=dict)

    def last_call(self, stream: int) -> int | None:
        calls = self.streams[stream].calls
        return calls[-1] if calls else None

    def terminal_streams(self) -> list[int]:
        """Streams that nothing reads after their last call (candidates for the readout)."""
        out = []
        for stream in self.streams:
            if not stream.calls:
                continue
            last = stream.calls[-1]
            read_later = any(
                c.key == stream.index and i > last for i, c in enumerate(self.calls)
            ) or any(j.origin == stream.index and j.before > last for j in self.junctions)
            if not read_later:
                out.append(stream.index)
        return out
