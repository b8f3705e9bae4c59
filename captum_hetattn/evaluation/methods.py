r"""Attribution methods as token-relevance functions, so that all are scored the same way.

A *method* here is a callable ``(zoo_model, batch) -> {stream: (B, n_stream) relevance}``.
:func:`standard_methods` gives ours in every correction (and with the noise link), GAE, attention
rollout, raw attention, and Captum's ``IntegratedGradients``, ``Saliency`` and ``InputXGradient``.

Captum's gradient methods attribute the *float* inputs (region features and boxes, pixels, audio
features); their input-shaped attributions are summed back per token with the input mapping's
``to_tokens``. Integer inputs (token ids) cannot be attributed by them, so their streams are
absent from those methods' results (not scored, rather than scored as zero).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import Tensor

from captum_hetattn import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    RawAttention,
)
from captum_hetattn.mapping import default_mappings
from captum_hetattn.zoo import Batch, ZooModel

Method = Callable[[ZooModel, Batch], dict[str, Tensor]]
#: the attention-based attributions (one ``explain`` interface)
AttentionExplainer = (
    HeterogenousAttentionAttribution | GenericAttentionExplainability | AttentionRollout
    | RawAttention
)


def attention_method(cls: type[AttentionExplainer], **options: Any) -> Method:
    """One of our attention-based attributions, with ``explain`` options fixed."""

    def run(zoo: ZooModel, batch: Batch) -> dict[str, Tensor]:
        explainer = cls(
            zoo.forward_func, model=zoo.model, graph=zoo.graph, input_mappings=zoo.input_mappings
        )
        explanation = explainer.explain(
            batch.inputs, target=batch.targets,
            additional_forward_args=batch.additional_forward_args, **options,
        )
        return {s: r.detach() for s, r in explanation.relevance.items()}

    return run


def captum_method(cls: type, **options: Any) -> Method:
    """A Captum gradient attribution of the float inputs, summed back per token."""

    def run(zoo: ZooModel, batch: Batch) -> dict[str, Tensor]:
        inputs = batch.inputs if isinstance(batch.inputs, tuple) else (batch.inputs,)
        extra = tuple(batch.additional_forward_args or ())
        floating = [i for i, t in enumerate(inputs) if t.is_floating_point()]
        fixed = [i for i, t in enumerate(inputs) if not t.is_floating_point()]
        if not floating:  # token ids only (text-to-text): nothing these methods can attribute
            return {}

        def forward(*args: Tensor) -> Tensor:
            ordered: list[Any] = [None] * len(inputs)
            for position, value in zip(floating + fixed, args, strict=False):
                ordered[position] = value
            return zoo.forward_func(*ordered, *args[len(inputs):])

        with warnings.catch_warnings():
            # Captum announces that it switched requires_grad on for our (copied) inputs
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require")
            attributions = cls(forward).attribute(
                tuple(inputs[i].detach().clone() for i in floating),
                target=batch.targets,
                additional_forward_args=tuple(inputs[i] for i in fixed) + extra,
                **options,
            )
        sizes = zoo.stream_sizes(batch)
        mappings = zoo.input_mappings or default_mappings(inputs, sizes)
        relevance: dict[str, Tensor] = {}
        for position, attribution in zip(floating, attributions, strict=True):
            mapping = mappings[position]
            if not mapping.stream:
                continue
            tokens = mapping.to_tokens(attribution.detach(), sizes[mapping.stream])
            relevance[mapping.stream] = relevance.get(mapping.stream, 0) + tokens
        return relevance

    return run


def standard_methods(include_integrated_gradients: bool = True) -> dict[str, Method]:
    """Every method the evaluation compares, by display name."""
    methods: dict[str, Method] = {
        "ours (pos)": attention_method(HeterogenousAttentionAttribution, correction="pos"),
        "ours (full)": attention_method(HeterogenousAttentionAttribution, correction="full"),
        "ours (abs)": attention_method(HeterogenousAttentionAttribution, correction="abs"),
        "ours (noised)": attention_method(
            HeterogenousAttentionAttribution, correction="pos", noise_link=True
        ),
        "ours (value)": attention_method(
            HeterogenousAttentionAttribution, correction="pos", weighting="value"
        ),
        "GAE": attention_method(GenericAttentionExplainability),
        "rollout": attention_method(AttentionRollout),
        "raw attention": attention_method(RawAttention),
        "Saliency": captum_method(Saliency, abs=True),
        "InputXGradient": captum_method(InputXGradient),
    }
    if include_integrated_gradients:
        methods["IntegratedGradients"] = captum_method(
            IntegratedGradients, n_steps=16, internal_batch_size=256
        )
    return methods


def check_method_names(names: Sequence[str]) -> str | None:
    r"""What is wrong with a list of method names, or None when every one is a standard method.

    Args:
        names: display names (keys of :func:`standard_methods`).

    Returns:
        str or None: the message naming the unknown methods and the known ones.
    """
    known = standard_methods(include_integrated_gradients=True)
    unknown = [name for name in names if name not in known]
    return f"unknown method(s) {unknown}; choose from {sorted(known)}" if unknown else None


def select_methods(names: Sequence[str] | None = None, *,
                   include_integrated_gradients: bool = True) -> dict[str, Method]:
    r"""The standard methods named in ``names``, in that order.

    Args:
        names: display names; None or empty: every method of :func:`standard_methods`.
        include_integrated_gradients: with no ``names``, whether ``IntegratedGradients`` (the
            slowest) is among them.

    Returns:
        dict: display name → method.

    Raises:
        ValueError: a name that is not a standard method.
    """
    if not names:
        return standard_methods(include_integrated_gradients=include_integrated_gradients)
    problem = check_method_names(names)
    if problem:
        raise ValueError(problem)
    every = standard_methods(include_integrated_gradients=True)
    return {name: every[name] for name in names}


#: the methods of :func:`standard_methods` that attribute float inputs only (Captum's)
GRADIENT_METHODS = ("Saliency", "InputXGradient", "IntegratedGradients")


def has_float_inputs(zoo: ZooModel) -> bool:
    """Whether the zoo model's inputs hold a float tensor (region features, pixels, audio
    features) that Captum's gradient methods can attribute; token ids alone are not."""
    inputs = zoo.collate(zoo.make_examples(1, 0)).inputs
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    return any(isinstance(t, Tensor) and t.is_floating_point() for t in inputs)


def methods_for(zoo: ZooModel, names: Sequence[str] | None = None, *,
                include_integrated_gradients: bool = True) -> dict[str, Method]:
    r"""The methods :func:`select_methods` gives, for one zoo model: with no ``names``, every
    standard method that can attribute its inputs (Captum's gradient methods are left out of a
    model whose inputs are token ids only — ``minilm``, ``reverse_seq2seq`` —, where they
    would have nothing to attribute); named methods as named.

    Args:
        zoo: the zoo model.
        names: display names; None or empty: the methods that apply to ``zoo``.
        include_integrated_gradients: with no ``names``, whether ``IntegratedGradients`` is
            among them.

    Returns:
        dict: display name → method.
    """
    methods = select_methods(names, include_integrated_gradients=include_integrated_gradients)
    if names or has_float_inputs(zoo):
        return methods
    return {name: m for name, m in methods.items() if name not in GRADIENT_METHODS}


__all__ = [
    "GRADIENT_METHODS",
    "AttentionExplainer",
    "Method",
    "attention_method",
    "captum_method",
    "check_method_names",
    "has_float_inputs",
    "methods_for",
    "select_methods",
    "standard_methods",
]
