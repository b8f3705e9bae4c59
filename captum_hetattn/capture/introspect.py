r"""Reading modules and their calls: which attention function a class falls back to, what a
call's query and key inputs are, where its tokens are, how many heads it declares, which configs
select its implementation (and switching those configs for a recording).

The answers that depend on code, not on instances, are cached per class.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from inspect import Parameter, Signature, signature
from typing import Any

import torch
from torch import Tensor, nn

from captum_hetattn.capture.memo import modules_of

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

ATTENTION_CLASS_NAME = re.compile(r"Attention|Attn")
_HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_heads", "n_head")


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
def hf_eager_function(cls: type) -> Callable[..., Any] | None:
    r"""The eager attention function a transformers attention class falls back to, or ``None``.

    A class routes through the ``AttentionInterface`` when one of its methods reads
    ``ALL_ATTENTION_FUNCTIONS``; the default it hands to ``get_interface`` is a global of its
    model file whose name contains ``eager`` (``eager_attention_forward`` in ~440 files,
    ``simple_eager_attention_forward`` and a few others elsewhere). Inspecting ``co_names`` is
    cheap and needs no source file.

    Args:
        cls: a module class.

    Returns:
        The eager function, or ``None`` when ``cls`` does not route through the interface.
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
def forward_signature(cls: type) -> Signature | None:
    r"""The signature of ``cls.forward``, ``None`` when it has none that can be read."""
    try:
        return signature(cls.forward)
    except (TypeError, ValueError):
        return None


