r"""An exception the model raises during a recording stays the model's: the frames the recording
put between the model's code and what it called are dropped from its traceback."""

from __future__ import annotations

import os
import types

import torch

from captum_hetattn.capture.backends.interface import InterfaceBackend
from captum_hetattn.capture.backends.softmax import SoftmaxMode

#: Where the capture package's code lives: a frame called from an interception frame is the
#: recorder's own when its file is under here.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _is_ours(code: types.CodeType) -> bool:
    return os.path.abspath(code.co_filename).startswith(_PACKAGE_DIR)


def _without_interception(tb: types.TracebackType | None) -> types.TracebackType | None:
    r"""``tb`` without the frames that recording put between the model's code and what it
    called: the softmax mode's ``__torch_function__`` (with torch's ``handle_torch_function``
    that called it) and the interface function that runs the model file's eager attention.

    Only frames the exception passed through from outside the capture package are dropped: a
    frame of ``__torch_function__`` that is innermost raised in the torch function the model
    called (a shape error in its matmul); a failure of the recorder's own code keeps its frames.
    """
    # interception code -> may it be the innermost frame and still be dropped?
    passing = {SoftmaxMode.__torch_function__.__code__: True,
               InterfaceBackend._hf_attention.__code__: False}
    dispatcher = getattr(torch.overrides.handle_torch_function, "__code__", None)
    entries: list[types.TracebackType] = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    drop: set[int] = set()
    for i, entry in enumerate(entries):
        code = entry.tb_frame.f_code
        if code not in passing:
            continue
        inner = entries[i + 1].tb_frame.f_code if i + 1 < len(entries) else None
        if (inner is None and passing[code]) or (inner is not None and not _is_ours(inner)):
            drop.add(i)
            if i and entries[i - 1].tb_frame.f_code is dispatcher:
                drop.add(i - 1)
                # a Python torch function (F.softmax) dispatched to the mode, which ran it
                # again: keep the run that raised, as without the mode
                if i >= 2 and entries[i - 2].tb_frame.f_code is inner:
                    drop.add(i - 2)
    if not drop:
        return entries[0] if entries else None
    rebuilt = None
    for i in range(len(entries) - 1, -1, -1):
        if i not in drop:
            entry = entries[i]
            rebuilt = types.TracebackType(
                rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno
            )
    return rebuilt


def blame_the_model(exc: BaseException) -> None:
    r"""Drop the interception frames from an exception that left the model during a recording
    (and from the exceptions it was raised from), so that its innermost frame is the model's
    code, as without the recorder; type and message are untouched.

    Args:
        exc: the exception, changed in place.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = _without_interception(current.__traceback__)
        pending += [current.__cause__, current.__context__]
