r"""Windowed calls over zero-padded slots (SAM's and SAM3's ViT, MaskFormer's Swin, any Swin at a
size that is not a multiple of its window): the layer pads its tokens with zero rows up to whole
windows, the model attends to the padded slots (no mask hides them) and crops their outputs.

A padded slot holds no token: its hidden state is zero, so its keys and values are the
projections' biases (plus position terms), computed from no input. Like a learned parameter
token it takes part in the softmax — the mass on it is attention the model really spends — but it
carries no input relevance, and since the layer pads fresh zeros at every call and crops them
after, its relevance row is zero at every call. Under the rule ``R += Ā·R`` its columns add
nothing (their rows of ``R`` are zero) and its rows are never read (their outputs are cropped),
so the exact dense map is the one over the layer's tokens with the padded slots left out: the
entries of ``∇A ⊙ A`` that are kept are the model's own, and the mass on padding goes nowhere.

The layouts drop slots that read no token; this module checks, independently of the probes that
found them, that every dropped slot is such padding: an all-zero row of the module's own input,
whose output no token of the layer's output reads, with each kept query row's mass on kept keys
plus its mass on those padded slots equal to one. A call whose dropped slots fail a check is
refused by name.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from captum_hetattn.binding.canonical import _GENERATOR, TokenLayout, _Canonical
from captum_hetattn.binding.tokens import _restore_layout, tokens_view
from captum_hetattn.capture import AttentionRecord, autograd_node

#: how far a kept query row's mass (kept keys plus padded keys) may be from one
MASS_TOLERANCE = 1e-3
#: the largest part of a layer's autograd graph walked for parameters feeding its input
_WALK = 4096


def zero_slots(record: AttentionRecord) -> Tensor | None:
    r"""``(parts, slots)``: which slots of a self-attention call's raw map are all-zero rows
    of the module's own input (``None`` when that input is not laid out like the map's
    slots)."""
    hidden = record.query_input
    if (record.role != "self" or hidden is None or record.key_input is not None
            or len(record.shape) != 4 or record.shape[2] != record.shape[3]):
        return None
    slots = tokens_view(hidden, record.token_dim)
    if tuple(slots.shape[:2]) != (record.shape[0], record.shape[2]):
        return None
    return (slots == 0).all(dim=-1)


def padded_rows(record: AttentionRecord) -> Tensor | None:
    """The number of all-zero rows of each example's slots (``None`` without a grid of them)."""
    zero = zero_slots(record)
    return None if zero is None else zero.sum(dim=1)


def key_padding(record: AttentionRecord) -> Tensor | None:
    r"""``(parts, 1, 1, slots)``: the entries of a self-attention call's raw map whose key slot
    is an all-zero row of its input (mass there may be padding; :func:`unverified_padding`
    decides once the call is laid out)."""
    zero = zero_slots(record)
    return None if zero is None or not bool(zero.any()) else zero[:, None, None, :]


def outputs_read(record: AttentionRecord, output: Tensor | None, slots: Tensor) -> bool | None:
    r"""Whether any element of ``output`` (the enclosing layer's output) is computed from the
    module's outputs at ``slots`` ``(parts, slots)``: one backward pass; ``None`` where it
    cannot be told (no output, or the module's output is not laid out like its input)."""
    own = record.output
    if (output is None or own is None or record.query_input is None
            or own.shape != record.query_input.shape or not output.requires_grad
            or not own.requires_grad):
        return None
    cotangent = torch.randn(output.shape, generator=_GENERATOR).to(output)
    (grad,) = torch.autograd.grad(output, own, cotangent, retain_graph=True, allow_unused=True)
    if grad is None:
        return False
    return bool(tokens_view(grad, record.token_dim)[slots.to(grad.device)].ne(0).any())


def learned_rows(record: AttentionRecord, slots: Tensor, stop: object = None) -> bool:
    r"""Whether the module's input rows at ``slots`` ``(parts, slots)`` are computed from
    learned parameters (zero-initialised tokens the module adds, such as GroupViT's group
    tokens before training), not zero padding: a backward pass from those rows reaches a
    parameter met on the graph above ``stop`` (the layer's input)."""
    hidden = record.query_input
    root = autograd_node(hidden)
    if hidden is None or root is None or stop is None:
        return False
    parameters, seen, stack = [], {root}, [root]
    while stack and len(seen) <= _WALK:
        node = stack.pop()
        variable = getattr(node, "variable", None)
        if isinstance(variable, nn.Parameter):
            parameters.append(variable)
        for child, _ in getattr(node, "next_functions", ()):
            if child is not None and child not in seen and child is not stop:
                seen.add(child)
                stack.append(child)
    if stack or not parameters:  # past the walk's bound: the layer's input not met
        return False
    view = tokens_view(torch.zeros_like(hidden), record.token_dim)
    view[slots.to(view.device)] = torch.randn(view[slots.to(view.device)].shape,
                                              generator=_GENERATOR).to(view)
    grads = torch.autograd.grad(hidden, parameters, _restore_layout(view, hidden,
                                                                    record.token_dim),
                                retain_graph=True, allow_unused=True)
    return any(g is not None and bool(g.ne(0).any()) for g in grads)


