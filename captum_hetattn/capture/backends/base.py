r"""What every capture backend is: made for one recording (its recorder and session), with an
``install(stack)`` that changes the model (or the process) until the recording's stack closes."""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

from captum_hetattn.capture.session import Session

if TYPE_CHECKING:
    from captum_hetattn.capture.recorder import AttentionRecorder


class Backend:
    r"""One way of capturing attention maps, for the modules the plan gives it.

    Args:
        recorder: the recorder the maps go to (``_add_map``, ``_keep``, ``_set_gradient``).
        session: the running recording (its plan, frames and flags).
    """

    def __init__(self, recorder: AttentionRecorder, session: Session) -> None:
        self.recorder = recorder
        self.session = session

    def install(self, stack: ExitStack) -> None:
        r"""Change what this backend needs changed, registering the undo on ``stack``."""
        raise NotImplementedError
