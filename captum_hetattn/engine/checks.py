r"""What would fail deep inside the model, or silently, is checked before the forward: the
inputs, the targets and objectives, the model (meta device, active dropout) and the options."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from captum_hetattn.engine.readout import check_readout_token, is_int
from captum_hetattn.engine.report import Report
from captum_hetattn.engine.values import check_weighting
from captum_hetattn.objectives import Contrast, Objective, Ratio, RelativeContrast, Target

STAGES = (None, "homogeneous")


def check_call(model: nn.Module, report: Report, inputs: tuple[Any, ...], target: Target,
               objective: Objective | None, readout: Any) -> None:
    r"""Check one call's inputs, target, objective and readout, and the model, before the
    forward (the model's dropout is only reported).

    Args:
        model: the module explained.
        report: where the warnings go.
        inputs: the formatted inputs.
        target: Captum's target.
        objective: the objective, or ``None``.
        readout: the ``readout`` argument.
    """
    check_autograd(inputs)
    check_inputs(inputs)
    check_target(target)
    if isinstance(objective, (Contrast, Ratio, RelativeContrast)):
        check_target(objective.a, f"{type(objective).__name__}.a")
        check_target(objective.b, f"{type(objective).__name__}.b")
    if isinstance(readout, Mapping):
        for stream, value in readout.items():
            check_readout_token(value, f"readout['{stream}']")
    elif readout is not None:
        check_readout_token(readout, "readout")
    check_not_meta(model)
    dropout = active_dropout(model)
    if dropout is not None:
        report.train_mode(type(model).__name__, dropout)


def check_inputs(inputs: tuple[Any, ...]) -> None:
    """Inputs are batched along their first dimension (Captum's contract)."""
    if not inputs:
        raise ValueError("no inputs: give a tensor or a tuple of tensors")
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"input {position} is a {type(tensor).__name__}, not a tensor; pass arguments "
                "that are not attributed as additional_forward_args"
            )
        shape = tuple(tensor.shape)
        if tensor.is_meta:
            raise ValueError(f"input {position} is on the 'meta' device: it holds no values")
        if tensor.dim() == 0:
            raise ValueError(
                f"input {position} is a 0-d tensor: inputs are batched along their first "
                "dimension (x[None] for one example)"
            )
        if shape[0] == 0:
            raise ValueError(f"input {position} has an empty batch (shape {shape}): nothing to "
                             "explain")
        if 0 in shape[1:]:
            raise ValueError(f"input {position} of shape {shape} is empty along dimension "
                             f"{shape.index(0, 1)}: no tokens to explain")
        if (tensor.dim() == 3 and shape[1] == 1 and not tensor.is_floating_point()
                and tensor.dtype != torch.bool):  # boxes (batch, tokens, 4) are integers too
            raise ValueError(
                f"input {position} of shape {shape} holds integer ids with a dimension of size "
                "1 too many: token ids are (batch, tokens), so pass ids[:, 0] (or "
                "ids.squeeze(1))"
            )
        if tensor.dim() == 1 and not tensor.is_floating_point():
            raise ValueError(
                f"input {position} of shape {shape} has no batch dimension: token ids are "
                "(batch, tokens), so pass ids[None] for one example (a per-example value "
                "belongs in additional_forward_args)"
            )
        check_finite(tensor, f"input {position}")


def _is_binary(tensor: Tensor) -> bool:
    if tensor.dtype == torch.bool:
        return True
    if tensor.is_complex():
        return False
    return bool(((tensor == 0) | (tensor == 1)).all())


def check_mask_lengths(inputs: Sequence[Any], extra: Sequence[Any]) -> None:
    r"""An attention mask of another length than the token ids it masks is refused before the
    forward (models broadcast it, index past it or fail deep inside; BERT explained such a
    call without a word).

    A mask is a 2-D tensor of 0/1 values (bool, integer or float); the ids, 2-D integer
    tensors with other values. Only where the ids have one length (one token sequence) and a
    mask's length is neither theirs nor the token count of a float input (region features with
    their own mask) is the mask refused, naming both arguments.
    """
    named = [(f"input {i}", t) for i, t in enumerate(inputs)] + [
        (f"additional_forward_args[{i}]", t) for i, t in enumerate(extra)]
    named = [(n, t) for n, t in named if isinstance(t, Tensor) and t.dim() >= 2]
    ids = [(n, t) for n, t in named if t.dim() == 2 and not t.is_floating_point()
           and not _is_binary(t)]
    lengths = {t.shape[1] for _, t in ids}
    if len(lengths) != 1:
        return
    (length,) = lengths
    batch = ids[0][1].shape[0]
    other = {size for _, t in named if t.is_floating_point() and not (
        t.dim() == 2 and _is_binary(t)) for size in t.shape[1:3]}
    for name, tensor in named:
        if (tensor.dim() == 2 and tensor.shape[0] == batch and tensor.shape[1] != length
                and tensor.shape[1] not in other and _is_binary(tensor)):
            raise ValueError(
                f"{name} of shape {tuple(tensor.shape)} looks like an attention mask (0/1 "
                f"values) but the token ids ({ids[0][0]}, shape {tuple(ids[0][1].shape)}) "
                f"have {length} tokens: a mask has one entry per token, shape ({batch}, "
                f"{length})"
            )


def all_finite(tensor: Tensor) -> bool:
    r"""Whether every element of a float tensor is finite. A NaN or an infinity makes the sum
    non-finite, so a finite sum answers in one pass without a boolean copy (4 passes); a sum
    that overflows from finite values falls back to the element-wise check."""
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def check_finite(tensor: Tensor, what: str) -> None:
    r"""A NaN or an infinity in a float input makes its example's relevance NaN everywhere:
    refused, naming the example and the first element at fault."""
    if not tensor.is_floating_point() or all_finite(tensor):
        return
    bad = (~torch.isfinite(tensor.detach())).nonzero()[0].tolist()
    value = tensor.detach()[tuple(bad)].item()
    raise ValueError(
        f"{what} holds {value} at {tuple(bad)} (example {bad[0]}): a non-finite value makes "
        "that example's relevance NaN everywhere; replace it (torch.nan_to_num) or drop the "
        "example"
    )


def check_autograd(inputs: tuple[Any, ...]) -> None:
    r"""Explanations are computed from gradients: refuse ``torch.inference_mode()`` and inputs
    made under it (``torch.no_grad()`` is fine: the explainers turn grad on themselves)."""
    made = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.is_inference()]
    if torch.is_inference_mode_enabled() or made:
        where = (f"input(s) {made} were made under torch.inference_mode()" if made and
                 not torch.is_inference_mode_enabled() else "torch.inference_mode() is on")
        raise RuntimeError(
            f"{where}: explanations need autograd (the attention maps' gradients), which "
            "inference mode switches off; call attribute / explain outside "
            "torch.inference_mode() (torch.no_grad() is fine) and make the inputs there too"
        )


