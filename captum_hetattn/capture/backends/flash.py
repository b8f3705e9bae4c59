r"""Flash capture: attention with the fast kernel in the forward and the map built inside the
backward (``AttentionRecorder(flash=True)``, for modules that use the ``AttentionInterface``).

Eager capture keeps every call's ``(B, H, n_q, n_k)`` map alive from the forward to the backward
(the backward of ``A @ V`` needs it), so memory grows with ``L · H · n²``. Here the forward runs
``F.scaled_dot_product_attention`` (which keeps only ``Q, K, V`` and the output) and the backward
recomputes, one call at a time, ``A = softmax(Q Kᵀ · scale + mask)`` and takes
``G = ∂y/∂A = dO · Vᵀ`` from the output gradient — exactly the pair the eager capture records —
hands both to a callback (which reduces them at once) and returns the usual gradients of
``Q, K, V`` (and of an additive mask that requires grad, such as a learned position bias).

The callback runs inside the backward, per call and chunk of heads, so a callback that reduces the
maps at once leaves at most one chunk of one call's maps alive at a time.

:class:`FlashBackend` decides which interface calls run so (the first call of each attention
class is checked against its eager function; dropout in training, soft-capping, attention sinks,
head masks and activation checkpointing stay eager) and records them; :class:`FlashAttention`
and :func:`attention_map` are the kernel and the map.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_hetattn.capture.backends.base import (
    Backend,
    clear_empty_rows,
    huge_rows,
    masked_keys,
)
from captum_hetattn.capture.backends.flash_blocks import (  # (MIN_ROWS, key_extents: as before)
    MIN_ROWS as MIN_ROWS,
)
from captum_hetattn.capture.backends.flash_blocks import (
    _dead_blocks,
    _mask_rows,
    _read_mask,
    _row_blocks,
    causal_kernel,
)
from captum_hetattn.capture.backends.flash_blocks import (
    key_extents as key_extents,
)
from captum_hetattn.capture.session import Entry, Session

if TYPE_CHECKING:
    from captum_hetattn.capture.recorder import AttentionRecorder

Sink = Callable[[Tensor, Tensor], None]


def attention_map(query: Tensor, key: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    r"""``softmax(Q Kᵀ · scale + mask)`` in (at least) float32, cast back to the query's dtype
    (as the transformers eager attention functions compute it); a row whose every key is
    masked with ``-inf`` is zero, as ``F.scaled_dot_product_attention`` computes it (a plain
    softmax would give NaN)."""
    scores = torch.matmul(query, key.transpose(-1, -2))
    grad = scores.requires_grad  # in place where autograd need not see it (same values)
    scores = scores * scale if grad else scores.mul_(scale)
    scores = _plus_mask(scores, mask, in_place=not grad)
    dtype = torch.promote_types(query.dtype, torch.float32)  # float64 stays float64
    attention = torch.softmax(scores, dim=-1, dtype=dtype)
    if mask is not None:
        attention = attention.nan_to_num(0.0) if grad else attention.nan_to_num_(0.0)
    return attention.to(query.dtype)


def _plus_mask(scores: Tensor, mask: Tensor | None, in_place: bool) -> Tensor:
    """``scores + mask``, into ``scores`` where allowed and the sum keeps its shape."""
    if mask is None:
        return scores
    if in_place and torch.broadcast_shapes(scores.shape, mask.shape) == scores.shape:
        return scores.add_(mask)
    return scores + mask


def _fused_cpu(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
               scale: float) -> bool:
    """Whether ``F.scaled_dot_product_attention`` runs this call on the CPU flash kernel (then
    :class:`FlashAttention` calls that kernel itself, bit for bit the same output, and keeps its
    log-sum-exp: the backward uses the kernel's own backward and rebuilds each map with one
    product and one ``exp``)."""
    if query.device.type != "cpu" or query.dtype != torch.float32:
        return False
    if mask is not None and (mask.requires_grad or mask.dtype != torch.float32):
        return False  # a learned bias needs its gradient: the backward below computes it
    try:
        choice = torch._fused_sdp_choice(query, key, value, mask, 0.0, False, scale=scale)
    except (RuntimeError, TypeError):  # pragma: no cover - builds without the dispatcher
        return False
    return choice == int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)


def lse_map(query: Tensor, key: Tensor | None, mask: Tensor | None, scale: float,
            logsumexp: Tensor | None, out: Tensor | None = None,
            extended: Tensor | None = None, shifted: Tensor | None = None) -> Tensor:
    r"""``softmax(Q Kᵀ · scale + mask)`` from the kernel's row log-sum-exp: ``exp(Q' K'ᵀ +
    mask)`` with ``Q' = [Q · scale, -lse]`` and ``K' = [K, 1]`` (the shift is in the product:
    one pass over the map fewer). Equal to :func:`attention_map` to float32 rounding
    (≈ 1e-7); a row that a ``-inf`` mask hides entirely is 0 (the kernel's log-sum-exp is 0
    there), other empty rows are cleared by the caller (:func:`clear_empty_rows`); a row that a
    large finite mask hides wholly is lost to rounding here (the caller builds those blocks with
    :func:`attention_map`, see :func:`huge_rows`). ``out``: where to write it; ``extended``:
    ``K'ᵀ`` (:func:`extended_keys`), built once by a caller that rebuilds the map in blocks of
    query rows; ``shifted``: ``Q'`` (:func:`shifted_queries`), likewise."""
    if extended is None:
        extended = extended_keys(key)
    if shifted is None:
        assert logsumexp is not None
        shifted = shifted_queries(query, scale, logsumexp)
    scores = torch.matmul(shifted, extended, out=out)
    return _plus_mask(scores, mask, in_place=True).exp_()


