r"""Process-wide state that recordings share: one recording of a model at a time (claims on its
modules and configs) and the ``nn.MultiheadAttention`` fast-path flag."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from captum_hetattn.capture.introspect import add_config
from captum_hetattn.capture.memo import modules_of


@dataclass(eq=False)
class Claim:
    r"""What a running recording holds: the objects it changes (kept alive while claimed, so
    that their ids stay theirs), the thread that entered it and its model's class name."""

    objects: list[Any]
    thread: int
    model: str


#: Guards :data:`_CLAIMS`; a recording that waits for a model waits on it.
_CLAIMS_CHANGED = threading.Condition()
#: ``id(object) -> claim`` for every module and config a running recording changes. Keyed by
#: ``id``: configs compare by value (two equal configs are still two objects).
_CLAIMS: dict[int, Claim] = {}


def _shared_objects(model: nn.Module) -> list[Any]:
    r"""The objects a recording of ``model`` changes: its modules (hooks) and their configs with
    their sub-configs (attention implementation). A second model that wraps some of the same
    modules, or that was built from the same config object, shares them."""
    found: dict[int, Any] = {}
    for module in modules_of(model):
        found.setdefault(id(module), module)
        add_config(found, getattr(module, "config", None))
    return list(found.values())


def claim(model: nn.Module) -> Claim:
    r"""Claim what a recording of ``model`` changes, waiting while another thread records any of
    it (its hooks would catch this thread's calls and the configs can name one recording only).

    All or nothing under one condition: two recordings never hold part of each other's objects,
    so waiting cannot deadlock.

    Args:
        model: the model about to be recorded.

    Returns:
        The claim, to :func:`release` when the recording has restored everything.

    Raises:
        RuntimeError: when this thread already records any of it: the inner recording would
            take the outer one's attention calls.
    """
    objects = _shared_objects(model)
    held_by_us = Claim(objects, threading.get_ident(), type(model).__name__)
    with _CLAIMS_CHANGED:
        while True:
            held = [c for o in objects if (c := _CLAIMS.get(id(o))) is not None]
            if not held:
                break
            own = next((c for c in held if c.thread == held_by_us.thread), None)
            if own is not None:
                what = (
                    f"{held_by_us.model} is" if own.model == held_by_us.model else
                    f"{held_by_us.model} shares modules or a config with {own.model}, which is"
                )
                raise RuntimeError(
                    f"{what} already being recorded in this thread by an AttentionRecorder that "
                    "has not exited: recordings of one model cannot be nested (the inner one "
                    "would take the outer one's attention calls); exit the first recording "
                    "before starting another (a recording from another thread waits for it)"
                )
            _CLAIMS_CHANGED.wait()
        for obj in objects:
            _CLAIMS[id(obj)] = held_by_us
    return held_by_us


def release(held: Claim) -> None:
    r"""Give up a claim and wake the recordings that wait for it."""
    with _CLAIMS_CHANGED:
        for obj in held.objects:
            if _CLAIMS.get(id(obj)) is held:
                del _CLAIMS[id(obj)]
        held.objects = []
        _CLAIMS_CHANGED.notify_all()


class FastPath:
    r"""The MHA fast-path flag is process-wide: the first recording that needs it off saves it,
    the last one to leave restores it (each recording saving and restoring its own would let
    the one that saved ``False``, entered while another had it off, restore last)."""

    lock = threading.Lock()
    users = 0
    before = True

    @classmethod
    @contextlib.contextmanager
    def disabled(cls) -> Iterator[None]:
        r"""The fast path off inside (for every thread), as it was after the last user left."""
        with cls.lock:
            if cls.users == 0:
                cls.before = torch.backends.mha.get_fastpath_enabled()
                torch.backends.mha.set_fastpath_enabled(False)
            cls.users += 1
        try:
            yield
        finally:
            with cls.lock:
                cls.users -= 1
                if cls.users == 0:
                    torch.backends.mha.set_fastpath_enabled(cls.before)
