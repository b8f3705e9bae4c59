r"""Evaluation: localisation, perturbation and segmentation scores, Captum metric wrappers, and
a dataset runner that compares attribution methods on the same held-out examples."""

from captum_hetattn.evaluation.captum_metrics import infidelity_score, sensitivity_score
from captum_hetattn.evaluation.logical import (
    format_logical,
    logical_scores,
    run_logical_inspection,
)
from captum_hetattn.evaluation.methods import (
    Method,
    attention_method,
    captum_method,
    check_method_names,
    methods_for,
    select_methods,
    standard_methods,
)
from captum_hetattn.evaluation.odam import ODAM
from captum_hetattn.evaluation.runner import (
    EvaluationResult,
    MethodScores,
    StreamScores,
    evaluate,
    perturbation_curve,
)
from captum_hetattn.evaluation.scores import (
    IMAGE_FRACTIONS,
    TEXT_FRACTIONS,
    evidence_auc,
    otsu_threshold,
    perturbation_auc,
    pointing_chance,
    pointing_game,
    relevance_mass,
    segmentation_iou,
)
from captum_hetattn.evaluation.segmentation import (
    format_tables,
    run_detection_demo,
    run_segmentation,
    segmentation_methods,
)

__all__ = [
    "IMAGE_FRACTIONS",
    "TEXT_FRACTIONS",
    "EvaluationResult",
    "Method",
    "MethodScores",
    "ODAM",
    "StreamScores",
    "attention_method",
    "captum_method",
    "check_method_names",
    "evaluate",
    "evidence_auc",
    "format_logical",
    "format_tables",
    "infidelity_score",
    "logical_scores",
    "otsu_threshold",
    "perturbation_auc",
    "perturbation_curve",
    "pointing_chance",
    "pointing_game",
    "relevance_mass",
    "run_detection_demo",
    "run_logical_inspection",
    "run_segmentation",
    "segmentation_iou",
    "segmentation_methods",
    "methods_for",
    "select_methods",
    "sensitivity_score",
    "standard_methods",
]
