r"""Record attention probabilities and their gradients during one forward and one backward.

:class:`AttentionRecorder` is a context manager over a model. Inside it, every attention call the
model makes is recorded as an :class:`AttentionRecord`: the qualified name of the module that
computed it, how many times that module ran before in this recording (``call_index``), whether it
was self- or cross-attention (``role``), the post-softmax probabilities ``A`` of shape
``(batch, heads, n_query, n_key)`` and, after a backward, ``G = d objective / d A`` (zeros for a
map that is not on the path to the objective).

Backends (``backend="auto"`` combines them, each module is handled by exactly one):

- ``"hf"``: transformers models whose attention modules dispatch through
  ``ALL_ATTENTION_FUNCTIONS`` (the model files that define ``eager_attention_forward``). A
  function is registered in ``transformers.AttentionInterface`` (and the eager mask function in
  ``AttentionMaskInterface``, otherwise causal masks are silently dropped) under a neutral key
  that is then set as the attention implementation of the configs those modules read. The
  function delegates to the model file's *own* eager attention (the default that the module
  passes to ``get_interface``), so position biases, GQA or soft-capping stay exact, and records
  the weights that function returns (the tensor the attention output is computed from).
- ``"softmax"``: hand-written attention (LXMERT, VisualBERT, ViLT, BLIP, Perceiver, custom
  modules): a :class:`torch.overrides.TorchFunctionMode` catches ``F.softmax``,
  ``torch.softmax``, ``Tensor.softmax`` and ``nn.Softmax`` and gives each 4-D softmax over the
  last dimension to the innermost attention module running at that moment (a 3-D
  ``(batch * heads, n_q, n_k)`` softmax is accepted when the module tells its head count).
  Deformable attention's sampling-weight softmax is skipped. Modules that route through the
  ``AttentionInterface`` are switched to ``"eager"`` for the recording so that they compute a
  softmax too; ``nn.MultiheadAttention`` is handled as in ``"mha"``.
- ``"mha"``: :class:`torch.nn.MultiheadAttention`. While recording, its calls get
  ``need_weights=True, average_attn_weights=False`` (so the non-fused path runs and keeps the
  heads), the returned weights are recorded through their base tensor (the softmax output that
  the attention output is computed from; the returned view itself is off the gradient path) and
  the caller gets exactly what it asked for (no weights, or head-averaged weights). The
  ``nn.TransformerEncoder`` fast path and nested-tensor path are disabled while recording.

Which modules are attention modules: those that route through the ``AttentionInterface``,
``nn.MultiheadAttention`` instances, and modules whose class name contains ``Attention`` or
``Attn``. When ``modules`` is given, only calls inside those modules are recorded and each is
named after the innermost listed module running at that moment.

Role rule (``"self"`` or ``"cross"``), decided per call from the arguments of the module that
owns the call, captured by a forward pre-hook: if the module was given a key/value input under
one of the names in :data:`CROSS_INPUT_NAMES` (``encoder_hidden_states``, ``key_value_states``,
``context``, MHA's ``key``, ...), the call is cross-attention exactly when that input is a tensor
that *is not the same object* as the query input (the first argument). LXMERT's
``LxmertAttention(x, x)`` is therefore self-attention and ``LxmertAttention(x, y)`` cross. If the
module takes no such input, its ``is_cross_attention`` attribute decides, else ``"self"``. Only
when no module information is available at all does ``n_query != n_key`` decide.

Gradients arrive through tensor hooks registered on every recorded map, so a plain
``objective.backward()`` inside the context fills ``record.gradient``; at the end of that backward
(and at the latest when the context exits) maps that got no gradient get zeros.
:meth:`AttentionRecorder.compute_gradients` is the fast path: ``torch.autograd.grad`` to the maps
only, no parameter gradient, ``.grad`` never touched.

Activation checkpointing re-runs attention during the backward. A map produced while a backward
is running is treated as such a recomputation: it is merged into the earlier record of the same
module (the one with an identical map, else the first not yet merged) instead of creating a new
record; if the original map was produced without grad (reentrant checkpointing) the recomputed
map feeds the original record's gradient.

Everything is restored on exit, also when the forward or the backward raised: module hooks,
tensor hooks, the torch function mode, attention implementations, the registered interface
entries and the MHA fast-path flag. ``training`` and ``requires_grad`` are never changed.

Limits, by design:

- One gradient pass per recording for ``.backward()`` (a second backward overwrites the maps it
  reaches); ``compute_gradients`` may be called again with ``retain_graph=True`` (each call
  overwrites every gradient) unless ``reduce`` already consumed them.
- In training mode with attention dropout, interface and softmax maps are taken before the
  dropout; an ``nn.MultiheadAttention`` map is taken after it (its softmax output is not
  reachable). Attribution is meant for ``eval()`` models, where dropout is the identity.
- One recording of a model at a time (of its modules and configs, which a wrapping model
  shares): a recording from another thread waits until the running one has exited, a nested
  one in the same thread raises ``RuntimeError`` (the inner one would take the outer one's
  calls). Different models are recorded concurrently. A plain forward of the model from another
  thread *during* a recording is not guarded: it would run through the recording's hooks.
- An exception the model raises inside the context propagates unchanged, without the
  interception frames (``__torch_function__``, the interface function) between the model's
  code and the call that failed.
- ``compute_gradients`` cannot run through reentrant checkpointing (``torch.autograd.grad``
  refuses it); use ``.backward()`` there.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from inspect import Parameter, Signature, signature
from itertools import count
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from captum_hetattn.flash import FlashAttention, attention_map

__all__ = [
    "BACKENDS",
    "CROSS_INPUT_NAMES",
    "AttentionRecord",
    "AttentionRecorder",
]

BACKENDS: tuple[str, ...] = ("auto", "hf", "softmax", "mha")

#: Argument names under which attention modules receive the key/value sequence.
CROSS_INPUT_NAMES: tuple[str, ...] = (
    "encoder_hidden_states",
    "key_value_states",
    "cross_attention_states",
    "context",
    "inputs",
    "key",
    "key_states",
    "memory",
    "encoder_outputs",
)

_ATTENTION_CLASS_NAME = re.compile(r"Attention|Attn")
_HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_SOFTMAX_NAMES = frozenset({"softmax", "special_softmax", "_softmax"})
_SOFTMAX_FUNCTIONS = frozenset(
    {torch.nn.functional.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax}
)
_KEY_COUNTER = count()
#: map entries per chunk of heads in a flash call's backward (64 MB of float32)
FLASH_BUDGET = 2**24
_SDPA = torch.nn.functional.scaled_dot_product_attention


@dataclass(eq=False)
class AttentionRecord:
    r"""One attention call recorded by :class:`AttentionRecorder`.

    Args:
        name: qualified module name, as in ``model.named_modules()``.
        call_index: 0 for the first call of that module in this recording, 1 for the second...
        role: ``"self"`` or ``"cross"`` (see the module docstring for the rule).
        attention: post-softmax probabilities ``(batch, heads, n_query, n_key)``, detached
            (it shares storage with the live map: don't modify it in place); ``None`` once
            ``reduce`` has consumed it.
        gradient: ``d objective / d attention``, same shape; zeros when the map got no gradient;
            ``None`` before the backward and once ``reduce`` has consumed it.
        reduced: the value of the recorder's ``reduce`` callable on this record, if given.
        shape: shape of the map, kept when ``attention`` is dropped.
        query_input, key_input, output: with ``record_io=True``, the live (graph-attached)
            tensors the attention module was called with (its hidden states; ``key_input``
            is ``None`` for self-attention) and its output; set inside the recorder's context
            only, for data-flow analysis.
        token_dim: the token dimension of those tensors (1; 0 for a sequence-first
            ``nn.MultiheadAttention`` and for unbatched 2-D hidden states; 2 for per-head
            ``(B, H, n, d)`` inputs); ``key_token_dim`` the same for ``key_input``.
        nodes: the autograd nodes of those tensors (``"query"``, ``"key"``, ``"output"``) as
            they were when the call ran (a later in-place write, such as image features written
            into an embedding tensor, moves a tensor's ``grad_fn``).
        call_id: which module call made this map (maps of one call share it: a packed vision
            tower's per-image maps, a local attention's band and global maps).
        layout: set by :func:`~captum_hetattn.layouts.canonicalise` on a call whose maps are
            not one dense ``(batch, heads, n_query, n_key)`` map over its hidden states
            (windows, bands, blocks, packed sequences): the
            :class:`~captum_hetattn.layouts.TokenLayout` that folds ``parts`` (the raw maps,
            each a record of its own) into this record's dense map, which then holds
            ``attention`` / ``gradient`` folded once every part has its gradient.
        parts: the raw records of a call with a ``layout``.
        part_of: on a raw record, the call record it is a part of.
        states: with ``record_io``, the per-head query and key states ``(B', H, n, d)`` the
            attention function was handed (interface calls), for layouts.
        recompute: on a flash record (``flash=True``) before its gradient arrived, a function
            that computes its map (no grad) from the saved queries and keys.
        scores, linears, raw: with ``record_io``, for a softmax caught in a hand-written
            module: the softmax input, the ``F.linear`` outputs its module computed before it
            (the projections its slots are read from), and whether the map is not laid out as
            ``(batch, heads, n_query, n_key)`` (banded, blocked).
        contexts: with ``record_io``, the enclosing modules running when the call was made,
            innermost first (their input and output: the token order a windowed call permutes).
    """

    name: str
    call_index: int
    role: str
    attention: Tensor | None
    gradient: Tensor | None
    reduced: Tensor | None = None
    shape: tuple[int, ...] = field(default=(), repr=True)
    query_input: Tensor | None = field(default=None, repr=False)
    key_input: Tensor | None = field(default=None, repr=False)
    output: Tensor | None = field(default=None, repr=False)
    token_dim: int = 1
    nodes: dict[str, Any] = field(default_factory=dict, repr=False)
    key_token_dim: int = 1
    call_id: int = -1
    layout: Any = field(default=None, repr=False)
    parts: list[AttentionRecord] = field(default_factory=list, repr=False)
    part_of: AttentionRecord | None = field(default=None, repr=False)
    states: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    contexts: list[Context] = field(default_factory=list, repr=False)
    scores: Tensor | None = field(default=None, repr=False)
    linears: list[Tensor] = field(default_factory=list, repr=False)
    raw: bool = False
    heads: int | None = None
    recompute: Callable[[], Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.shape and self.attention is not None:
            self.shape = tuple(self.attention.shape)

    @property
    def batch_size(self) -> int:
        r"""Batch size of the map."""
        return self.shape[0]

    @property
    def num_heads(self) -> int:
        r"""Number of heads of the map."""
        return self.shape[1]

    @property
    def n_query(self) -> int:
        r"""Number of query tokens."""
        return self.shape[-2]

    @property
    def n_key(self) -> int:
        r"""Number of key tokens."""
        return self.shape[-1]


@dataclass(eq=False)
class Context:
    r"""A module enclosing attention calls, as it ran (``record_io``): its first tensor
    argument and its output, with their autograd nodes at call time."""

    name: str
    input: Tensor | None
    input_node: Any = None
    output: Tensor | None = None
    output_node: Any = None


@dataclass(eq=False)
class _Entry:
    """Bookkeeping for one record: its live map and the identity of the module that owns it."""

    record: AttentionRecord
    live: Tensor
    owner_id: int
    has_live_grad: bool
    merged_recompute: bool = False
    flash: bool = False  # the map arrives from the backward (FlashAttention's sink)
    buffer: tuple[Tensor, Tensor] | None = None  # a flash map's chunks, assembled
    shaped: Tensor | None = None  # the record's map as first recorded (for another pass)
    recompute: Callable[[], Tensor] | None = None  # a flash record's, for another pass


@dataclass
class _Frame:
    """One running tracked module: what its pre-hook learned about the call."""

    module: nn.Module
    role_hint: str | None
    mha_request: tuple[bool, bool] | None = None
    query_input: Tensor | None = None
    key_input: Tensor | None = None
    nodes: dict[str, Any] = field(default_factory=dict)
    others: list[Tensor] = field(default_factory=list)  # further float tensor arguments
    inner_key: Tensor | None = None  # per-head key states seen by the attention interface
    records: list[AttentionRecord] = field(default_factory=list)
    call_id: int = -1
    contexts: list[Context] = field(default_factory=list)
    linears: list[Tensor] = field(default_factory=list)  # F.linear outputs (record_io)


# --------------------------------------------------------------------------------------------
# Inspecting modules (cached per class: the answers depend on code, not on instances)
# --------------------------------------------------------------------------------------------


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _class_code(cls: type) -> Iterator[tuple[type, types.CodeType]]:
    """Code objects of the functions defined by the classes of ``cls``'s MRO (below nn.Module)."""
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        for attr in vars(klass).values():
            func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
            if callable(func):  # through decorators (transformers' @deprecate_kwarg on forward)
                func = inspect.unwrap(func)
            code = getattr(func, "__code__", None)
            if isinstance(code, types.CodeType):
                for sub in _code_objects(code):
                    yield klass, sub


@functools.cache
def _hf_eager_function(cls: type) -> Callable[..., Any] | None:
    r"""The eager attention function a transformers attention class falls back to, or ``None``.

    A class routes through the ``AttentionInterface`` when one of its methods reads
    ``ALL_ATTENTION_FUNCTIONS``; the default it hands to ``get_interface`` is a global of its
    model file whose name contains ``eager`` (``eager_attention_forward`` in ~440 files,
    ``simple_eager_attention_forward`` and a few others elsewhere). Inspecting ``co_names`` is
    cheap and needs no source file.
    """
    if hasattr(cls, "_can_set_attn_implementation"):
        return None  # a PreTrainedModel: it reads the registry, it doesn't compute attention
    fallback: Callable[..., Any] | None = None
    for klass, code in _class_code(cls):
        if klass.__module__.startswith("transformers.") and not klass.__module__.startswith(
            "transformers.models."
        ):
            continue  # library base classes, not a model file
        if "ALL_ATTENTION_FUNCTIONS" not in code.co_names:
            continue
        namespace = vars(sys.modules.get(klass.__module__, types.ModuleType("_")))
        candidates = [
            n for n in code.co_names if "eager" in n and callable(namespace.get(n))
        ]
        if candidates:
            name = "eager_attention_forward" if "eager_attention_forward" in candidates else None
            return namespace[name or candidates[0]]
        if fallback is None and callable(namespace.get("eager_attention_forward")):
            fallback = namespace["eager_attention_forward"]
    return fallback


@functools.cache
def _forward_signature(cls: type) -> Signature | None:
    try:
        return signature(cls.forward)
    except (TypeError, ValueError):
        return None


def _bind_call(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """Arguments of one ``module.forward`` call by parameter name (``**kwargs`` flattened)."""
    sig = _forward_signature(type(module))
    if sig is None:
        return None
    try:
        bound = sig.bind(module, *args, **kwargs)
    except TypeError:
        return None
    arguments = dict(bound.arguments)
    for param in sig.parameters.values():
        if param.kind is Parameter.VAR_KEYWORD and param.name in arguments:
            arguments.update(arguments.pop(param.name))
    arguments.pop(next(iter(sig.parameters)), None)  # `self`
    return arguments


def _call_inputs(
    module: nn.Module, args: tuple, kwargs: dict
) -> tuple[str | None, Tensor | None, Tensor | None]:
    r"""``(role hint, query input, key input)`` of one attention-module call.

    The role hint is ``"cross"``/``"self"`` from the call's arguments, ``None`` if they don't
    tell: cross-attention when a key/value input (a name in :data:`CROSS_INPUT_NAMES`) is a
    tensor that is not the query input object itself. The query input is the first argument,
    the key input that key/value tensor (``None`` for self-attention).
    """
    arguments = _bind_call(module, args, kwargs)
    if arguments is None:
        arguments = dict(kwargs)
        query = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
    else:
        query = next(iter(arguments.values()), None)
    query = query if isinstance(query, Tensor) else None
    present = [n for n in CROSS_INPUT_NAMES if n in arguments]
    if not present:
        return None, query, None
    for name in present:
        value = arguments[name]
        if isinstance(value, Tensor) and value is not query:
            return "cross", query, value
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
            return "cross", query, value[0]  # e.g. encoder_outputs given as a tuple
    return "self", query, None


def autograd_node(tensor: Tensor | None) -> Any:
    """The autograd node a tensor's gradient flows into now (``AccumulateGrad`` for a leaf that
    requires grad), or ``None``."""
    if not isinstance(tensor, Tensor):
        return None
    if tensor.grad_fn is not None:
        return tensor.grad_fn
    if tensor.requires_grad and torch.is_grad_enabled():  # (a view made under no_grad has none)
        return tensor.view_as(tensor).grad_fn.next_functions[0][0]
    return None


def _token_dim(module: nn.Module, hidden: Tensor | None, n_tokens: int | None = None) -> int:
    """Where the tokens are in a module's hidden states: sequence-first MHA and packed 2-D
    inputs have them first; per-head ``(B, H, n, d)`` inputs (a module handed projected
    queries) third."""
    if hidden is not None and hidden.dim() == 2:
        return 0
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first:
        return 0
    if (hidden is not None and hidden.dim() == 4 and n_tokens is not None
            and hidden.shape[2] == n_tokens and hidden.shape[1] != n_tokens):
        return 2
    return 1


def _token_count_at(tensor: Tensor, token_dim: int) -> int:
    if token_dim == 1 and tensor.dim() >= 4:  # a channels-last grid (B, h, w, C)
        return math.prod(tensor.shape[1:-1])
    return tensor.shape[0 if tensor.dim() == 2 and token_dim == 0 else token_dim]


def _head_count(module: nn.Module) -> int | None:
    for attr in _HEAD_COUNT_ATTRIBUTES:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _is_sampling_attention(module: nn.Module) -> bool:
    """Deformable attention: its softmax weighs sampling points, not tokens."""
    return "Deformable" in type(module).__name__ or hasattr(module, "sampling_offsets")


def _softmax_dim(func: Callable[..., Any], args: tuple, kwargs: dict) -> int | None:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return dim if isinstance(dim, int) else None


def _is_softmax(func: Callable[..., Any]) -> bool:
    try:
        if func in _SOFTMAX_FUNCTIONS:
            return True
    except TypeError:  # unhashable callables
        return False
    return getattr(func, "__name__", "") in _SOFTMAX_NAMES


class _SoftmaxMode(TorchFunctionMode):
    """Calls ``callback(output, dim, input)`` after every softmax run while the mode is active
    (and ``on_linear(output)`` after every ``F.linear``, when given)."""

    def __init__(
        self,
        callback: Callable[[Tensor, int, Any], None],
        on_linear: Callable[[Tensor], None] | None = None,
        on_fused: Callable[[Tensor], None] | None = None,
    ) -> None:
        super().__init__()
        self._callback = callback
        self._on_linear = on_linear
        self._on_fused = on_fused

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, Tensor) and _is_softmax(func):
            dim = _softmax_dim(func, args, kwargs)
            if dim is not None:
                self._callback(out, dim, args[0] if args else kwargs.get("input"))
        elif self._on_linear is not None and func is torch.nn.functional.linear:
            self._on_linear(out)
        elif self._on_fused is not None and func is _SDPA and isinstance(out, Tensor):
            self._on_fused(out)
        return out


# --------------------------------------------------------------------------------------------
# One recording of a model at a time; process-wide state shared by recordings
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Claim:
    """What a running recording holds: the objects it changes (kept alive while claimed, so that
    their ids stay theirs), the thread that entered it and its model's class name."""

    objects: list[Any]
    thread: int
    model: str


#: Guards :data:`_CLAIMS`; a recording that waits for a model waits on it.
_CLAIMS_CHANGED = threading.Condition()
#: ``id(object) -> claim`` for every module and config a running recording changes. Keyed by
#: ``id``: configs compare by value (two equal configs are still two objects).
_CLAIMS: dict[int, _Claim] = {}


def _shared_objects(model: nn.Module) -> list[Any]:
    r"""The objects a recording of ``model`` changes: its modules (hooks) and their configs with
    their sub-configs (attention implementation). A second model that wraps some of the same
    modules, or that was built from the same config object, shares them."""
    found: dict[int, Any] = {}

    def add_config(cfg: Any) -> None:
        if cfg is None or id(cfg) in found or not hasattr(cfg, "_attn_implementation_internal"):
            return
        found[id(cfg)] = cfg
        for key in getattr(cfg, "sub_configs", {}) or {}:
            add_config(getattr(cfg, key, None))

    for module in model.modules():
        found.setdefault(id(module), module)
        add_config(getattr(module, "config", None))
    return list(found.values())


def _claim(model: nn.Module) -> _Claim:
    r"""Claim what a recording of ``model`` changes, waiting while another thread records any of
    it (its hooks would catch this thread's calls and the configs can name one recording only).

    All or nothing under one condition: two recordings never hold part of each other's objects,
    so waiting cannot deadlock. Raises when this thread already records any of it: the inner
    recording would take the outer one's attention calls.
    """
    objects = _shared_objects(model)
    claim = _Claim(objects, threading.get_ident(), type(model).__name__)
    with _CLAIMS_CHANGED:
        while True:
            held = [c for o in objects if (c := _CLAIMS.get(id(o))) is not None]
            if not held:
                break
            own = next((c for c in held if c.thread == claim.thread), None)
            if own is not None:
                what = (
                    f"{claim.model} is" if own.model == claim.model else
                    f"{claim.model} shares modules or a config with {own.model}, which is"
                )
                raise RuntimeError(
                    f"{what} already being recorded in this thread by an AttentionRecorder that "
                    "has not exited: recordings of one model cannot be nested (the inner one "
                    "would take the outer one's attention calls); exit the first recording "
                    "before starting another (a recording from another thread waits for it)"
                )
            _CLAIMS_CHANGED.wait()
        for obj in objects:
            _CLAIMS[id(obj)] = claim
    return claim


def _release(claim: _Claim) -> None:
    with _CLAIMS_CHANGED:
        for obj in claim.objects:
            if _CLAIMS.get(id(obj)) is claim:
                del _CLAIMS[id(obj)]
        claim.objects = []
        _CLAIMS_CHANGED.notify_all()


class _FastPath:
    r"""The MHA fast-path flag is process-wide: the first recording that needs it off saves it,
    the last one to leave restores it (each recording saving and restoring its own would let
    the one that saved ``False``, entered while another had it off, restore last)."""

    lock = threading.Lock()
    users = 0
    before = True

    @classmethod
    @contextlib.contextmanager
    def disabled(cls) -> Iterator[None]:
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


def _without_interception(tb: types.TracebackType | None) -> types.TracebackType | None:
    r"""``tb`` without the frames that recording put between the model's code and what it
    called: the softmax mode's ``__torch_function__`` (with torch's ``handle_torch_function``
    that called it) and the interface function that runs the model file's eager attention.

    Only frames the exception passed through from outside this file are dropped: a frame of
    ``__torch_function__`` that is innermost raised in the torch function the model called (a
    shape error in its matmul); a failure of the recorder's own code keeps its frames.
    """
    mode_code = _SoftmaxMode.__torch_function__.__code__
    here = mode_code.co_filename
    passing = {mode_code: True, AttentionRecorder._hf_attention.__code__: False}  # innermost ok?
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
        if (inner is None and passing[code]) or (inner is not None and inner.co_filename != here):
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


def _blame_the_model(exc: BaseException) -> None:
    r"""Drop the interception frames from an exception that left the model during a recording
    (and from the exceptions it was raised from), so that its innermost frame is the model's
    code, as without the recorder; type and message are untouched."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = _without_interception(current.__traceback__)
        pending += [current.__cause__, current.__context__]


def _transformers_interfaces() -> tuple[Any, Any, Callable[..., Any] | None] | None:
    r"""``(AttentionInterface, AttentionMaskInterface, eager_mask)``, ``None`` without the
    attention registry; the mask entries are ``None`` before transformers 4.53 (no mask
    registry: those versions build masks in the model files)."""
    if "transformers" not in sys.modules:
        return None  # a model built from transformers would have imported it already
    try:
        from transformers.modeling_utils import AttentionInterface
    except ImportError:  # pragma: no cover - very old transformers
        return None
    try:
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:  # pragma: no cover - transformers < 4.53
        return AttentionInterface, None, None
    return AttentionInterface, AttentionMaskInterface, eager_mask


def _configs_of(model: nn.Module, routed: dict[int, nn.Module]) -> list[Any]:
    r"""Configs that must name the recording implementation.

    The ``config`` of every routed module (it selects the attention function), the ``config`` of
    every model that contains one (it selects the mask function: a mismatch silently drops causal
    masks), and their sub-configs.
    """
    found: dict[int, Any] = {}

    def add(cfg: Any) -> None:
        if cfg is None or id(cfg) in found or not hasattr(cfg, "_attn_implementation_internal"):
            return
        found[id(cfg)] = cfg
        for key in getattr(cfg, "sub_configs", {}) or {}:
            add(getattr(cfg, key, None))

    routed_ids = set(routed)
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is None:
            continue
        if id(module) in routed_ids or any(id(m) in routed_ids for m in module.modules()):
            add(cfg)
    return list(found.values())


# --------------------------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------------------------


class AttentionRecorder:
    r"""Context manager that records attention maps ``A`` and their gradients ``G``.

    Args:
        model: the model (any ``nn.Module``; transformers models and plain torch models).
        backend: ``"auto"`` (default), ``"hf"``, ``"softmax"`` or ``"mha"``; see the module
            docstring. ``"auto"`` uses the ``AttentionInterface`` for the modules that route
            through it, MHA capture for ``nn.MultiheadAttention`` and softmax interception for
            the remaining attention modules (the torch function mode is only installed when such
            modules exist, and only active while one of them runs).
        reduce: optional callable on a complete record (``attention`` and ``gradient`` set); as
            soon as a record's gradient is known (zeros included) its value is stored in
            ``record.reduced`` and ``attention``/``gradient`` are dropped to save memory.
        modules: optional qualified module names; only calls inside these modules are recorded,
            each under the name of the innermost listed module running.
        record_io: keep each call's live input and output tensors on its record and the calls of
            every ``nn.Embedding`` in :attr:`embeddings` (inside the context), for
            :mod:`~captum_hetattn.dataflow`.
        flash: modules that use the transformers attention interface run
            ``F.scaled_dot_product_attention`` in the forward and their maps are built inside
            the backward (:mod:`~captum_hetattn.flash`): no map is kept between the forward and
            the backward. The first call of each attention class is checked against its eager
            function (outputs equal), else that class is captured eagerly; so are calls with
            dropout in training, soft-capping, attention sinks or a head mask, and
            everything under activation checkpointing. A flash record has no ``attention``
            until its gradient arrives (``recompute()`` gives it earlier) and its entry in
            :attr:`maps` is a scalar probe.
        reduce_heads: with ``flash``, optional ``reduce_heads(record, A, G, first_head, heads)``
            called with chunks of a flash call's heads (at most ``flash_budget`` map entries
            per chunk) in its backward: it returns the record's reduced value with the last
            chunk (``None`` before), or ``NotImplemented`` for a record it cannot reduce by
            chunks (whose chunks are then assembled and given to ``reduce``).
        flash_budget: map entries (``B · chunk · n_q · n_k``) per chunk with ``reduce_heads``
            (default :data:`FLASH_BUDGET`).

    Attributes:
        records: :class:`AttentionRecord` per attention call, in call order.
        maps: the live (graph-attached) attention tensors in call order, for
            ``torch.autograd.grad``; valid inside the context (emptied on exit). A map of
            ``nn.MultiheadAttention`` (or of a 3-D softmax) is ``(batch * heads, n_q, n_k)``;
            its record is reshaped to 4-D.
        active_backends: the backends the last ``__enter__`` installed (``"hf"``,
            ``"softmax"``, ``"mha"``).
        embeddings: with ``record_io``, ``(module name, input ids, output, output's autograd
            node)`` of every ``nn.Embedding`` call, in call order (emptied on exit).
        skipped: with ``record_io``, ``(module name, reason)`` of softmaxes inside attention
            modules that were not recorded (pooling or sampling weights, another dimension).

    Examples::

        >>> with AttentionRecorder(model) as rec:
        ...     out = model(**inputs)
        ...     out.logits[:, 3].sum().backward()          # usage A: hooks fill the gradients
        >>> with AttentionRecorder(model) as rec:
        ...     out = model(**inputs)
        ...     rec.compute_gradients(out.logits[:, 3])    # usage B: no parameter gradients
        >>> [(r.name, r.call_index, r.role, r.attention.shape) for r in rec.records]
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        backend: str = "auto",
        reduce: Callable[[AttentionRecord], Tensor] | None = None,
        modules: Iterable[str] | None = None,
        record_io: bool = False,
        flash: bool = False,
        reduce_heads: Callable[[AttentionRecord, Tensor, Tensor, int, int], Any] | None = None,
        flash_budget: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"AttentionRecorder needs a torch.nn.Module, got {type(model).__name__}"
            )
        self.record_io = record_io
        self.flash = flash
        self.reduce_heads = reduce_heads
        #: keep layouts after a reduce, for another gradient pass (:meth:`rearm`)
        self.keep_layouts = False
        self.flash_budget = FLASH_BUDGET if flash_budget is None else int(flash_budget)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if reduce is not None and not callable(reduce):
            raise TypeError(f"reduce must be callable or None, got {type(reduce).__name__}")
        self.model = model
        self.backend = backend
        self.reduce = reduce
        self.modules: frozenset[str] | None = None
        if modules is not None:
            if isinstance(modules, str):
                modules = [modules]
            names = list(modules)
            known = {n for n, _ in model.named_modules()}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(
                    f"{type(model).__name__} has no module named {', '.join(map(repr, unknown))}"
                )
            self.modules = frozenset(names)
        self.records: list[AttentionRecord] = []
        self.maps: list[Tensor] = []
        self.embeddings: list[tuple[str, Tensor, Tensor, Any]] = []
        self.skipped: list[tuple[str, str]] = []
        self.active_backends: frozenset[str] = frozenset()
        self._entries: list[_Entry] = []
        self._stack: ExitStack | None = None

    # ---------------------------------------------------------------- context management

    def __enter__(self) -> AttentionRecorder:
        if self._stack is not None:
            raise RuntimeError("this AttentionRecorder is already active")
        # Waits while another thread records this model (its hooks and configs are shared),
        # raises when this thread does (nested): before anything is changed.
        claim = _claim(self.model)
        self.records, self.maps, self._entries = [], [], []
        self.embeddings = []
        self._frames: list[_Frame] = []
        self._call_counts: dict[str, int] = {}
        self._in_hf = 0
        self._mode_ids: set[int] = set()
        self._mode_depth = 0
        self._hf_ids: set[int] = set()
        self._hf_ran: set[int] = set()
        self._hf_dispatched: set[int] = set()
        self._muted = False
        self._flash_checked: dict[type, bool] = {}
        self._flash_quiet = 0
        self._checkpointing = self.flash and any(
            getattr(m, "gradient_checkpointing", False) is True for m in self.model.modules())
        self._callback_queued = False
        self._call_ids = count()
        self._contexts = []
        self.skipped = []
        self._stack = ExitStack()
        # first in, last out: the next recording starts once everything is restored
        self._stack.callback(_release, claim)
        try:
            self._install(self._stack)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            # A model error stays the model's: it propagates (re-raised from exc.__traceback__)
            # with the model's frame innermost, not the softmax interception.
            _blame_the_model(exc)
        try:
            if self._stack is not None:
                self._finalize_missing()
        finally:
            self._close()
        if exc_type is None and self._hf_ran - self._hf_dispatched:
            names = sorted(self._names.get(i, "?") for i in self._hf_ran - self._hf_dispatched)
            warnings.warn(
                f"{len(names)} attention module(s) of {type(self.model).__name__} ran without "
                f"calling the AttentionInterface, so they were not recorded (first: {names[0]}); "
                "record them with backend='softmax'",
                RuntimeWarning,
                stacklevel=2,
            )
        if exc_type is None and not self.records:
            warnings.warn(
                f"no attention maps were recorded for {type(self.model).__name__}: "
                f"backend={self.backend!r} found no attention call during the recording (was "
                "the model run inside the context? does it compute attention with "
                "F.scaled_dot_product_attention in a hand-written module, or do `modules` name "
                "modules that never ran?)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _close(self) -> None:
        stack, self._stack = self._stack, None
        self._frames = []
        try:
            if stack is not None:
                stack.close()
        finally:
            # The live maps hold the autograd graph: don't keep it alive past the context.
            self.maps = []
            self.embeddings = []
            for entry in self._entries:
                entry.live = None  # type: ignore[assignment]
            # the live tensors hold the autograd graph: a call's parts and layout inputs too
            kept = list(self.records) + [e.record for e in self._entries]
            for record in kept:
                record.query_input = record.key_input = record.output = None
                record.nodes = {}
                record.states = record.scores = record.recompute = None
                record.linears, record.contexts = [], []
            self._entries = []
            self._contexts = []

    # ---------------------------------------------------------------- installation

    def _install(self, stack: ExitStack) -> None:
        model = self.model
        self._names = {id(m): n for n, m in model.named_modules()}
        in_scope = self._scope()
        routed: dict[int, nn.Module] = {}
        mha: dict[int, nn.Module] = {}
        other: dict[int, nn.Module] = {}
        for _, module in model.named_modules():
            if id(module) not in in_scope:
                continue
            if isinstance(module, nn.MultiheadAttention):
                mha[id(module)] = module
            elif _hf_eager_function(type(module)) is not None and hasattr(
                getattr(module, "config", None), "_attn_implementation_internal"
            ):
                routed[id(module)] = module
            elif _ATTENTION_CLASS_NAME.search(type(module).__name__):
                other[id(module)] = module
        interfaces = _transformers_interfaces() if routed else None
        if interfaces is None:
            other.update(routed)  # they only run their default (eager or sdpa) code
            routed_for_hf: dict[int, nn.Module] = {}
        else:
            routed_for_hf = routed

        backend = self.backend
        use_hf = backend in ("auto", "hf") and bool(routed_for_hf)
        use_mha = backend in ("auto", "softmax", "mha") and bool(mha)
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
        softmax_modules = dict(other)
        if backend == "softmax":
            softmax_modules.update(routed_for_hf)
        if backend == "auto":
            # Wrappers (BertAttention around BertSelfAttention) compute nothing themselves.
            handled = set(routed_for_hf) | set(mha)
            softmax_modules = {
                k: m
                for k, m in softmax_modules.items()
                if not any(id(s) in handled for s in m.modules())
            }
        use_softmax = backend == "softmax" or (backend == "auto" and bool(softmax_modules))

        self._listed = (
            {id(m) for n, m in model.named_modules() if n in self.modules}
            if self.modules is not None
            else None
        )
        tracked: dict[int, nn.Module] = {}
        if use_hf:
            tracked.update(routed_for_hf)
        if use_mha:
            tracked.update(mha)
        if use_softmax:
            tracked.update(softmax_modules)
            tracked.update(other)
            if backend == "softmax":
                tracked.update(routed_for_hf)
        if self._listed is not None:
            for module in model.modules():
                if id(module) in self._listed:
                    tracked[id(module)] = module
        self.active_backends = frozenset(
            b for b, on in (("hf", use_hf), ("softmax", use_softmax), ("mha", use_mha)) if on
        )
        self._mha_ids = set(mha) if use_mha else set()
        self._track(stack, tracked)
        if self.record_io:
            for name, module in model.named_modules():
                if isinstance(module, nn.Embedding):
                    handle = module.register_forward_hook(
                        functools.partial(self._on_embedding, name)
                    )
                    stack.callback(handle.remove)
            self._track_contexts(stack, tracked)

        if use_hf:
            assert interfaces is not None
            self._hf_ids = set(routed_for_hf)
            self._install_hf(stack, interfaces, routed_for_hf)
        elif backend == "softmax" and routed_for_hf:
            self._set_implementation(stack, routed_for_hf, "eager")
        if use_softmax:
            self._force_eager(stack, softmax_modules, routed_for_hf if use_hf else {})
        if use_mha:
            stack.enter_context(_FastPath.disabled())
        if use_softmax:
            # The mode puts every torch call through Python: only switch it on while a module
            # whose softmax we want is running (about 45% slower forwards otherwise, on ViT-base).
            plain = set(mha) if backend == "softmax" else set(mha) | set(routed_for_hf)
            self._mode_ids = set(tracked) - plain
            self._mode = _SoftmaxMode(
                self._on_softmax, self._on_linear if self.record_io else None,
                self._on_fused if self.record_io else None,
            )
            stack.callback(self._leave_mode, all_levels=True)

    def _scope(self) -> set[int]:
        """Modules inside the listed ones (all modules without a list)."""
        if self.modules is None:
            return {id(m) for m in self.model.modules()}
        named = dict(self.model.named_modules())
        return {id(m) for name in self.modules for m in named[name].modules()}

    def _track(self, stack: ExitStack, tracked: dict[int, nn.Module]) -> None:
        for module in tracked.values():
            pre = module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
            stack.callback(pre.remove)
            post = module.register_forward_hook(
                self._post_hook, with_kwargs=True, always_call=True
            )
            stack.callback(post.remove)

    def _track_contexts(self, stack: ExitStack, tracked: dict[int, nn.Module]) -> None:
        """Hooks on the modules enclosing attention modules (``record_io``): a windowed call's
        hidden states are a permutation of its layer's, and the layer's are in token order."""
        self._contexts: list[Context] = []
        names = [self._names[i] for i in tracked if i in self._names]
        enclosing = {
            ".".join(name.split(".")[:k]) for name in names for k in range(name.count(".") + 1)
        }
        for name, module in self.model.named_modules():
            if name not in enclosing or id(module) in tracked:
                continue
            pre = module.register_forward_pre_hook(
                functools.partial(self._enter_context, name), with_kwargs=True
            )
            post = module.register_forward_hook(self._leave_context, always_call=True)
            stack.callback(pre.remove)
            stack.callback(post.remove)

    def _enter_context(self, name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        self._contexts.append(Context(name, first, autograd_node(first)))

    def _leave_context(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._contexts:
            return
        context = self._contexts.pop()
        if isinstance(output, (tuple, list)):
            output = next((o for o in output if isinstance(o, Tensor)), None)
        if isinstance(output, Tensor):
            context.output, context.output_node = output, autograd_node(output)

    def _force_eager(
        self, stack: ExitStack, modules: dict[int, nn.Module], routed: dict[int, nn.Module]
    ) -> None:
        """Hand-written attention that picks ``F.scaled_dot_product_attention`` when its config
        says ``sdpa`` (Falcon) computes no softmax: its configs say ``eager`` while recording
        (configs of interface modules keep the recording key, which is not ``sdpa`` either)."""
        keep = {id(c) for c in _configs_of(self.model, routed)} if routed else set()
        own = [c for c in _configs_of(self.model, modules) if id(c) not in keep]
        for cfg in own:
            if cfg._attn_implementation_internal not in (None, "eager"):
                stack.callback(setattr, cfg, "_attn_implementation_internal",
                               cfg._attn_implementation_internal)
                cfg._attn_implementation_internal = "eager"

    def _set_implementation(
        self, stack: ExitStack, routed: dict[int, nn.Module], implementation: str
    ) -> None:
        # Set on the configs directly (not via set_attn_implementation): that method skips
        # sub-models whose file also holds hand-written attention classes and only warns.
        for cfg in _configs_of(self.model, routed):
            previous = cfg._attn_implementation_internal
            stack.callback(setattr, cfg, "_attn_implementation_internal", previous)
            cfg._attn_implementation_internal = implementation

    def _install_hf(
        self, stack: ExitStack, interfaces: tuple[Any, Any, Callable], routed: dict
    ) -> None:
        attention_interface, mask_interface, eager_mask = interfaces
        # A fresh neutral key per recording: nested/concurrent recorders never share an entry.
        key = f"hetattn_record_{next(_KEY_COUNTER)}"
        attention_interface.register(key, self._hf_attention)
        stack.callback(attention_interface._global_mapping.pop, key, None)
        if mask_interface is not None:
            # Without it the mask builders return no mask for an unknown key: causal masks
            # would be silently dropped.
            mask_interface.register(key, eager_mask)
            stack.callback(mask_interface._global_mapping.pop, key, None)
        self._set_implementation(stack, routed, key)

    # ---------------------------------------------------------------- module hooks

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        hint, query_input, key_input = _call_inputs(module, args, kwargs)
        frame = _Frame(module, hint, call_id=next(self._call_ids))
        if self.record_io:
            frame.contexts = self._contexts[::-1]
            frame.query_input, frame.key_input = query_input, key_input
            frame.nodes = {"query": autograd_node(query_input), "key": autograd_node(key_input)}
            frame.others = [a for a in (*args, *kwargs.values())
                            if isinstance(a, Tensor) and a is not query_input
                            and a.is_floating_point() and a.dim() >= 2]
        if id(module) in self._hf_ids:
            self._hf_ran.add(id(module))
        self._frames.append(frame)
        if id(module) in self._mode_ids:
            self._enter_mode()
        if id(module) in self._mha_ids:
            return self._force_mha_weights(module, args, kwargs, frame)
        return None

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any):
        if id(module) in self._mode_ids:
            self._leave_mode()
        frame = None
        for i in range(len(self._frames) - 1, -1, -1):
            if self._frames[i].module is module:
                frame = self._frames.pop(i)
                break
        if frame is not None and frame.mha_request is not None and output is not None:
            replaced = self._on_mha_output(module, frame, output)
            self._attach_output(module, frame, output)
            return replaced
        if frame is not None:
            self._attach_output(module, frame, output)
        return None

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        r"""Inside, backward passes leave the records alone (probes of the data flow)."""
        previous, self._muted = self._muted, True
        try:
            yield
        finally:
            self._muted = previous

    def _on_embedding(self, name: str, module: nn.Module, args: tuple, output: Any) -> Any:
        if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
            if (not output.requires_grad and output.is_floating_point()
                    and torch.is_grad_enabled()):
                # a frozen model on token ids: the lookup becomes the leaf of the autograd graph,
                # so the hidden states and maps after it have gradients (parameters get none)
                output = output.detach().requires_grad_()
            self.embeddings.append((name, args[0], output, autograd_node(output)))
            # the model gets a copy: writing image features into it in place (Kosmos-2) must
            # leave the recorded lookup as it was
            return output.clone()
        return None

    def _attach_output(self, module: nn.Module, frame: _Frame, output: Any) -> None:
        """Give the records made inside this call the module's output (``record_io``)."""
        if not (self.record_io and frame.records):
            return
        if isinstance(output, (tuple, list)):
            output = next((o for o in output if isinstance(o, Tensor)), None)
        for record in frame.records:
            record.output = output if isinstance(output, Tensor) else None
            record.nodes["output"] = autograd_node(record.output)

    def _enter_mode(self) -> None:
        self._mode_depth += 1
        if self._mode_depth == 1:
            self._mode.__enter__()

    def _leave_mode(self, all_levels: bool = False) -> None:
        if self._mode_depth == 0:
            return
        self._mode_depth = 0 if all_levels else self._mode_depth - 1
        if self._mode_depth == 0:
            self._mode.__exit__(None, None, None)

    # ---------------------------------------------------------------- nn.MultiheadAttention

    @staticmethod
    def _force_mha_weights(module: nn.Module, args: tuple, kwargs: dict, frame: _Frame):
        sig = _forward_signature(type(module))
        assert sig is not None
        bound = sig.bind(module, *args, **kwargs)
        frame.mha_request = (
            bool(bound.arguments.get("need_weights", True)),
            bool(bound.arguments.get("average_attn_weights", True)),
        )
        bound.arguments["need_weights"] = True
        bound.arguments["average_attn_weights"] = False
        return bound.args[1:], bound.kwargs

    def _on_mha_output(self, module: nn.Module, frame: _Frame, output: Any):
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], Tensor)):
            return None
        attn_output, weights = output
        # The returned weights are a view of the softmax output; only the base is upstream of
        # the attention output (in training with dropout it is the dropped-out tensor).
        live = weights._base if weights._base is not None else weights
        shaped = weights.detach() if weights.dim() == 4 else weights.detach().unsqueeze(0)
        if self._in_scope_of_recording(module):
            self._add_map(module, live, shaped, frame)
        need_weights, average = frame.mha_request  # type: ignore[misc]
        if not need_weights:
            return attn_output, None
        if average:
            return attn_output, weights.mean(dim=1 if weights.dim() == 4 else 0)
        return output

    # ---------------------------------------------------------------- transformers interface

    def _hf_attention(self, module: nn.Module, query, key, value, attention_mask, **kwargs):
        eager = _hf_eager_function(type(module))
        if eager is None:  # pragma: no cover - only modules with one are routed here
            raise RuntimeError(
                f"{type(module).__name__} has no eager attention function; record it with "
                "backend='softmax'"
            )
        self._hf_dispatched.add(id(module))
        states = None
        if self.record_io and self._frames and self._frames[-1].module is module:
            # keys the module computed from something it was not handed (Segformer reduces
            # its hidden states before the keys): the per-head key states stand for them
            self._frames[-1].inner_key = key
            states = (query, key)
        dropout = kwargs.get("dropout", 0.0)
        if self._can_flash(module, attention_mask, dropout, kwargs):
            self._in_hf += 1  # its softmax and sdpa are not calls of their own
            try:
                result = self._flash_call(module, eager, query, key, value, attention_mask,
                                          kwargs, states)
            finally:
                self._in_hf -= 1
            if result is not None:
                return result
        catch: list[Tensor] = []
        self._in_hf += 1
        try:
            if module.training and isinstance(dropout, float) and dropout > 0.0:
                # The returned weights are dropped out: catch the softmax before the dropout.
                with _SoftmaxMode(lambda out, dim, scores: catch.append(out)):
                    attn_output, weights = eager(
                        module, query, key, value, attention_mask, **kwargs
                    )
            else:
                attn_output, weights = eager(module, query, key, value, attention_mask, **kwargs)
        finally:
            self._in_hf -= 1
        if isinstance(weights, Tensor) and self._in_scope_of_recording(module):
            matching = [t for t in catch if t.shape == weights.shape]
            live = matching[-1] if matching else weights
            record = self._add_map(module, live, live.detach())
            if record is not None and states is not None:
                record.states = states
        return attn_output, weights

    # ---------------------------------------------------------------- flash capture

    def _can_flash(self, module: nn.Module, mask: Any, dropout: Any, kwargs: dict) -> bool:
        if not self.flash or self._flash_checked.get(type(module)) is False:
            return False
        if torch._C._current_graph_task_id() != -1 or self._checkpointing:
            return False  # recomputations in the backward: eager, merged as usual
        if module.training and not (isinstance(dropout, float) and dropout == 0.0):
            return False
        if any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks", "head_mask")):
            return False
        return mask is None or (isinstance(mask, Tensor) and mask.is_floating_point())

    def _flash_call(self, module: nn.Module, eager: Callable[..., Any], query: Tensor,
                    key: Tensor, value: Tensor, mask: Tensor | None, kwargs: dict,
                    states: tuple[Tensor, Tensor] | None) -> tuple[Tensor, None] | None:
        """The call through :class:`~captum_hetattn.flash.FlashAttention`; ``None`` where the
        first call of its class does not reproduce the eager function (then eager)."""
        if type(module) not in self._flash_checked:
            with torch.no_grad():
                expected, _ = eager(module, query, key, value, mask, **kwargs)
        groups = query.shape[1] // key.shape[1]
        if groups > 1:  # grouped-query attention: as the eager functions' repeat_kv
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        scale = kwargs.get("scaling")
        scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
        if mask is not None:
            mask = mask[:, :, :, : key.shape[-2]]
        if type(module) not in self._flash_checked:
            with torch.no_grad():
                got = F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                     scale=scale).transpose(1, 2)
                same = expected.shape == got.shape and torch.allclose(
                    expected.float(), got.float(), rtol=1e-4, atol=1e-5)
            self._flash_checked[type(module)] = same
            if not same:
                return None
        if not self._in_scope_of_recording(module):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                  scale=scale).transpose(1, 2).contiguous(), None
        probe = torch.zeros((), requires_grad=True)
        shape = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        entry = self._add_flash(module, probe, shape)
        record = entry.record
        if states is not None:
            record.states = states
        saved_query, saved_key = query.detach(), key.detach()
        record.recompute = entry.recompute = functools.partial(
            attention_map, saved_query, saved_key, None if mask is None else mask.detach(), scale)
        chunk = None
        if self.reduce_heads is not None:  # one chunk of heads' maps at a time in the backward
            per_head = shape[0] * shape[2] * shape[3]
            chunk = max(1, self.flash_budget // max(per_head, 1))
        output = FlashAttention.apply(query, key, value, mask, probe, scale,
                                      functools.partial(self._on_flash, entry), chunk)
        return output.transpose(1, 2).contiguous(), None

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        r"""Backward passes inside this block (data-flow tracing, which differentiates through
        the attention calls) do not hand flash maps over: only the gradient pass does."""
        self._flash_quiet += 1
        try:
            yield
        finally:
            self._flash_quiet -= 1

    def _add_flash(self, module: nn.Module, probe: Tensor, shape: tuple[int, ...]) -> _Entry:
        owner = self._owner(module)
        name = self._names.get(id(owner), type(owner).__name__)
        index = self._call_counts.get(name, 0)
        self._call_counts[name] = index + 1
        stand_in = torch.empty(shape, device="meta")
        record = AttentionRecord(name=name, call_index=index,
                                 role=self._role(module, owner, stand_in, None),
                                 attention=None, gradient=None, shape=shape)
        if self.record_io:
            frame = next((f for f in reversed(self._frames)
                          if f.module is owner or f.module is module), None)
            if frame is not None:
                self._attach_inputs(record, frame, stand_in)
        entry = _Entry(record, probe, id(owner), True, flash=True)
        self._entries.append(entry)
        self.records.append(record)
        self.maps.append(probe)
        return entry

    def _on_flash(self, entry: _Entry, attention: Tensor, gradient: Tensor, first: int = 0,
                  heads: int | None = None) -> None:
        """A chunk of heads ``first, first + 1, ...`` of a flash call's maps, from its backward:
        reduced chunk by chunk where ``reduce_heads`` can, else assembled, then recorded."""
        record = entry.record
        if record.reduced is not None or self._flash_quiet:
            return  # one gradient pass per recording with reduce; or a tracing pass
        heads = attention.shape[1] if heads is None else heads
        last = first + attention.shape[1] >= heads
        if first == 0 and last:  # the whole map at once
            record.attention, record.recompute = attention, None
            self._set_gradient(entry, gradient)
            return
        if self.reduce_heads is not None and record.part_of is None and entry.buffer is None:
            done = self.reduce_heads(record, attention, gradient, first, heads)
            if done is not NotImplemented:
                if last:
                    record.reduced, record.recompute = done, None
                return
        if entry.buffer is None:  # assemble the chunks into the whole map
            full = (record.shape[0], heads, *attention.shape[2:])
            entry.buffer = (attention.new_empty(full), gradient.new_empty(full))
        entry.buffer[0][:, first:first + attention.shape[1]] = attention
        entry.buffer[1][:, first:first + attention.shape[1]] = gradient
        if last:
            (record.attention, assembled), entry.buffer = entry.buffer, None
            record.recompute = None
            self._set_gradient(entry, assembled)

    # ---------------------------------------------------------------- softmax interception

    def _skip(self, module: nn.Module, out: Tensor, reason: str) -> None:
        """A softmax inside an attention module that is not recorded, kept (``record_io``) so
        that the explainer can say so instead of leaving it out silently."""
        if self.record_io and self._in_scope_of_recording(module):
            name = self._names.get(id(self._owner(module)), type(module).__name__)
            self.skipped.append((name, f"its softmax of shape {tuple(out.shape)} is not "
                                       f"recorded: {reason}"))

    def _on_fused(self, out: Tensor) -> None:
        if self._frames and not self._in_hf:
            module = self._frames[-1].module
            name = self._names.get(id(self._owner(module)), type(module).__name__)
            if all(n != name for n, _ in self.skipped):
                self._skip(module, out, "it computes attention with "
                           "F.scaled_dot_product_attention, a fused kernel with no map to "
                           "record; build the model with attn_implementation='eager'")

    def _on_linear(self, out: Tensor) -> None:
        if self._frames and not self._in_hf:
            self._frames[-1].linears.append(out)

    def _on_softmax(self, out: Tensor, dim: int, scores: Any = None) -> None:
        if self._in_hf or not self._frames or not out.is_floating_point():
            return
        module = self._frames[-1].module
        if id(module) in self._mha_ids:
            return
        if _is_sampling_attention(module):
            return self._skip(module, out, "it weighs sampling points (deformable attention)")
        if dim not in (-1, out.dim() - 1):
            return self._skip(module, out, f"it normalises dimension {dim}, not the last one")
        heads = _head_count(module)
        raw = False
        if out.dim() == 4 and not (
            heads is not None and out.shape[1] != heads and out.shape[2] == heads
        ):
            shaped = out.detach()
        elif out.dim() == 3 and heads is not None and out.shape[0] % heads == 0:
            shaped = out.detach().view(out.shape[0] // heads, heads, *out.shape[1:])
        elif self.record_io and out.dim() >= 3:
            # banded (batch, n, heads, 2w+1) or blocked 5-D maps: raw, for the layouts to place
            shaped, raw = out.detach(), True
        else:  # (batch, n) pooling weights, (batch, n, heads, points) sampling weights
            return self._skip(module, out, "it is not a (batch, heads, queries, keys) map")
        if self._in_scope_of_recording(module):
            # an interface module that ran its own code instead (caught here, so recorded)
            self._hf_dispatched.add(id(module))
            record = self._add_map(module, out, shaped)
            if record is not None and self.record_io and isinstance(scores, Tensor):
                record.scores, record.raw, record.heads = scores, raw, heads
                record.linears = list(self._frames[-1].linears)

    # ---------------------------------------------------------------- recording

    def _in_scope_of_recording(self, module: nn.Module) -> bool:
        if self._listed is None:
            return True
        return id(module) in self._listed or any(
            id(f.module) in self._listed for f in self._frames
        )

    def _owner(self, module: nn.Module) -> nn.Module:
        if self._listed is None or id(module) in self._listed:
            return module
        for frame in reversed(self._frames):
            if id(frame.module) in self._listed:
                return frame.module
        return module

    def _role(
        self, module: nn.Module, owner: nn.Module, shaped: Tensor, own: _Frame | None
    ) -> str:
        # Most specific first: the computing module's own call, then its tracked callers up
        # to the owner.
        seen_frame = False
        frames = self._frames + ([own] if own is not None else [])
        for frame in reversed(frames):
            if frame.module is module or seen_frame:
                seen_frame = True
                if frame.role_hint is not None:
                    return frame.role_hint
                if frame.module is owner:
                    break
        flag = getattr(module, "is_cross_attention", None)
        if isinstance(flag, bool):
            return "cross" if flag else "self"
        if seen_frame:
            return "self"
        return "cross" if shaped.shape[-2] != shaped.shape[-1] else "self"

    def _add_map(
        self, module: nn.Module, live: Tensor, shaped: Tensor, own: _Frame | None = None
    ) -> AttentionRecord | None:
        owner = self._owner(module)
        name = self._names.get(id(owner), type(owner).__name__)
        if torch._C._current_graph_task_id() != -1 and self._merge_recompute(owner, live, shaped):
            return None
        index = self._call_counts.get(name, 0)
        self._call_counts[name] = index + 1
        record = AttentionRecord(
            name=name,
            call_index=index,
            role=self._role(module, owner, shaped, own),
            attention=shaped,
            gradient=None,
        )
        if self.record_io:
            frame = own or next(
                (f for f in reversed(self._frames) if f.module is owner or f.module is module),
                None,
            )
            if frame is not None:
                self._attach_inputs(record, frame, shaped)
        entry = _Entry(record, live, id(owner), live.requires_grad, shaped=shaped)
        if live.requires_grad:
            self._hook(entry, live)
        self._entries.append(entry)
        self.records.append(record)
        self.maps.append(live)
        return record

    @staticmethod
    def _attach_inputs(record: AttentionRecord, frame: _Frame, shaped: Tensor) -> None:
        """Give a record (``record_io``) the tensors its module was called with.

        A module whose arguments did not name its key input (``forward(self, x, y)``) but whose
        map has another key count than query count reads its keys from the argument with that
        many tokens: it is cross-attention.
        """
        record.query_input, record.key_input = frame.query_input, frame.key_input
        record.nodes.update(frame.nodes)
        record.call_id, record.contexts = frame.call_id, frame.contexts
        n_query, n_key = shaped.shape[-2], shaped.shape[-1]
        record.token_dim = _token_dim(frame.module, frame.query_input, n_query)
        record.key_token_dim = _token_dim(frame.module, frame.key_input, n_key)
        if record.key_input is None and (record.role == "cross" or n_query != n_key):
            candidates = [*frame.others, *([frame.inner_key] if frame.inner_key is not None
                                            else [])]
            for other in candidates:
                dim = _token_dim(frame.module, other, n_key)
                if _token_count_at(other, dim) == n_key:
                    record.role, record.key_input, record.key_token_dim = "cross", other, dim
                    record.nodes["key"] = autograd_node(other)
                    break
        frame.records.append(record)

    def _merge_recompute(self, owner: nn.Module, live: Tensor, shaped: Tensor) -> bool:
        r"""Merge an attention call made during a backward (activation checkpointing)."""
        candidates = [
            e for e in self._entries if e.owner_id == id(owner) and not e.merged_recompute
        ]
        if not candidates:
            return False
        same = [
            e
            for e in candidates
            if e.record.attention is not None
            and e.record.attention.shape == shaped.shape
            and torch.equal(e.record.attention, shaped)
        ]
        entry = (same or candidates)[0]
        entry.merged_recompute = True
        if not entry.has_live_grad and live.requires_grad:
            # Reentrant checkpointing: the first forward ran without grad, this map is the one
            # the gradient flows through.
            entry.has_live_grad = True
            self._hook(entry, live)
        return True

    def _hook(self, entry: _Entry, live: Tensor) -> None:
        assert self._stack is not None
        handle = live.register_hook(functools.partial(self._on_gradient, entry))
        self._stack.callback(handle.remove)

    def _on_gradient(self, entry: _Entry, grad: Tensor) -> None:
        if self._muted:
            return
        self._set_gradient(entry, grad)
        if not self._callback_queued:
            # Zero-fill the maps that got no gradient once this backward is over.
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        self._callback_queued = False
        self._finalize_missing()

    def _set_gradient(self, entry: _Entry, grad: Tensor) -> None:
        record = entry.record
        if record.attention is None:
            return  # already reduced: one gradient pass per recording
        record.gradient = grad.detach().reshape(record.shape)
        if record.part_of is not None:
            self._complete(record.part_of)
        elif self.reduce is not None:
            self._apply_reduce(record)

    def _complete(self, call: AttentionRecord) -> None:
        """Fold the parts of a call with a layout once all have their gradients."""
        if any(p.gradient is None or p.attention is None for p in call.parts):
            return
        call.attention = call.layout.fold([p.attention for p in call.parts])
        if self.reduce is None:  # a reduce reads the parts; only a plain recording keeps G
            call.gradient = call.layout.fold([p.gradient for p in call.parts])
        if self.reduce is not None:  # one gradient pass: the parts and indices are spent
            self._apply_reduce(call)
            if not self.keep_layouts:
                call.layout.release()
            for part in call.parts:
                part.attention = part.gradient = part.recompute = None

    def use_layouts(
        self, calls: Sequence[AttentionRecord], drop: Sequence[AttentionRecord] = ()
    ) -> None:
        r"""Replace raw records by the calls they are parts of (each call's ``parts`` and
        ``layout`` set) and leave out ``drop`` (softmaxes that are not over tokens), keeping
        call order and renumbering ``call_index``; called by
        :func:`~captum_hetattn.layouts.canonicalise` before any gradient pass."""
        by_part = {id(p): call for call in calls for p in call.parts}
        dropped = {id(r) for r in drop}
        records: list[AttentionRecord] = []
        for record in self.records:
            if id(record) in dropped:
                record.call_index = -1  # out of the recording: no key of a kept call
                continue
            call = by_part.get(id(record))
            if call is None:
                records.append(record)
                continue
            record.part_of = call
            if call.parts[0] is record:
                records.append(call)
        counts: dict[str, int] = {}
        for record in records:
            record.call_index = counts.get(record.name, 0)
            counts[record.name] = record.call_index + 1
        self.records = records

    def rearm(self) -> None:
        r"""Ready every record for another gradient pass over the same forward (the previous
        pass ran with ``retain_graph=True``; with ``reduce`` and layouts, set
        :attr:`keep_layouts` before the first pass): maps as recorded, no gradient, nothing
        reduced."""
        if self._stack is None:
            raise RuntimeError("rearm must be called inside the recorder's context")
        for entry in self._entries:
            record = entry.record
            record.gradient = record.reduced = None
            entry.buffer = None
            if entry.flash:
                record.attention, record.recompute = None, entry.recompute
            else:
                record.attention = entry.shaped
        for record in self.records:
            if record.layout is not None:
                record.attention = record.gradient = record.reduced = None

    def _apply_reduce(self, record: AttentionRecord) -> None:
        assert self.reduce is not None
        record.reduced = self.reduce(record)
        record.attention = record.gradient = record.recompute = None

    def _finalize_missing(self) -> None:
        for entry in self._entries:
            record = entry.record
            if entry.flash and record.attention is None and record.reduced is None and (
                    record.recompute is not None):
                record.attention = record.recompute()  # off the objective's path
                record.recompute = None
            if record.gradient is None and record.attention is not None:
                record.gradient = torch.zeros_like(record.attention)
                if record.part_of is not None:
                    self._complete(record.part_of)
                elif self.reduce is not None:
                    self._apply_reduce(record)

    # ---------------------------------------------------------------- usage B

    def compute_gradients(
        self,
        objective: Tensor,
        retain_graph: bool = False,
        also: Sequence[Tensor | None] = (),
        maps: bool = True,
    ) -> list[Tensor | None]:
        r"""Fill ``record.gradient`` with ``d objective / d A`` for every recorded map.

        Runs ``torch.autograd.grad`` to the maps only: no parameter gradient is computed and no
        ``.grad`` is touched. Maps off the objective's path get zeros.

        Args:
            objective: a tensor computed from the model output inside this context; summed when
                it has more than one element (one scalar per example sums to the batch
                objective, examples being independent).
            retain_graph: keep the graph for another gradient computation.
            also: further tensors of the forward whose gradients to return, computed in the
                same backward pass (``None`` entries and tensors off the path give ``None``).
            maps: ``False`` computes only the gradients of ``also`` (the maps get zeros), a
                backward that stops at those tensors.

        Returns:
            The gradients of ``also``; the maps' gradients (or reduced values) are in
            :attr:`records`.

        Examples::

            >>> with AttentionRecorder(model) as rec:
            ...     logits = model(**inputs).logits
            ...     rec.compute_gradients(logits[:, 1] - logits[:, 0])
        """
        if self._stack is None:
            raise RuntimeError("compute_gradients must be called inside the recorder's context")
        if not isinstance(objective, Tensor):
            raise TypeError(f"objective must be a tensor, got {type(objective).__name__}")
        if objective.numel() != 1:
            objective = objective.sum()
        if not objective.requires_grad:
            raise ValueError(
                "the objective does not require grad: run the forward inside the recorder with "
                "grad enabled (not under torch.no_grad) and compute the objective from its output"
            )
        pending = [e for e in self._entries if e.has_live_grad and (
            e.record.attention is not None or (e.flash and e.record.recompute is not None))]
        if not maps:
            pending = []
        if self._entries and maps and not pending and all(
                e.record.attention is None for e in self._entries):
            raise RuntimeError(
                "every record was already reduced: with `reduce`, a recording takes one "
                "gradient pass"
            )
        if maps and self._entries and not any(e.has_live_grad for e in self._entries):
            raise ValueError(
                "none of the recorded attention maps requires grad (was the forward run under "
                "torch.no_grad or reentrant activation checkpointing - use .backward() there - "
                "or are all parameters frozen and the inputs not requiring grad?)"
            )
        extra = [t for t in also if isinstance(t, Tensor) and t.requires_grad]
        extra_grads: list[Tensor | None] = []
        if pending or extra:
            self._muted = True
            try:
                grads = torch.autograd.grad(
                    objective,
                    [e.live for e in pending] + extra,
                    allow_unused=True,
                    retain_graph=retain_graph,
                )
            finally:
                self._muted = False
            extra_grads = list(grads[len(pending):])
            for entry, grad in zip(pending, grads[: len(pending)], strict=True):
                if entry.flash:
                    continue  # its backward handed the map and its gradient over already
                # None: off this objective's path (also overwrites an earlier pass's value)
                self._set_gradient(entry, torch.zeros_like(entry.live) if grad is None else grad)
        self._finalize_missing()
        by_id = {id(t): g for t, g in zip(extra, extra_grads, strict=True)}
        return [by_id.get(id(t)) if isinstance(t, Tensor) else None for t in also]