def shifted_queries(query: Tensor, scale: float, logsumexp: Tensor) -> Tensor:
    r"""``[Q · scale, -lse]``: the left side of :func:`lse_map`'s product."""
    return torch.cat([query * scale, -logsumexp.unsqueeze(-1).to(query.dtype)], dim=-1)


def extended_keys(key: Tensor) -> Tensor:
    r"""``[K, 1]ᵀ``: the right side of :func:`lse_map`'s product."""
    return torch.cat([key, key.new_ones(*key.shape[:-1], 1)], dim=-1).transpose(-1, -2)


def recorded_map(query: Tensor, key: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    r"""The map a flash call records: :func:`attention_map` with its empty rows cleared."""
    return clear_empty_rows(attention_map(query, key, mask, scale), mask)


#: arguments every eager attention function takes that the kernel sees (or refuses) itself
_KERNEL_ARGUMENTS = frozenset({"module", "query", "key", "value", "attention_mask", "scaling",
                               "dropout", "softcap", "s_aux", "sinks", "head_mask", "kwargs"})


@functools.cache
def _declared(eager: Callable[..., Any]) -> frozenset[str]:
    """The parameters an eager function names beyond the kernel's own."""
    try:
        names = inspect.signature(eager).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return frozenset()
    return frozenset(names) - _KERNEL_ARGUMENTS


def score_terms(eager: Callable[..., Any], kwargs: dict) -> list[Tensor]:
    r"""Tensors the eager function is handed by a name it declares and the kernel does not see
    (T5-style ``position_bias``): candidates for an additive term of the scores, which the
    class check verifies before a call of the class runs through the kernel."""
    return [kwargs[name] for name in sorted(_declared(eager))
            if isinstance(kwargs.get(name), Tensor)]


def _log_maps_agree(expected: Tensor, got: Tensor) -> bool:
    """Whether two maps have the same scores up to a constant per row: their logs, centred over
    the keys each row attends to, agree relative to their own spread (so a bias that moves a
    near-uniform map of a tiny model is seen, where comparing outputs or maps would pass)."""
    if expected.shape != got.shape:
        return False
    if not expected.numel():
        return True
    expected, got = expected.float(), got.float()
    live = expected > 0
    if not torch.equal(live, got > 0):
        return False
    weight = live.float()
    count = weight.sum(-1, keepdim=True).clamp(min=1)

    def centred(values: Tensor) -> Tensor:
        return (values - (values * weight).sum(-1, keepdim=True) / count) * weight

    logs = expected.clamp(min=1e-30).log()
    spread = float(centred(logs).abs().max())
    difference = centred(logs - got.clamp(min=1e-30).log())
    return float(difference.abs().max()) <= 1e-3 * spread + 1e-5


class FlashAttention(torch.autograd.Function):
    r"""``sdpa(Q, K, V, mask, scale)`` whose backward calls ``sink(A, G, first_head, heads)``.

    The backward runs over chunks of heads (``chunk`` heads at a time; all at once when
    ``None``), so it holds one chunk's ``(B, chunk, n_q, n_k)`` temporaries at a time; the sink
    gets each chunk's maps with the index of its first head and the total head count. With
    ``rows`` (the kernel's path only), each chunk arrives in blocks of that many query rows
    where it has more: ``sink(A, G, first_head, heads, first_row)``.
    ``probe`` is a scalar that requires grad: asking ``torch.autograd.grad`` for it makes a
    backward run through this call without keeping any map (its gradient is 0).
    """

    @staticmethod
    def forward(ctx, query, key, value, mask, probe, scale, sink, chunk=None,  # noqa: D102
                workspace=None, rows=None, narrow=None, dead=None):
        ctx.scale, ctx.sink, ctx.chunk, ctx.workspace = scale, sink, chunk, workspace
        ctx.rows, ctx.narrow, ctx.dead = rows, narrow, dead
        ctx.fused = _fused_cpu(query, key, value, mask, scale)
        if ctx.fused:  # the kernel F.scaled_dot_product_attention picks, with its log-sum-exp
            ctx.causal, needed = causal_kernel(mask, query.shape[2], key.shape[2])
            ctx.kernel_mask = needed  # (the rebuilt maps take the mask whole)
            output, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, 0.0, ctx.causal, attn_mask=mask if needed else None,
                scale=scale)
            ctx.save_for_backward(query, key, value, mask, output, logsumexp)
            return output
        ctx.save_for_backward(query, key, value, mask)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        if ctx.fused and not torch.is_grad_enabled():  # (the kernel's backward has none)
            return FlashAttention._fused_backward(ctx, grad_output)
        query, key, value, mask = ctx.saved_tensors[:4]
        heads = query.shape[1]
        chunk = heads if ctx.chunk is None else max(1, min(int(ctx.chunk), heads))
        grad_query, grad_key, grad_value = (torch.empty_like(t) for t in (query, key, value))
        grad_mask = None
        wants_mask = mask is not None and ctx.needs_input_grad[3]
        wants_states = any(_executed(ctx)[:4])  # (none of the first layer's)
        grad_scores: Tensor | None = None
        for first in range(0, heads, chunk):
            part = slice(first, first + chunk)
            head_mask = None
            if mask is not None:
                head_mask = mask[:, part] if mask.dim() == 4 and mask.shape[1] == heads else mask
            q, k, v, d_out = query[:, part], key[:, part], value[:, part], grad_output[:, part]
            attention = attention_map(q, k, head_mask, ctx.scale)
            gradient = torch.matmul(d_out, v.transpose(-1, -2))  # ∂y/∂A = dO · Vᵀ
            if wants_states:
                grad_value[:, part] = torch.matmul(attention.transpose(-1, -2), d_out)
                grad_scores = attention * (gradient - (gradient * attention).sum(-1, keepdim=True))
                grad_query[:, part] = torch.matmul(grad_scores, k) * ctx.scale
                grad_key[:, part] = torch.matmul(grad_scores.transpose(-1, -2), q) * ctx.scale
            if wants_mask and wants_states:
                if mask.dim() == 4 and mask.shape[1] == heads and heads > 1:
                    if grad_mask is None:
                        grad_mask = torch.zeros_like(mask)
                    grad_mask[:, part] = _sum_to(grad_scores, grad_mask[:, part].shape)
                else:
                    partial = _sum_to(grad_scores, mask.shape)
                    grad_mask = partial if grad_mask is None else grad_mask + partial
            ctx.sink(clear_empty_rows(attention.detach(), head_mask), gradient.detach(), first,
                     heads)
            del attention, gradient
            grad_scores = None  # (one chunk's temporaries alive at a time)
        if not wants_states:
            grad_query = grad_key = grad_value = None
        return (grad_query, grad_key, grad_value, grad_mask, torch.zeros(()), None, None, None,
                None, None, None, None)

    @staticmethod
    def _fused_backward(ctx, grad_output):
        """The CPU kernel's own backward for ``Q, K, V`` (what a plain backward runs); each
        chunk of heads' maps rebuilt from the saved log-sum-exp (:func:`lse_map`) and
        ``G = dO · Vᵀ``, handed to the sink (which may reuse their memory; where it returns
        ``True`` it keeps neither, and the next chunk is written into the same memory). With
        ``rows``, each chunk goes to the sink in blocks of that many query rows, with the first
        row's index (the same values: each row's map and gradient depend on that row only),
        so the map-sized temporaries are one block's. Where ``narrow()`` says the sink takes
        them, a block holds only the leading keys some query of the block sees
        (:func:`key_extents`: a causal mask's later keys are built for no row); a block no
        output gradient reaches goes unbuilt where ``dead`` says the sink takes it
        (:func:`_dead_blocks`), and where most are, ``Q, K, V``'s gradients come from the
        others' maps (:class:`SparseStates`)."""
        query, key, value, mask, output, logsumexp = ctx.saved_tensors
        heads, n_query = query.shape[1], query.shape[2]
        chunk = heads if ctx.chunk is None else max(1, min(int(ctx.chunk), heads))
        blocks = _row_blocks(n_query, ctx.rows)
        narrow = len(blocks) > 1 and ctx.narrow is not None and ctx.narrow()
        if narrow and mask is not None and mask.dim() >= 2 and mask.shape[-2] != 1:
            # (a block is built over the keys its last row sees: shorter blocks build less of
            # what a causal mask hides, down to a size that keeps the products fast)
            blocks = _row_blocks(n_query, min(ctx.rows, NARROW_ROWS))
        per_head = mask is not None and mask.dim() == 4 and mask.shape[1] == heads > 1
        dead = _dead_blocks(ctx, grad_output, blocks)
        grads: tuple[Tensor | None, ...] = (None, None, None)
        states = None
        if any(_executed(ctx)[:3]):  # (the first layer's are wanted by no one: not computed)
            states = SparseStates.start(ctx, dead, grad_output)
            if states is None:
                grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                    grad_output, query, key, value, output, logsumexp, 0.0, ctx.causal,
                    attn_mask=mask if ctx.kernel_mask else None, scale=ctx.scale)
        shared = None  # a mask over every head: what it says about the blocks, read once
        for first in range(0, heads, chunk):
            part = slice(first, first + chunk)
            head_mask = mask[:, part] if per_head else mask
            if shared is None or per_head:
                shared = _read_mask(head_mask, blocks, key.shape[2], narrow)
            extents, emptied = shared
            extended = extended_keys(key[:, part])
            value_t = value[:, part].transpose(-1, -2)
            # (once per chunk, not per block: fewer small calls; the same entries)
            shifted = shifted_queries(query[:, part], ctx.scale, logsumexp[:, part])
            for index, rows in enumerate(blocks):
                if dead[index] and ctx.dead(ctx.causal):  # (asked per block: see the sink's)
                    empty = grad_output.new_empty(*query[:, part, rows].shape[:3], 0)
                    ctx.sink(empty, empty, first, heads, rows.start)
                    continue
                width = key.shape[2] if extents is None else extents[index]
                attention, gradient = _block_maps(
                    ctx, query[:, part, rows], extended[..., :width], value_t[..., :width],
                    _mask_rows(head_mask, rows, width), shifted[:, :, rows],
                    grad_output[:, part, rows], emptied[index])
                if states is not None and not dead[index]:
                    states.add(attention, gradient, part, rows)
                at_row = () if rows.stop - rows.start == n_query else (rows.start,)
                done = ctx.sink(attention, gradient, first, heads, *at_row)
                if done is not True and ctx.workspace is not None:
                    ctx.workspace.drop()  # the sink keeps them: the next block gets new memory
                del attention, gradient
        if states is not None:
            grads = states.grads
        return *grads, None, torch.zeros(()), None, None, None, None, None, None, None


