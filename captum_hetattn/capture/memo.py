r"""Answers about a module's structure kept between recordings of one explainer.

A recording asks a few questions whose answer follows from a module's code, submodules, hooks,
mode and call shapes rather than from the values it is handed — today: whether a hand-written
attention module that made no softmax mixes tokens (one backward pass through its graph per call,
34 per LXMERT-base forward). :class:`StructureMemo` keeps such an answer per module under a key
that holds everything the answer is read from (:func:`module_signature` plus the call's shapes):
a swapped submodule, another forward, a hook added or removed, train/eval, another attention
implementation or other shapes give another key, and the question is asked afresh.

Modules are held weakly (a dropped model frees its answers) and each keeps at most
:data:`PER_MODULE` answers (the oldest go first).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from torch import nn
from torch.nn.modules import module as _module_globals

__all__ = ["PER_MODULE", "StructureMemo", "module_signature", "modules_of", "named_modules_of",
           "walk_kept"]

#: answers kept per module (one per call signature: shapes, masks)
PER_MODULE = 16


def _forward_of(module: nn.Module) -> Any:
    """The function a call runs: an instance's own ``forward`` (patched) or the class's."""
    forward = module.__dict__.get("forward", type(module).forward)
    return getattr(forward, "__func__", forward)


def _hook_id(hook: Any) -> Any:
    """A hook as the same function each recording (a bound method of this recording's tracker,
    or a ``partial`` of one, is remade every call): its function and bound arguments."""
    if isinstance(hook, functools.partial):
        return (_hook_id(hook.func), hook.args)
    return getattr(hook, "__func__", hook)


def _hooks(sub: nn.Module) -> tuple[Any, ...]:
    return tuple(tuple(_hook_id(h) for h in hooks.values()) for hooks in (
        sub._forward_hooks, sub._forward_pre_hooks, sub._backward_hooks,
        getattr(sub, "_backward_pre_hooks", {})))


def module_signature(module: nn.Module) -> tuple[Any, ...]:
    r"""What a structural answer about ``module`` depends on besides its call's tensors: every
    submodule (identity, class, forward, mode, its hooks), the global module hooks, and the
    attention implementation its config names.

    A walk of the module's own subtree (a few modules for an attention block): cheap against
    the backward pass it replaces."""
    parts: list[Any] = []
    for sub in module.modules():
        parts.append((id(sub), type(sub), _forward_of(sub), sub.training, _hooks(sub)))
    config = getattr(module, "config", None)
    parts.append(getattr(config, "_attn_implementation", None))
    parts.append(tuple(tuple(_hook_id(h) for h in hooks.values()) for hooks in (
        _module_globals._global_forward_hooks, _module_globals._global_forward_pre_hooks)))
    return tuple(parts)


class StructureMemo:
    r"""Per-module answers under keys that hold what each answer is read from (see the module
    docstring); one per explainer."""

    def __init__(self) -> None:
        self._answers: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = (
            weakref.WeakKeyDictionary())
        self.hits = 0
        self.misses = 0

    def get(self, module: nn.Module, key: Any) -> Any:
        """The answer kept for ``module`` under ``key``, else ``None``."""
        found = self._answers.get(module, {}).get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, module: nn.Module, key: Any, value: Any) -> None:
        """Keep ``value`` (not ``None``) for ``module`` under ``key``."""
        answers = self._answers.setdefault(module, {})
        answers[key] = value
        while len(answers) > PER_MODULE:
            answers.pop(next(iter(answers)))

    def clear(self) -> None:
        """Forget every answer."""
        self._answers.clear()


# ------------------------------------------------------------------------------------------
# one walk of the model's modules while a recording installs itself

_KEPT = threading.local()  # per thread: id(model) -> (model, its named modules)


@contextlib.contextmanager
def walk_kept(model: nn.Module) -> Iterator[None]:
    r"""While on, :func:`named_modules_of` / :func:`modules_of` of ``model`` (in this thread)
    read one walk of its modules, taken now, instead of walking again: a recording's set-up
    walks the model about ten times (plan, hooks, claims, configs; ~0.9 ms a walk for
    LXMERT-base's 505 modules). Nothing adds or removes modules while a recording installs
    its hooks; a block running the model (which may build modules lazily) is not meant."""
    kept = getattr(_KEPT, "walks", None)
    if kept is None:
        kept = _KEPT.walks = {}
    if id(model) in kept:  # an enclosing block keeps it already
        yield
        return
    kept[id(model)] = (model, tuple(model.named_modules()))
    try:
        yield
    finally:
        kept.pop(id(model), None)


def named_modules_of(model: nn.Module) -> tuple[tuple[str, nn.Module], ...]:
    """``tuple(model.named_modules())``, from the walk kept by :func:`walk_kept` if any."""
    found = getattr(_KEPT, "walks", {}).get(id(model))
    if found is not None and found[0] is model:
        return found[1]
    return tuple(model.named_modules())


def modules_of(model: nn.Module) -> list[nn.Module]:
    """``list(model.modules())``, from the walk kept by :func:`walk_kept` if any."""
    return [module for _, module in named_modules_of(model)]
