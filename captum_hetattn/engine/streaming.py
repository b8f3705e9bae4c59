r"""The streaming adjoint: where a propagator is linear, the readout rows are propagated during
the backward pass itself, each reduced map used as it arrives and dropped (no map kept until
the end)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from torch import Tensor

from captum_hetattn.binding import BoundRecording
from captum_hetattn.engine.readout import (
    Readout,
    Terminal,
    gradient_readout,
    known_readout,
    terminal_names,
)
from captum_hetattn.engine.reduce import Capture
from captum_hetattn.rules.adjoint import RowAdjoint
from captum_hetattn.rules.folded import FoldedMap
from captum_hetattn.rules.ops import AttentionFlow, TokenMap, relevance_dtype
from captum_hetattn.rules.propagators import Propagator


class Streaming:
    r"""The streaming adjoint: where the rules are linear, the readout rows are propagated during
    the backward pass, which meets the calls in reverse order — the adjoint's order — so each
    ``Ā`` is used as soon as it is reduced and dropped (maps that arrive early wait until the
    steps after them have run). Exactly :func:`~captum_hetattn.rules.propagate_row` on the same
    maps. Until the readout is known no step runs and every map waits (the caller then falls
    back to the full flows)."""

    def __init__(self, recording: BoundRecording, residuals: Mapping[tuple[str, int], Tensor],
                 method: Propagator) -> None:
        self.recording, self.residuals, self.method = recording, residuals, method
        self.steps = list(recording.steps)
        self.next = len(self.steps) - 1
        self.keys = {(c.record.name, c.record.call_index) for c in recording.calls}
        self.maps: dict[tuple[str, int], Tensor] = {}
        self.adjoint: RowAdjoint | None = None
        self.reference: Tensor | None = None

    def set_readout(self, weights: Mapping[str, Tensor]) -> None:
        dtype = relevance_dtype(next(iter(weights.values())).dtype)
        self.adjoint = RowAdjoint(self.recording.sizes, weights, method=self.method,
                                  dtype=dtype)
        self._advance()

    def offer(self, key: tuple[str, int], reduced: Tensor | FoldedMap) -> None:
        self.maps[key] = reduced
        # its dtype and device (not the map: dropped)
        values = reduced.values if isinstance(reduced, FoldedMap) else reduced
        self.reference = values.new_empty(0)
        self._advance()

    def takes(self, key: tuple[str, int]) -> bool:
        """Whether a map offered for ``key`` now is used at once (its step is the next to run
        and the step's other maps have arrived): it may be a
        :class:`~captum_hetattn.rules.folded.FoldedMap`, nothing else reads it."""
        if self.adjoint is None or self.next < 0:
            return False
        step = self.steps[self.next]
        if isinstance(step, TokenMap):
            return False
        keys = [(c.record.name, c.record.call_index) for c in step]
        return key in keys and all(k in self.maps for k in keys if k != key)

    def _advance(self) -> None:
        while self.adjoint is not None and self.next >= 0:
            step = self.steps[self.next]
            if not isinstance(step, TokenMap):
                keys = [(c.record.name, c.record.call_index) for c in step]
                if any(k not in self.maps for k in keys):
                    return  # a map of this step has not arrived yet
                step = [AttentionFlow(c.node.query, c.node.key, self.maps.pop(k), c.node.name,
                                      self.residuals.get(k)) for c, k in zip(step, keys,
                                                                              strict=True)]
            self.adjoint.step(step)
            self.next -= 1

    def result(self) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
        """The readout rows and the read tokens' own share within them
        (:meth:`~captum_hetattn.rules.adjoint.RowAdjoint.own`), or ``None`` where no step ran
        (the maps all wait in ``maps``)."""
        if self.adjoint is None or self.next >= 0 or self.reference is None:
            if self.next < len(self.steps) - 1 and any(
                    not isinstance(step, TokenMap) for step in self.steps[self.next + 1:]):
                # steps ran and dropped their maps, but some map never came: nothing to fall
                # back to (every bound call is reduced by the end of the pass)
                raise RuntimeError(
                    "the streaming adjoint stopped at step "
                    f"{self.next} of {len(self.steps)}: a bound call was never reduced")
            return None
        return self.adjoint.result(self.reference), self.adjoint.own(self.reference)


@contextlib.contextmanager
def streaming(
    capture: Capture, recording: BoundRecording, terminal: list[Terminal], readout: Readout,
    main_stream: str | None, method: Propagator, batch: int, *, wanted: bool,
) -> Iterator[None]:
    r"""Set up the streaming adjoint for one gradient pass where it applies: a linear
    propagator, ``wanted`` (no stage, no maps to return), and a readout known before the maps
    arrive (given, or read from the gradient of the one terminal stream, which arrives first).

    Args:
        capture: the reduce state, whose reduced maps go to the adjoint.
        recording: the bound recording.
        terminal: the terminal streams' outputs.
        readout: the ``readout`` argument.
        main_stream: the graph's readout stream.
        method: the call's propagator.
        batch: the batch size.
        wanted: whether the call can use the readout rows alone.
    """
    if not (wanted and method.linear):
        yield
        return
    given = known_readout(readout, main_stream, recording, batch)
    ends = terminal_names(recording)
    first = [each for each in terminal if each[0] in ends]  # the others: read if these die
    hooked = [out for _, out, _ in first if isinstance(out, Tensor) and out.requires_grad]
    if given is None and (readout is not None or len(first) != 1 or len(hooked) != 1):
        yield
        return
    stream = capture.stream = Streaming(recording, capture.residuals, method)
    handle = None
    if given is not None:
        stream.set_readout(given)
    else:
        def on_gradient(grad: Tensor) -> None:
            try:
                weights = gradient_readout(recording, first, [grad], batch)
            except ValueError:
                return  # no readout from this gradient: the full flows will say so
            stream.set_readout(weights)

        handle = hooked[0].register_hook(on_gradient)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