def _kept_slots(record: AttentionRecord, raw: Tensor) -> tuple[Tensor, Tensor]:
    r"""Which slots of one raw map ``(parts, H, n, n)`` its kept entries (flat indices
    ``raw``) use as queries and as keys, ``(parts, n)`` each."""
    parts, heads, n, _ = record.shape
    row = raw.div(n, rounding_mode="floor")  # (part, head, query) flattened
    part = row.div(heads * n, rounding_mode="floor") * n
    query_kept = torch.zeros(parts * n, dtype=torch.bool, device=raw.device)
    key_kept = query_kept.clone()
    query_kept[part + row % n] = True
    key_kept[part + raw % n] = True
    return query_kept.view(parts, n).cpu(), key_kept.view(parts, n).cpu()


def _kept_mass(record: AttentionRecord, raw: Tensor, weight: Tensor | None) -> Tensor:
    r"""``(parts, H, n)``: each row's mass on the entries the layout keeps."""
    parts, heads, n, _ = record.shape
    mass = record.attention.reshape(-1)[raw.to(record.attention.device)].double().cpu()
    if weight is not None:
        mass = mass * weight.to(mass)
    rows = raw.div(n, rounding_mode="floor").cpu()
    return torch.zeros(parts * heads * n, dtype=torch.float64).index_add_(
        0, rows, mass).view(parts, heads, n)


def unverified_padding(group: list[AttentionRecord], layout: TokenLayout,
                       output: Tensor | None) -> str | None:
    r"""Why the slots the layout of a windowed self-attention call leaves out are not zero
    padding (see the module docstring), or ``None`` when they are, when it leaves none out, or
    when its maps' slots are not rows of its own input (bands, blocks: their layouts check
    their own mass).

    Args:
        group: the call's raw maps (their attention materialised).
        layout: the layout found for them.
        output: the enclosing layer's output (the stream after the call).
    """
    offset = 0
    for record in group:
        size = math.prod(record.shape)
        zero = zero_slots(record)
        if zero is None:
            offset += size
            continue
        if len(group) == 1 and layout.raw_index.numel() == size and layout.weight is None:
            continue  # every entry kept once (a window partition without padding)
        mine = (layout.raw_index >= offset) & (layout.raw_index < offset + size)
        if not bool(mine.any()):  # a map of the call the layout does not read at all (LiLT's
            offset += size        # text map beside its layout one): no slot of it is padding
            continue
        raw = layout.raw_index[mine] - offset
        query_kept, key_kept = _kept_slots(record, raw)
        offset += size
        if bool((query_kept & key_kept).all()):
            continue  # every slot a token
        dropped, zero = ~query_kept & ~key_kept, zero.cpu()
        strays = int(((query_kept != key_kept) | (dropped & ~zero)).sum())
        if strays:
            return (f"{strays} of the slots it leaves out are not all-zero rows of its input "
                    "(not padding)")
        read = outputs_read(record, output, dropped)
        if read is None or read:
            return ("the outputs of its left-out slots are read by the layer's tokens (they "
                    "are tokens the module adds, not padding)" if read else
                    "whether the layer crops the outputs of its left-out slots cannot be traced")
        held = _kept_mass(record, raw, layout.weight[mine] if layout.weight is not None
                          else None)
        attention = record.attention
        on_padding = (attention * dropped[:, None, None, :].to(attention)).sum(
            dim=-1, dtype=torch.float64)
        off = (held + on_padding.cpu() - 1).abs()[query_kept[:, None, :].expand_as(held)]
        if off.numel() and float(off.max()) > MASS_TOLERANCE:
            return (f"a kept query row's mass on kept keys and padded keys sums to "
                    f"{1 - float(off.max()):.3g}, not 1 (mass on entries the layout loses)")
    return None


def attends_to_padding(record: AttentionRecord, layer: _Canonical, describe: str,
                       why: str) -> str:
    r"""The refusal of a call whose slots are its layer's tokens padded with zero rows, when
    the slots left out of its layout cannot be verified as padding.

    Args:
        record: the call's map, ``(batch, heads, slots, slots)``.
        layer: the enclosing layer's hidden states (fewer tokens than slots).
        describe: the call, as error messages name it.
        why: what the check found.
    """
    return (f"{describe} runs over {record.n_query} slots per example: the {layer.size} "
            f"tokens of {layer.where} and {record.n_query - layer.size} all-zero slots, "
            f"but {why}; a slot left out of the explanation must be padding (an all-zero "
            "row whose output is cropped), so this call cannot be explained exactly; use an "
            "input whose token grid fills its windows or explain another model")


def dropped_not_padding(describe: str, why: str) -> str:
    r"""The refusal of a windowed call whose layout leaves out slots that are not verified
    zero padding."""
    return (f"{describe}: its layout leaves out the slots that read no token of the layer, "
            f"but {why}; only zero padding (an all-zero row whose output is cropped) may be "
            "left out, so this call cannot be explained exactly")