#: whether the query/key/value gradients of a call most of whose rows get no output gradient
#: come from the rebuilt maps of the others (:class:`SparseStates`)
SPARSE_STATES = True


class SparseStates:
    r"""The gradients of ``Q, K, V`` from the rebuilt maps of the row blocks that an output
    gradient reaches, where at most half do (the last layer under a one-token readout): the
    kernel's backward would run over every row. Over those blocks ``dV += Aᵀ dO``,
    ``dS = A ⊙ (G − D)`` with ``D = rowsum(dO ⊙ O)``, ``dQ = dS K · scale``,
    ``dK += dSᵀ Q · scale``; the other rows add exact zeros (``dO = 0`` there). The kernel's
    gradients to float rounding (the same sums in another order)."""

    def __init__(self, ctx: Any, grad_output: Tensor) -> None:
        query, key, value, _, output, _ = ctx.saved_tensors
        self.scale, self.query, self.key, self.grad_output = ctx.scale, query, key, grad_output
        self.delta = (grad_output * output).sum(-1, keepdim=True)
        self.grads = tuple(torch.zeros(t.shape, dtype=t.dtype, device=t.device)
                           for t in (query, key, value))

    @staticmethod
    def start(ctx: Any, dead: list[bool], grad_output: Tensor) -> SparseStates | None:
        """The gradients to come from the maps, or ``None`` (the kernel's backward): where at
        most half the blocks are live and every row sees a key (no cleared or softmax-of-mask
        rows: a causal mask, or none)."""
        mask = ctx.saved_tensors[3]
        if (not SPARSE_STATES or not any(dead) or 2 * dead.count(False) > len(dead)
                or not (mask is None or ctx.causal)):
            return None
        return SparseStates(ctx, grad_output)

    def add(self, attention: Tensor, gradient: Tensor, part: slice, rows: slice) -> None:
        """One block's map and gradient (before the sink reuses their memory)."""
        width = attention.shape[-1]
        d_scores = (gradient - self.delta[:, part, rows]) * attention
        grad_query, grad_key, grad_value = self.grads
        grad_query[:, part, rows] = torch.matmul(d_scores, self.key[:, part, :width]) * self.scale
        grad_key[:, part, :width] += torch.matmul(
            d_scores.transpose(-1, -2), self.query[:, part, rows]) * self.scale
        grad_value[:, part, :width] += torch.matmul(attention.transpose(-1, -2),
                                                    self.grad_output[:, part, rows])