def check_target(target: Target, what: str = "target") -> None:
    r"""Captum's target forms, checked before the forward: an int, a tuple of ints, an integer
    tensor (0-d, or one index per example) or a list of one int or tuple per example. Negative
    indices count from the end where Captum indexes (int, tuple, list of tuples), not where it
    gathers (a per-example tensor or list of ints)."""
    forms = ("an int, a tuple of ints, an integer tensor or a list of ints or tuples (one per "
             "example)")
    if target is None or is_int(target):
        return
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(
                f"{what} is a {target.dtype} tensor; target indices must be integers "
                f"(e.g. {what.split('.')[-1]}.long())"
            )
        if target.dim() > 1 and target.numel() != 1:
            raise ValueError(
                f"{what} tensor has shape {tuple(target.shape)}; give a 0-d tensor or one index "
                "per example, shape (batch,)"
            )
        if target.numel() > 1:
            check_gathered(target.tolist(), what)
        return
    if isinstance(target, tuple):
        if target and all(is_int(i) for i in target):
            return
        raise TypeError(f"{what} {target!r} must be a non-empty tuple of ints")
    if isinstance(target, list):
        if not target:
            raise ValueError(f"{what} is an empty list; give one index per example")
        if all(is_int(t) for t in target):
            check_gathered(target, what)
            return
        if all(isinstance(t, tuple) and t and all(is_int(i) for i in t) for t in target):
            return
        kinds = sorted({type(t).__name__ for t in target})
        raise TypeError(f"{what} list holds {', '.join(kinds)}: it must be {forms}")
    raise TypeError(f"{what} must be {forms}, got {type(target).__name__} {target!r}")


def check_gathered(indices: list[int], what: str) -> None:
    negative = next(((i, v) for i, v in enumerate(indices) if v < 0), None)
    if negative is not None:
        raise ValueError(
            f"{what} for example {negative[0]} is {negative[1]}: a per-example tensor or list "
            "of ints is gathered, which does not count from the end; give indices >= 0"
        )


def check_not_meta(model: nn.Module) -> None:
    """A model on the ``meta`` device has shapes but no values: say so before the forward."""
    named = chain(model.named_parameters(), model.named_buffers())
    meta = next((name for name, tensor in named if tensor.is_meta), None)
    if meta is not None:
        raise ValueError(
            f"{type(model).__name__} is on the 'meta' device (first: '{meta}'): it has no "
            "weights to run; load them (to_empty() and load_state_dict, or from_pretrained "
            "without a meta device map) before explaining"
        )


def active_dropout(model: nn.Module) -> str | None:
    """Where dropout acts in a forward: a dropout module with ``p > 0`` in training mode, or
    for a model in train() mode a drop rate in its config (attention dropout, LayerDrop, drop
    path), which models apply without a module."""
    for name, module in model.named_modules():
        if not module.training:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"module '{name}', p={module.p}"
        if isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
            return f"module '{name}', dropout={module.dropout}"
    config = getattr(model, "config", None)
    if model.training and hasattr(config, "to_dict"):
        rates = drop_rates(config.to_dict())
        if rates:
            return f"config {rates[0][0]}={rates[0][1]}"
    return None