def _bind_call(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """Arguments of one ``module.forward`` call by parameter name (``**kwargs`` flattened)."""
    sig = forward_signature(type(module))
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


def call_inputs(
    module: nn.Module, args: tuple, kwargs: dict
) -> tuple[str | None, Tensor | None, Tensor | None]:
    r"""``(role hint, query input, key input)`` of one attention-module call.

    The role hint is ``"cross"``/``"self"`` from the call's arguments, ``None`` if they don't
    tell: cross-attention when a key/value input (a name in :data:`CROSS_INPUT_NAMES`) is a
    tensor that is not the query input object itself. The query input is the first argument,
    the key input that key/value tensor (``None`` for self-attention).

    Args:
        module: the module called.
        args, kwargs: the arguments of the call.

    Returns:
        The role hint, the query input and the key input.
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
    r"""The autograd node a tensor's gradient flows into now (``AccumulateGrad`` for a leaf that
    requires grad), or ``None``."""
    if not isinstance(tensor, Tensor):
        return None
    if tensor.grad_fn is not None:
        return tensor.grad_fn
    if tensor.requires_grad and torch.is_grad_enabled():  # (a view made under no_grad has none)
        return tensor.view_as(tensor).grad_fn.next_functions[0][0]
    return None


#: ``token_dim`` of channels-first hidden states ``(B, C, n)`` / ``(B, C, h, w)``: the value of
#: :data:`captum_hetattn.binding.tokens.CHANNELS_FIRST`, which reads them
CHANNELS_FIRST = 3


def token_dim(module: nn.Module, hidden: Tensor | None, n_tokens: int | None = None,
              batch: int | None = None) -> int:
    r"""Where the tokens are in a module's hidden states: sequence-first MHA and packed 2-D
    inputs have them first; per-head ``(B, H, n, d)`` inputs (a module handed projected
    queries) third; 1 otherwise. Knowing the call's token count and batch, 3-D hidden states
    whose second dimension is not the tokens are read as sequence-first ``(n, B, C)`` (FSMT)
    or channels-first ``(B, C, n)`` (SqueezeBERT's convolutions,
    :data:`CHANNELS_FIRST`). At as many tokens as examples the sizes cannot tell: 1 here, and
    the recording settles it by dependence when the call returns (:func:`layout_unsure`)."""
    if hidden is not None and hidden.dim() == 2:
        return 0
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first:
        return 0
    if (hidden is not None and hidden.dim() == 4 and n_tokens is not None
            and hidden.shape[2] == n_tokens and hidden.shape[1] != n_tokens):
        return 2
    if (hidden is not None and hidden.dim() == 3 and n_tokens is not None
            and batch is not None and hidden.shape[1] != n_tokens):
        if hidden.shape[0] == n_tokens and hidden.shape[1] == batch:
            return 0
        if hidden.shape[2] == n_tokens and hidden.shape[0] == batch:
            return CHANNELS_FIRST
    return 1


def layout_unsure(module: nn.Module, hidden: Tensor | None, n_tokens: int,
                  batch: int | None) -> bool:
    r"""Whether the sizes cannot tell batch-first hidden states ``(B, n, C)`` from
    sequence-first ``(n, B, C)`` (XLNet, FSMT): 3-D with as many tokens as examples (more than
    one), and no ``batch_first`` flag (``nn.MultiheadAttention``'s) says which
    (:func:`probed_token_dim` then tells)."""
    return (isinstance(hidden, Tensor) and hidden.dim() == 3 and batch is not None
            and batch > 1 and hidden.shape[0] == hidden.shape[1] == n_tokens == batch
            and not isinstance(module, nn.MultiheadAttention))


def probed_token_dim(name: str, hidden: Tensor, live: list[Tensor], batch: int) -> int:
    r"""The token dimension (1 or 0) of hidden states whose sizes cannot tell
    (:func:`layout_unsure`), told by dependence: the gradient of a random weighting of example
    ``e``'s part of ``live`` (the call's live tensors, examples first: its map, its query and
    key states) reaches ``hidden[e]`` alone where the states are batch-first,
    ``hidden[:, e]`` alone where they are sequence-first. The weights are random because a
    map's rows sum to one (a plain sum has no gradient). One example decides where its
    dependence holds to one layout only (the first almost always; one whose part reaches
    only its first token, a padded example's, cannot); where dependence holds to neither, none
    tells, or no graph links them, raises ``ValueError`` naming module ``name``: never a
    guess."""
    parts = [t.reshape(batch, -1) for t in live
             if t.requires_grad and t.numel() and t.shape[0] % batch == 0]
    generator = torch.Generator().manual_seed(0)
    for example in range(batch if parts and hidden.requires_grad else 0):
        outputs = [t[example] for t in parts]
        weights = [(torch.rand(t.shape, generator=generator) + 0.5).to(t) for t in outputs]
        try:
            (grad,) = torch.autograd.grad(outputs, hidden, weights, retain_graph=True,
                                          allow_unused=True)
        except RuntimeError:  # a graph broken by in-place updates: cannot be told
            break
        if grad is None:
            break
        reached = grad.detach().flatten(2).abs().amax(dim=-1) != 0  # (hidden's dims 0, 1)
        rows, columns = reached.any(dim=1), reached.any(dim=0)
        rows[example] = columns[example] = False  # what reaches beyond the example's own
        batch_first, sequence_first = not bool(rows.any()), not bool(columns.any())
        if batch_first != sequence_first:
            return 1 if batch_first else 0
        if not (batch_first or sequence_first):
            break
    raise ValueError(
        f"module '{name}' is handed hidden states of shape {tuple(hidden.shape)} with as many "
        f"tokens as examples ({batch}): their layout, batch-first (B, n, C) or "
        "sequence-first (n, B, C), cannot be told from the sizes, nor from how the call's "
        "examples depend on them; explain with another batch size")


def token_count_at(tensor: Tensor, dim: int) -> int:
    r"""How many tokens ``tensor`` holds with its tokens at ``dim`` (a channels-last grid
    ``(B, h, w, C)`` counts ``h · w``)."""
    if dim == 1 and tensor.dim() >= 4:
        return math.prod(tensor.shape[1:-1])
    return tensor.shape[0 if tensor.dim() == 2 and dim == 0 else dim]


def head_count(module: nn.Module) -> int | None:
    r"""The head count a module declares (``num_heads`` and its spellings), or ``None``."""
    for attr in _HEAD_COUNT_ATTRIBUTES:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def is_sampling_attention(module: nn.Module) -> bool:
    r"""Deformable attention: its softmax weighs sampling points, not tokens."""
    return "Deformable" in type(module).__name__ or hasattr(module, "sampling_offsets")


def transformers_interfaces() -> tuple[Any, Any, Callable[..., Any] | None] | None:
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


def add_config(found: dict[int, Any], cfg: Any) -> None:
    r"""Add ``cfg`` (a transformers config: one with an attention implementation) and its
    sub-configs to ``found`` (``id -> config``)."""
    if cfg is None or id(cfg) in found or not hasattr(cfg, "_attn_implementation_internal"):
        return
    found[id(cfg)] = cfg
    for key in getattr(cfg, "sub_configs", {}) or {}:
        add_config(found, getattr(cfg, key, None))


def configs_of(model: nn.Module, routed: dict[int, nn.Module]) -> list[Any]:
    r"""Configs that must name the recording implementation.

    Args:
        model: the recorded model.
        routed: ``id -> module`` of the modules whose implementation is chosen.

    Returns:
        The ``config`` of every routed module (it selects the attention function), the
        ``config`` of every model that contains one (it selects the mask function: a mismatch
        silently drops causal masks), and their sub-configs.
    """
    found: dict[int, Any] = {}
    routed_ids = set(routed)
    for module in modules_of(model):
        cfg = getattr(module, "config", None)
        if cfg is None:
            continue
        if id(module) in routed_ids or any(id(m) in routed_ids for m in module.modules()):
            add_config(found, cfg)
    return list(found.values())


def set_implementation(
    stack: ExitStack, model: nn.Module, modules: dict[int, nn.Module], implementation: str
) -> None:
    r"""Name ``implementation`` in the configs of ``modules`` (and of the models holding them)
    until ``stack`` closes.

    Set on the configs directly (not via ``set_attn_implementation``): that method skips
    sub-models whose file also holds hand-written attention classes and only warns.
    """
    for cfg in configs_of(model, modules):
        previous = cfg._attn_implementation_internal
        stack.callback(setattr, cfg, "_attn_implementation_internal", previous)
        cfg._attn_implementation_internal = implementation
