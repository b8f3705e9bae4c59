r"""Which backend handles each module of a model: a pure decision, nothing installed.

:func:`plan_capture` reads the model's modules and returns a :class:`Plan`; the recorder's
backends then install what the plan says (hooks, the softmax mode, interface entries, configs).

Which modules are attention modules: those that route through transformers'
``AttentionInterface`` (their class reads ``ALL_ATTENTION_FUNCTIONS`` and their config has an
attention implementation), ``nn.MultiheadAttention`` instances, and modules whose class name
contains ``Attention`` or ``Attn``. With ``modules``, only modules inside the listed ones count,
and the listed ones are tracked themselves (their calls name the records).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from captum_hetattn.capture.introspect import (
    ATTENTION_CLASS_NAME,
    hf_eager_function,
    transformers_interfaces,
)
from captum_hetattn.capture.memo import modules_of, named_modules_of

__all__ = ["BACKENDS", "Plan", "listed_names", "plan_capture"]

BACKENDS: tuple[str, ...] = ("auto", "hf", "softmax", "mha")

Modules = dict[int, nn.Module]  # id(module) -> module, in model.named_modules() order


@dataclass(frozen=True)
class Plan:
    r"""What a recording installs, module by module (every dict maps ``id(module)`` to it).

    Args:
        names: qualified name of every module of the model.
        tracked: the modules whose calls are followed (pre- and post-hooks): every module a
            backend handles, and the listed ones.
        interface: modules recorded through the ``AttentionInterface`` (backend ``"hf"``).
        softmax: modules whose softmax the torch function mode records (backend
            ``"softmax"``); their configs say ``eager`` while recording.
        mha: ``nn.MultiheadAttention`` modules recorded through their weights (``"mha"``).
        eager: interface modules switched to ``eager`` so that they compute a softmax
            (``backend="softmax"``).
        mode: the modules while whose calls the softmax mode is on.
        listed: the ids of the listed modules (``modules=``), ``None`` without a list.
        backends: the backends in use (``"hf"``, ``"softmax"``, ``"mha"``).
        interfaces: ``(AttentionInterface, AttentionMaskInterface, eager_mask)`` when
            ``interface`` is not empty.
    """

    names: dict[int, str]
    tracked: Modules
    interface: Modules
    softmax: Modules
    mha: Modules
    eager: Modules
    mode: frozenset[int]
    listed: frozenset[int] | None
    backends: frozenset[str]
    interfaces: tuple[Any, Any, Any] | None = None


def listed_names(model: nn.Module, modules: Iterable[str] | str | None) -> frozenset[str] | None:
    r"""The module names of a ``modules=`` argument, checked against the model.

    Args:
        model: the model.
        modules: qualified module names (one name as a string), or ``None``.

    Returns:
        The names, ``None`` without a list.

    Raises:
        ValueError: when the model has no module of one of the names.
    """
    if modules is None:
        return None
    names = [modules] if isinstance(modules, str) else list(modules)
    known = {n for n, _ in model.named_modules()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"{type(model).__name__} has no module named {', '.join(map(repr, unknown))}"
        )
    return frozenset(names)


def _classify(model: nn.Module, listed: frozenset[str] | None) -> tuple[Modules, Modules, Modules]:
    """``(routed, mha, other)``: the attention modules in scope that route through the
    interface, the ``nn.MultiheadAttention`` ones and the hand-written ones."""
    named = dict(named_modules_of(model))
    if listed is None:
        in_scope = {id(m) for m in named.values()}
    else:
        in_scope = {id(m) for name in listed for m in named[name].modules()}
    routed: Modules = {}
    mha: Modules = {}
    other: Modules = {}
    for module in named.values():
        if id(module) not in in_scope:
            continue
        if isinstance(module, nn.MultiheadAttention):
            mha[id(module)] = module
        elif hf_eager_function(type(module)) is not None and hasattr(
            getattr(module, "config", None), "_attn_implementation_internal"
        ):
            routed[id(module)] = module
        elif ATTENTION_CLASS_NAME.search(type(module).__name__):
            other[id(module)] = module
    return routed, mha, other


def _check(backend: str, model: nn.Module, use_hf: bool, use_mha: bool) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "hf" and not use_hf:
        raise ValueError(
            f"backend='hf': no attention module of {type(model).__name__} dispatches "
            "through transformers' AttentionInterface; use backend='softmax' or 'auto'"
        )
    if backend == "mha" and not use_mha:
        raise ValueError(
            f"backend='mha': {type(model).__name__} has no torch.nn.MultiheadAttention "
            "module in scope; use backend='softmax' or 'auto'"
        )


def plan_capture(
    model: nn.Module, backend: str = "auto", modules: Iterable[str] | None = None
) -> Plan:
    r"""Decide which backend handles each module of ``model``; installs nothing.

    Args:
        model: the model.
        backend: ``"auto"``, ``"hf"``, ``"softmax"`` or ``"mha"`` (see
            :mod:`captum_hetattn.capture`).
        modules: optional qualified module names: only modules inside them are recorded.

    Returns:
        The :class:`Plan`.

    Raises:
        ValueError: for an unknown backend or module name, and when ``"hf"`` or ``"mha"`` finds
            no module to handle.
    """
    listed = listed_names(model, modules)
    routed, mha, other = _classify(model, listed)
    interfaces = transformers_interfaces() if routed else None
    if interfaces is None:
        other.update(routed)  # they only run their default (eager or sdpa) code
        routed = {}
    use_hf = backend in ("auto", "hf") and bool(routed)
    use_mha = backend in ("auto", "softmax", "mha") and bool(mha)
    _check(backend, model, use_hf, use_mha)
    softmax = dict(other)
    if backend == "softmax":
        softmax.update(routed)
    if backend == "auto":
        # Wrappers (BertAttention around BertSelfAttention) compute nothing themselves.
        handled = set(routed) | set(mha)
        if handled:  # (no walk of every softmax module's subtree when nothing is handled)
            softmax = {k: m for k, m in softmax.items()
                       if not any(id(s) in handled for s in m.modules())}
    use_softmax = backend == "softmax" or (backend == "auto" and bool(softmax))

    tracked: Modules = {}
    if use_hf:
        tracked.update(routed)
    if use_mha:
        tracked.update(mha)
    if use_softmax:
        tracked.update(softmax)
        tracked.update(other)
        if backend == "softmax":
            tracked.update(routed)
    listed_ids = None if listed is None else frozenset(
        id(m) for n, m in named_modules_of(model) if n in listed)
    if listed_ids is not None:
        tracked.update((id(m), m) for m in modules_of(model) if id(m) in listed_ids)
    # The mode puts every torch call through Python: it is only on while a module whose softmax
    # we want is running (about 45% slower forwards otherwise, on ViT-base).
    plain = set(mha) if backend == "softmax" else set(mha) | set(routed)
    return Plan(
        names={id(m): n for n, m in named_modules_of(model)},
        tracked=tracked,
        interface=routed if use_hf else {},
        softmax=softmax if use_softmax else {},
        mha=mha if use_mha else {},
        eager=routed if backend == "softmax" else {},
        mode=frozenset(set(tracked) - plain) if use_softmax else frozenset(),
        listed=listed_ids,
        backends=frozenset(
            b for b, on in (("hf", use_hf), ("softmax", use_softmax), ("mha", use_mha)) if on),
        interfaces=interfaces if use_hf else None,
    )