def _executed(ctx: Any) -> list[bool]:
    r"""Per input of a :class:`FlashAttention` call, whether this backward's gradient pass
    runs the node its gradient goes to (the first layer's queries, keys and values lead to
    no gradient ``torch.autograd.grad(objective, maps)`` asks for: their gradients are not
    computed). ``True`` where the engine cannot say (a leaf under ``autograd.grad``)."""
    wanted = []
    for node, _ in ctx.next_functions:
        try:
            wanted.append(node is not None and torch._C._will_engine_execute_node(node))
        except RuntimeError:  # pragma: no cover - a leaf input under autograd.grad
            wanted.append(True)
    return wanted


def _block_maps(ctx: Any, query: Tensor, extended: Tensor, value_t: Tensor, mask: Tensor | None,
                shifted: Tensor, grad_output: Tensor, emptied: bool = True
                ) -> tuple[Tensor, Tensor]:
    """One block's map (its empty rows cleared, where ``emptied`` says the mask hides a row
    of it from every key) and ``G = dO · Vᵀ``, over the keys of ``extended`` (``K'ᵀ``,
    :func:`extended_keys`) and ``value_t`` (``Vᵀ``), from the block's ``shifted`` queries
    (``Q'``, :func:`shifted_queries`), written into the workspace where there is one."""
    shape = (*query.shape[:3], extended.shape[-1])
    into = ctx.workspace.take(shape, query) if ctx.workspace is not None else (None,) * 2
    if emptied and huge_rows(mask):  # rows a finite mask hides wholly: the softmax itself
        key = extended[..., :-1, :].transpose(-1, -2)
        attention = attention_map(query, key, mask, ctx.scale)
    else:
        attention = lse_map(query, None, mask, ctx.scale, None, out=into[0],
                            extended=extended, shifted=shifted)
    gradient = torch.matmul(grad_output, value_t, out=into[1])
    return (clear_empty_rows(attention, mask) if emptied else attention), gradient


