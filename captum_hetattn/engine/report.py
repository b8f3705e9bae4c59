r"""What the engine tells the user without failing: every warning text, each said once per
explainer and subject (:class:`Report`)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch import Tensor

from captum_hetattn.binding import BoundRecording
from captum_hetattn.rules.ops import TokenMap

_PACKAGE = str(Path(__file__).resolve().parents[1])


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside the package (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def no_attention(model_name: str, reasons: Sequence[tuple[str, str]],
                 foreign: Sequence[str]) -> str:
    r"""The error text when the forward left no attention record of the model: which
    modules look like attention and why each gave none, or which other model's calls ran."""
    head = f"no attention call of {model_name} (model=) was recorded"
    if foreign:
        head += (f"; the attention calls forward_func made belong to another model "
                 f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, not "
                 f"modules of {model_name}): pass the model forward_func runs as model=")
    if not reasons:
        return head + f"; {model_name} has no module that looks like attention (a class " \
            "named *Attention* / *Attn*, nn.MultiheadAttention, or one using transformers' " \
            "AttentionInterface)"
    listed = "; ".join(f"'{name}': {why}" for name, why in reasons[:6])
    more = f" (and {len(reasons) - 6} more)" if len(reasons) > 6 else ""
    if not foreign and all(why == "it did not run in forward_func" for _, why in reasons):
        head += (f"; none of its {len(reasons)} attention modules ran: does forward_func run "
                 "another model? pass that one as model=")
    return f"{head}. Modules that look like attention: {listed}{more}"


class Report:
    r"""The warnings one explainer has given (each subject once)."""

    def __init__(self) -> None:
        self.warned: set[str] = set()

    def warn(self, key: str, message: str) -> None:
        """A ``UserWarning``, once per explainer and subject."""
        if key in self.warned:
            return
        self.warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=_user_stacklevel())

    def warn_each(
        self, kind: str, subjects: Sequence[str], message: Callable[[list[str]], str]
    ) -> None:
        """One ``UserWarning`` for the subjects not reported yet by this explainer (a message
        that names the first and counts them), not one per subject."""
        new = [s for s in dict.fromkeys(subjects) if f"{kind}:{s}" not in self.warned]
        if new:
            self.warned.update(f"{kind}:{s}" for s in new)
            warnings.warn(message(new), UserWarning, stacklevel=_user_stacklevel())

    # ------------------------------------------------------------------ before the forward
    def train_mode(self, model_name: str, dropout: str) -> None:
        self.warn("train-mode", (
            f"{model_name} is in train() mode with dropout active "
            f"({dropout}): every call drops different units, so the relevance is not "
            "deterministic; call model.eval() before explaining (the explainer leaves the "
            "mode as it is)"
        ))

    # ------------------------------------------------------------------ binding
    def left_out(self, name: str, reason: str) -> None:
        self.warn(f"left-out:{name}", (
            f"attention module '{name}' is left out of the explanation: {reason}"
        ))

    def preset_misfit(self, preset: str, model_name: str, err: Exception) -> None:
        self.warn(f"preset:{preset}", (
            f"the '{preset}' preset does not fit this "
            f"{model_name} ({err}); using a graph inferred from the "
            "data flow instead"
        ))

    def unbound(self, recording: BoundRecording, graph: str) -> None:
        self.warn_each("unbound", [record.name for record in recording.unbound], lambda new: (
            f"{len(new)} attention module(s) ran but the layer graph '{graph}' has no node for "
            f"them (first: '{new[0]}'), so they are left out of the explanation; add nodes (or "
            "pass graph=None to infer the graph)"
        ))

    def swapped(self, recording: BoundRecording) -> None:
        pairs = {f"{first.label} / {then.label}": (first, then)
                 for first, then in recording.swapped}

        def message(new: list[str]) -> str:
            first, then = pairs[new[0]]
            return (
                f"the layer graph lists {first.label} before {then.label}, but the model ran "
                f"the latter first ({len(new)} such pair(s)); they share no stream, so the "
                "relevance is the same in either order; list the nodes in call order"
            )

        self.warn_each("swapped", list(pairs), message)

    # ------------------------------------------------------------------ after the readout
    def no_gradient(
        self, recording: BoundRecording, readout: Mapping[str, Tensor],
        no_gradient: set[tuple[str, int]],
    ) -> None:
        """Calls whose maps got no gradient at all although the graph connects them to the
        readout: under a gradient correction their maps count as zero, so say so (a branch
        detached from the output, maps computed without grad?). Calls after the last use of
        their stream (LLaVA's last vision layer) get none by construction and are not named."""
        silent: list[str] = []
        for step, reached in _reach(recording, readout)[0]:
            silent += [c.record.name for c in step if c.node.query in reached
                       and (c.record.name, c.record.call_index) in no_gradient]
        self.warn_each("no-gradient", silent[::-1], lambda new: (
            f"attention module '{new[0]}' got no gradient from the objective"
            + (f" (and {len(new) - 1} more)" if len(new) > 1 else "")
            + ": under the gradient correction its maps count as zero, although the graph "
            "connects it to the readout (a score read before it ran, e.g. from "
            "hidden_states[-2] or an intermediate layer, which is explained where it reads; a "
            "branch detached from the output; or value vectors that are all zero?); "
            "correction='none' keeps them"
        ))

    def bypassed(self, recording: BoundRecording, streams: Sequence[str],
                 readout: Mapping[str, Tensor]) -> None:
        """Terminal streams whose final tokens get no gradient while a stream they read does:
        the readout is read there, and their calls are not connected to it (one warning)."""
        modules = [c.record.name for c in recording.calls if c.node.query in streams]
        self.warn_each("bypassed", list(dict.fromkeys(modules)), lambda new: (
            f"attention module '{new[0]}'"
            + (f" (and {len(new) - 1} more)" if len(new) > 1 else "")
            + f" of stream(s) {list(streams)} ran but got no gradient from the objective at "
            "its final tokens (a pooling head the output does not use?): it and its stream's "
            "tokens are not connected to the output (zero relevance), which is read where its "
            f"gradient arrives, stream(s) {sorted(readout)}"
        ))

    def unconnected(self, recording: BoundRecording, readout: Mapping[str, Tensor],
                    bypassed: Sequence[str] = ()) -> None:
        """Sources that no call or junction connects to the readout get zero relevance by
        construction: say so instead of returning a silent zero (sources of ``bypassed``
        streams: :meth:`bypassed` said so already)."""
        reached = _reach(recording, readout)[1]
        for name, source in recording.sources.items():
            if source.stream not in reached and source.stream not in bypassed:
                self.warn(f"unconnected:{name}", (
                    f"source '{name}' (stream '{source.stream}') gets zero relevance: no "
                    f"attention call or junction of the graph connects it to the readout "
                    f"stream(s) {sorted(readout)}"
                ))


def _reach(recording: BoundRecording, readout: Mapping[str, Tensor]
           ) -> tuple[list[tuple[list, frozenset[str]]], set[str]]:
    """Walk the steps back from the readout: each call step with the streams it can reach the
    readout from (before the step), and every stream reached in the end."""
    reached = set(readout)
    steps: list[tuple[list, frozenset[str]]] = []
    for step in reversed(recording.steps):
        if isinstance(step, TokenMap):
            if step.into in reached:
                reached.add(step.origin)
            continue
        steps.append((step, frozenset(reached)))
        reached.update(c.node.key for c in step if c.node.query in reached)
    return steps, reached