def drop_rates(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    rates: list[tuple[str, float]] = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            rates += drop_rates(value, f"{prefix}{key}.")
        elif isinstance(value, float) and value > 0 and "drop" in str(key):
            rates.append((f"{prefix}{key}", value))
    return rates


def check_options(
    explainer: str,
    correction: Any,
    noise_link: bool,
    weighting: str | None,
    stage: str | None,
    *,
    uses_gradient: bool,
    weighs_values: bool,
    noise_link_refusal: str | None,
) -> None:
    r"""The method's options, checked once per call.

    Args:
        explainer: the explainer's class name (for the messages).
        correction: the correction (after the class default).
        noise_link: the ``noise_link`` argument.
        weighting: the ``weighting`` argument.
        stage: the ``stage`` argument.
        uses_gradient: whether the method takes a gradient correction (else only ``"none"``).
        weighs_values: whether ``weighting="value"`` is an option of the method.
        noise_link_refusal: why the method refuses ``noise_link=True`` (``None``: it takes it).
    """
    if noise_link and noise_link_refusal is not None:
        raise ValueError(noise_link_refusal)
    if not uses_gradient and correction != "none":
        raise ValueError(
            f"{explainer} uses no gradient: correction must be 'none', got {correction!r}"
        )
    check_weighting(weighting)
    if weighting is not None and not weighs_values:
        raise ValueError(
            f"weighting={weighting!r} is an option of HeterogenousAttentionAttribution, not "
            f"of {explainer}"
        )
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def _non_finite_parameter(model: nn.Module) -> str:
    """Where a NaN inside the model comes from: its first non-finite parameter or buffer."""
    named = chain(model.named_parameters(), model.named_buffers())
    culprit = next((name for name, t in named
                    if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if culprit is None:
        return "e.g. an overflow; check the model's output for these examples"
    return f"the model's '{culprit}' holds a NaN or an infinity"


def _batch_of(record: Any) -> int | None:
    """The batch of a record's output (its map's first dimension otherwise)."""
    for tensor in (record.output, record.attention):
        if isinstance(tensor, Tensor) and tensor.dim() >= 2:
            return tensor.shape[0]
    return None


def check_finite_calls(records: Sequence[Any], model: nn.Module) -> None:
    r"""After the forward: the first attention call whose output is not finite (its inputs were
    checked) is refused by name and example, before the binding would misread it."""
    for record in records:
        # its output and its per-head queries and keys (a kernel can give a finite output
        # from NaN scores); the maps themselves are not read (one pass over every map)
        tensors = [record.output, *(record.states or ())]
        tensors = [t for t in tensors if isinstance(t, Tensor) and t.is_floating_point()
                   and t.dim() >= 2 and t.shape[0] == _batch_of(record)]
        if all(all_finite(t.detach()) for t in tensors):
            continue
        finite = torch.stack([torch.isfinite(t.detach()).reshape(t.shape[0], -1).all(1)
                              for t in tensors]).all(0)
        if bool(finite.all()):
            continue
        examples = (~finite).nonzero().flatten().tolist()
        raise ValueError(
            f"attention module '{record.name}' [call {record.call_index}] gives a NaN or an "
            f"infinity for example(s) {examples} although the inputs are finite: "
            f"{_non_finite_parameter(model)}"
        )


def check_finite_relevance(relevance: Mapping[str, Tensor], model: nn.Module) -> None:
    r"""A NaN or an infinity that arose inside the model (a non-finite weight or activation;
    the inputs were checked before the forward) is refused, naming the example and source (and
    the first non-finite parameter or buffer, if one is), instead of a relevance that is NaN."""
    for source, value in relevance.items():
        if all_finite(value.detach()):
            continue
        finite = torch.isfinite(value.detach()).reshape(value.shape[0], -1).all(1)
        if bool(finite.all()):
            continue
        examples = (~finite).nonzero().flatten().tolist()
        raise ValueError(
            f"the relevance of example(s) {examples} (source '{source}') is not finite: a NaN "
            "or an infinity arose inside the model (its inputs are finite): "
            f"{_non_finite_parameter(model)}"
        )


def check_flag(name: str, value: Any) -> None:
    """A yes/no option is a bool (``include_own="no"`` would otherwise read as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")



_IN_PLACE_LEAF = "a leaf Variable that requires grad is being used in an in-place operation"


def in_place_input(error: RuntimeError, model: nn.Module) -> ValueError | None:
    r"""The refusal for a forward that modifies a float input in place (autograd forbids it on
    the leaf tensors the inputs are traced as), naming the innermost module of ``model`` on
    the failing stack; ``None`` for any other error."""
    if _IN_PLACE_LEAF not in str(error):
        return None
    names = {id(module): name for name, module in model.named_modules()}
    at, frame = "", error.__traceback__
    while frame is not None:
        owner = frame.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            at = f" (in '{names[id(owner)] or type(owner).__name__}', {type(owner).__name__})"
        frame = frame.tb_next
    return ValueError(
        f"the model modifies a float input in place{at}: each float input is traced as a leaf "
        "tensor that requires grad, which autograd does not let the model modify; pass it a "
        "copy (e.g. forward_func=lambda x, *rest: f(x.clone(), *rest))"
    )