class Workspace:
    r"""Map-sized memory that the chunks of flash backwards write into, one after another: a
    new CPU tensor of a chunk's size is mapped afresh (page faults on every write) each time,
    which cost as much as the product that fills it."""

    def __init__(self) -> None:
        self.buffers: tuple[Tensor, Tensor] | None = None

    def take(self, shape: tuple[int, ...], like: Tensor) -> tuple[Tensor, Tensor]:
        """Two tensors of ``shape`` (the map and its gradient), in memory used before where it
        is large enough."""
        size = 1
        for each in shape:
            size *= each
        held = self.buffers
        if held is None or held[0].numel() < size or held[0].dtype != like.dtype or (
                held[0].device != like.device):
            held = self.buffers = (like.new_empty(size), like.new_empty(size))
        return held[0][:size].view(shape), held[1][:size].view(shape)

    def drop(self) -> None:
        """Forget the memory (its tensors were kept by the sink)."""
        self.buffers = None


#: per model: the attention classes' verdicts (:attr:`FlashBackend.checked`)
_VERDICTS: weakref.WeakKeyDictionary[nn.Module, dict[type, bool]] = weakref.WeakKeyDictionary()

#: map entries (``B · chunk · rows · n_k``) per block of query rows, where the head reduction
#: takes rows: one block's map and gradient stay in the CPU's cache between their passes (one
#: head's blocks of 2**19 to 2**20 entries were fastest at 2048-8192 tokens, 64 rows or fewer
#: ~10% slower)
ROW_BUDGET = 2**20

