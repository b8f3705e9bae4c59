r"""The work of ``captum-hetattn demo`` on the two-stream VQA model (``shapes_vqa``): the examples
shown, every method's relevance on them, ours (pos) with every call's maps (for the image + text
figures and the views), the logical inspection's ``Contrast(yes, no)`` and the method table.
Drawing them and writing the report: :mod:`captum_hetattn.visualization.report`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from captum_hetattn import Contrast, Explanation, HeterogenousAttentionAttribution
from captum_hetattn.evaluation.methods import Method, select_methods
from captum_hetattn.evaluation.runner import EvaluationResult, evaluate
from captum_hetattn.zoo import Example, ZooModel, load

DEMO_MODEL = "shapes_vqa"
DISPLAY_SEED = 2024  # examples drawn for pictures; the table uses the evaluation seed
#: examples drawn (with DISPLAY_SEED) to find yes/no questions for the logical inspection
INSPECTION_POOL = 24


@dataclass
class Inspection:
    r"""The logical inspection of yes/no questions: ``Contrast(yes, no)`` under ``full``.

    Args:
        examples: the questions (one answered "yes", one "no" when the pool has them).
        explanation: the signed explanation of the contrast.
        margin: ``(B,)`` the model's logit of "yes" minus that of "no".
    """

    examples: list[Example]
    explanation: Explanation
    margin: Tensor


@dataclass
class DemoRun:
    r"""What the demo report shows.

    Args:
        zoo: the demo model.
        methods: display name → method (every method of the table).
        shown: the examples drawn in the report.
        relevance: method → stream → ``(len(shown), n_stream)`` relevance of ``shown``.
        explanation: ours (pos) with its maps on ``shown`` (or on one example when none is
            shown): the image + text figures, the readout token and the views.
        views_example: the example of the views (the first of ``explanation``).
        inspection: the logical inspection, or None when it cannot be drawn.
        evaluation: the method table.
    """

    zoo: ZooModel
    methods: dict[str, Method]
    shown: list[Example]
    relevance: dict[str, dict[str, Tensor]]
    explanation: Explanation
    views_example: Example
    inspection: Inspection | None
    evaluation: EvaluationResult


def explainer(zoo: ZooModel) -> HeterogenousAttentionAttribution:
    r"""Ours on a zoo model (its forward, graph and input mappings).

    Args:
        zoo: the zoo model.

    Returns:
        HeterogenousAttentionAttribution: the explainer.
    """
    return HeterogenousAttentionAttribution(
        zoo.forward_func, model=zoo.model, graph=zoo.graph, input_mappings=zoo.input_mappings
    )


def explain_examples(
    zoo: ZooModel, examples: list[Example], methods: dict[str, Method]
) -> dict[str, dict[str, Tensor]]:
    r"""Every method's token relevance of ``examples`` (one batch).

    Args:
        zoo: the zoo model.
        examples: the examples.
        methods: display name → method.

    Returns:
        dict: method → stream → ``(len(examples), n_stream)`` relevance.
    """
    batch = zoo.collate(examples)
    return {name: method(zoo, batch) for name, method in methods.items()}


def explain_with_maps(zoo: ZooModel, examples: list[Example]) -> Explanation:
    r"""Ours (pos) on ``examples`` with every call's maps kept (for the views).

    Args:
        zoo: the zoo model.
        examples: the examples.

    Returns:
        Explanation: with ``call_maps``.
    """
    batch = zoo.collate(examples)
    return explainer(zoo).explain(
        batch.inputs, target=batch.targets, additional_forward_args=batch.additional_forward_args,
        correction="pos", return_maps=True,
    )


def yes_no_examples(pool: list[Example]) -> list[Example]:
    r"""The first example of ``pool`` whose answer is "yes" and the first whose answer is "no"
    (fewer when the pool lacks one).

    Args:
        pool: ``shapes_vqa`` examples.

    Returns:
        list: at most two examples.
    """
    from captum_hetattn.zoo.shapes_vqa import ANSWER_ID

    chosen: list[Example] = []
    for answer in ("yes", "no"):
        chosen += [e for e in pool if e.label == ANSWER_ID[answer]][:1]
    return chosen


def inspect_yes_no(zoo: ZooModel, examples: list[Example]) -> Inspection | None:
    r"""The paper's Fig. 8 on yes/no questions: ``Contrast(yes, no)`` under the ``full``
    correction (positive = evidence for "yes", negative = for "no").

    Args:
        zoo: ``shapes_vqa``.
        examples: the questions (:func:`yes_no_examples`).

    Returns:
        Inspection or None: None when there is no example, or one has no picture or no text.
    """
    from captum_hetattn.zoo.shapes_vqa import ANSWER_ID

    if not examples or any(e.image is None or not e.tokens.get("text") for e in examples):
        return None
    batch = zoo.collate(examples)
    objective = Contrast(ANSWER_ID["yes"], ANSWER_ID["no"])
    explanation = explainer(zoo).explain(
        batch.inputs, objective=objective, correction="full",
        additional_forward_args=batch.additional_forward_args,
    )
    with torch.no_grad():
        margin = objective(zoo.forward_func(*batch.inputs, *batch.additional_forward_args))
    return Inspection(examples, explanation, margin)


def run_vqa_demo(n: int, n_show: int, seed: int, with_ig: bool = True) -> DemoRun:
    r"""Everything the demo report shows, computed in the order the report was always computed
    (the noised method draws from torch's generator).

    Args:
        n: examples of the method table (drawn with ``seed``).
        n_show: examples drawn in the report (drawn with :data:`DISPLAY_SEED`).
        seed: the evaluation's seed.
        with_ig: also IntegratedGradients.

    Returns:
        DemoRun: the explanations and the method table.
    """
    zoo = load(DEMO_MODEL)
    methods = select_methods(None, include_integrated_gradients=with_ig)
    # the same seed draws the same examples first: the shown ones are the pool's first n_show
    pool = zoo.make_examples(max(n_show, INSPECTION_POOL), DISPLAY_SEED)
    shown = pool[:n_show]
    relevance = explain_examples(zoo, shown, methods) if shown else {}
    # ours (pos) with its maps, for the image + text figures, the readout token and the views
    maps_examples = shown or pool[:1]
    explanation = explain_with_maps(zoo, maps_examples)
    inspection = inspect_yes_no(zoo, yes_no_examples(pool))
    result = evaluate(zoo, methods, n=n, seed=seed)
    return DemoRun(zoo, methods, shown, relevance, explanation, maps_examples[0], inspection,
                   result)


__all__ = [
    "DEMO_MODEL",
    "DISPLAY_SEED",
    "INSPECTION_POOL",
    "DemoRun",
    "Inspection",
    "explain_examples",
    "explain_with_maps",
    "explainer",
    "inspect_yes_no",
    "run_vqa_demo",
    "yes_no_examples",
]