#: the most query rows of a block built over only the keys its rows see (a causal mask): a
#: block of ``r`` rows builds ``≈ r · n / 2`` entries the mask hides
NARROW_ROWS = 128

#: query rows the class check compares maps at (all of them up to this many)
CHECK_ROWS = 128


def _spread(rows: int) -> Tensor | None:
    """At most :data:`CHECK_ROWS` rows spread evenly from the first to the last (``None``:
    every row)."""
    if rows <= CHECK_ROWS:
        return None
    return torch.linspace(0, rows - 1, CHECK_ROWS).round().long().unique()


def _rows(tensor: Tensor, rows: Tensor | None) -> Tensor:
    """``tensor``'s rows (dim -2) at ``rows``; a dimension broadcast over the rows stays."""
    if rows is None or tensor.shape[-2] == 1:
        return tensor
    return tensor.index_select(-2, rows)


def _with_terms(mask: Tensor | None, terms: list[Tensor], query: Tensor,
                key: Tensor) -> Tensor | None | bool:
    """``mask`` plus the score terms (each broadcast to the scores' shape); ``False`` where a
    term cannot be one."""
    scores = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    for term in terms:
        if not term.is_floating_point():
            return False
        try:
            torch.broadcast_shapes(term.shape, scores)
        except RuntimeError:
            return False
        mask = term if mask is None else mask + term
    return mask


def _sum_to(gradient: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to ``shape``."""
    while gradient.dim() > len(shape):
        gradient = gradient.sum(0)
    for dim, size in enumerate(shape):
        if size == 1 and gradient.shape[dim] != 1:
            gradient = gradient.sum(dim, keepdim=True)
    return gradient


class FlashBackend(Backend):
    r"""Runs interface calls through :class:`FlashAttention` and records their maps from the
    backward.

    Args:
        recorder: the recorder the maps go to (its ``reduce_heads`` and ``flash_budget``).
        session: the running recording.
    """

    def __init__(self, recorder: AttentionRecorder, session: Session) -> None:
        super().__init__(recorder, session)
        #: per attention class: whether its first call reproduced its eager function — kept
        #: for the model's life (a class's verdict does not depend on the values; the check
        #: runs the eager function and compares maps, as costly as a layer's forward)
        self.checked: dict[type, bool] = _VERDICTS.setdefault(recorder.model, {})
        #: the memory the backward's chunks of maps are written into, call after call
        self.workspace = Workspace()

    def install(self, stack: ExitStack) -> None:
        r"""Nothing to install (the interface function calls :meth:`call`) and nothing to undo:
        kept for the backends' common shape."""

    def can_flash(self, module: nn.Module, mask: Any, dropout: Any, kwargs: dict) -> bool:
        r"""Whether this interface call can run through :class:`FlashAttention`."""
        if self.checked.get(type(module)) is False:
            return False
        if torch._C._current_graph_task_id() != -1 or self.session.checkpointing:
            return False  # recomputations in the backward: eager, merged as usual
        if module.training and not (isinstance(dropout, float) and dropout == 0.0):
            return False
        if any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks", "head_mask")):
            return False
        return mask is None or (isinstance(mask, Tensor) and mask.is_floating_point())

    def _reproduces(self, module: nn.Module, eager: Callable[..., Any], query: Tensor,
                    key: Tensor, value: Tensor, mask: Tensor | None, kwargs: dict,
                    expanded: tuple[Tensor, Tensor, Tensor | None, float]) -> bool | None:
        """The first call of a class whose terms matter: whether sdpa gives its eager function's
        output and map (scores compared up to a constant per row, so a bias the kernel misses
        is seen however small the model's weights are), at :data:`CHECK_ROWS` query rows spread
        over the sequence (queries are independent: the check's memory stays small however long
        the input; a function that treats the rows it is handed differently does not agree, and
        its class stays eager). ``None`` (undecided: this call eager, the next one checked)
        when the call's score terms are all zero."""
        terms = score_terms(eager, kwargs)
        if terms and all(not bool(t.detach().any()) for t in terms):
            return None  # a call where the bias does not matter cannot tell whether it is seen
        rows = _spread(query.shape[-2])
        n_query = query.shape[-2]

        def picked(value: Any) -> Any:  # the checked rows of anything laid out over the queries
            if isinstance(value, Tensor) and value.dim() >= 2 and value.shape[-2] == n_query:
                return _rows(value, rows)
            return value

        full_key, full_value, cut_mask, scale = expanded
        query, mask, cut_mask = picked(query), picked(mask), picked(cut_mask)
        try:
            with torch.no_grad():
                expected, weights = eager(module, query, key, value, mask,
                                          **{k: picked(v) for k, v in kwargs.items()})
                got = F.scaled_dot_product_attention(query, full_key, full_value,
                                                     attn_mask=cut_mask, scale=scale)
        except (RuntimeError, ValueError, IndexError):
            if rows is None:
                raise
            same = False  # the eager function wants every row: eager, as it was not shown equal
        else:
            got = got.transpose(1, 2)
            same = expected.shape == got.shape and torch.allclose(
                expected.float(), got.float(), rtol=1e-4, atol=1e-5)
            if same and isinstance(weights, Tensor):  # the first example's map is enough
                first = None if cut_mask is None else cut_mask[:1]
                with torch.no_grad():
                    same = _log_maps_agree(weights[:1], attention_map(
                        query[:1], full_key[:1], first, scale))
        self.checked[type(module)] = same
        return same

    def call(self, module: nn.Module, eager: Callable[..., Any], query: Tensor,
             key: Tensor, value: Tensor, mask: Tensor | None, kwargs: dict,
             states: tuple[Tensor, Tensor] | None) -> tuple[Tensor, None] | None:
        r"""The call through :class:`FlashAttention`; ``None`` where the first call of its
        class does not reproduce the eager function (then eager)."""
        original = (query, key, value, mask)
        groups = query.shape[1] // key.shape[1]
        if groups > 1:  # grouped-query attention: as the eager functions' repeat_kv
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        scale = kwargs.get("scaling")
        scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
        if mask is not None:
            mask = mask[:, :, :, : key.shape[-2]]
            if mask.shape[-1] not in (1, key.shape[-2]):
                return None  # a mask over other keys than the call has: eager decides
        mask = _with_terms(mask, score_terms(eager, kwargs), query, key)
        if mask is False:
            self.checked[type(module)] = False  # a term that is no additive bias: eager
            return None
        if type(module) not in self.checked and not self._reproduces(
                module, eager, *original, kwargs, (key, value, mask, scale)):
            return None
        if not self.session.in_scope(module):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                  scale=scale).transpose(1, 2).contiguous(), None
        probe = torch.zeros((), requires_grad=True)
        shape = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        entry = self._add_flash(module, probe, shape)
        record = entry.record
        record.masked_keys = masked_keys(mask, shape[0])
        if states is not None:
            record.states = states
        saved_query, saved_key = query.detach(), key.detach()
        record.recompute = entry.recompute = functools.partial(
            recorded_map, saved_query, saved_key, None if mask is None else mask.detach(), scale)
        chunk = rows = None
        reduce_heads = self.recorder.reduce_heads
        if reduce_heads is not None:  # one chunk of heads' maps at a time
            per_head = shape[0] * shape[2] * shape[3]
            chunk = max(1, self.recorder.flash_budget // max(per_head, 1))
            if getattr(reduce_heads, "rows", False):  # and of query rows, where it takes them
                if _fused_cpu(query, key, value, mask, scale):
                    chunk = 1  # (the kernel's backward runs whole: one head's blocks rebuild
                    # and reduce fastest, measured at 2048-8192 tokens)
                rows = max(1, ROW_BUDGET // max(shape[0] * min(chunk, shape[1]) * shape[3], 1))
        output = FlashAttention.apply(query, key, value, mask, probe, scale,
                                      functools.partial(self._on_flash, entry), chunk,
                                      self.workspace, rows,
                                      functools.partial(self._narrowable, entry),
                                      functools.partial(self._takes_dead, entry))
        return output.transpose(1, 2).contiguous(), None

    def _add_flash(self, module: nn.Module, probe: Tensor, shape: tuple[int, ...]) -> Entry:
        """A record whose map arrives in the backward; ``probe`` stands for it in ``maps``."""
        owner = self.session.owner(module)
        record = self.session.new_record(module, owner, shape, None)
        entry = Entry(record, probe, id(owner), True, flash=True)
        self.recorder._keep(entry)
        return entry

    def _narrowable(self, entry: Entry) -> bool:
        """Whether this call's row blocks may reach ``reduce_heads`` with only the leading keys
        their rows see (the recorder's ``narrow_keys`` says so for the record): never where
        the chunks are assembled into a whole map (its gradient is wanted on every key)."""
        record, narrow_keys = entry.record, self.recorder.narrow_keys
        return (narrow_keys is not None and self.recorder.reduce_heads is not None
                and record.reduced is None and not self.session.tracing
                and record.part_of is None and entry.buffer is None and narrow_keys(record))

    def _takes_dead(self, entry: Entry, causal: bool) -> bool:
        """Whether a block of rows that no output gradient reaches may go to ``reduce_heads``
        unbuilt, as a block of zero keys: where the reduce's ``takes_dead_blocks(record,
        causal)`` says so (``causal``: the kernel read the mask as causal), as for
        :meth:`_narrowable` never where the chunks are assembled."""
        record, reduce_heads = entry.record, self.recorder.reduce_heads
        takes = getattr(getattr(reduce_heads, "__self__", None), "takes_dead_blocks", None)
        return (takes is not None and record.reduced is None and not self.session.tracing
                and record.part_of is None and entry.buffer is None and takes(record, causal))

    def _on_flash(self, entry: Entry, attention: Tensor, gradient: Tensor, first: int = 0,
                  heads: int | None = None, row: int = 0) -> bool:
        """A chunk of heads ``first, first + 1, ...`` (of query rows ``row, row + 1, ...``) of
        a flash call's maps, from its backward: reduced chunk by chunk where ``reduce_heads``
        can, else assembled, then recorded. Returns whether nothing keeps the chunk's tensors
        (their memory is free for the next chunk): a ``reduce_heads`` says so with a true
        ``keeps_no_chunk`` attribute; one with a true ``rows`` attribute takes blocks of rows
        (and the first row's index)."""
        record = entry.record
        if record.reduced is not None or self.session.tracing:
            return True  # one gradient pass per recording with reduce; or a tracing pass
        heads = attention.shape[1] if heads is None else heads
        n_query = record.shape[2] if row or attention.shape[2] != record.shape[2] else None
        last = first + attention.shape[1] >= heads and (
            n_query is None or row + attention.shape[2] >= n_query)
        reduce_heads = self.recorder.reduce_heads
        if reduce_heads is not None and record.part_of is None and entry.buffer is None:
            # (every head at once too)
            at_row = (row,) if getattr(reduce_heads, "rows", False) else ()
            done = reduce_heads(record, attention, gradient, first, heads, *at_row)
            if done is not NotImplemented:
                if last:
                    record.reduced, record.recompute = done, None
                return bool(getattr(reduce_heads, "keeps_no_chunk", False))
        if first == 0 and n_query is None and last:  # the whole map at once
            record.attention, record.recompute = attention, None
            self.recorder._set_gradient(entry, gradient)
            return False
        if entry.buffer is None:  # assemble the chunks into the whole map
            full = (record.shape[0], heads, n_query or attention.shape[2], attention.shape[3])
            entry.buffer = (attention.new_empty(full), gradient.new_empty(full))
        into = (slice(None), slice(first, first + attention.shape[1]),
                slice(row, row + attention.shape[2]))
        entry.buffer[0][into] = attention
        entry.buffer[1][into] = gradient
        if last:
            (record.attention, assembled), entry.buffer = entry.buffer, None
            record.recompute = None
            self.recorder._set_gradient(entry, assembled)
        return True
