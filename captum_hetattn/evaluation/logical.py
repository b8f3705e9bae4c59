r"""Logical inspection measured (paper §5.2, Fig. 8) on ``shapes_vqa``.

The paper explains a yes/no answer of LXMERT with the contrast ``logit_yes − logit_no`` under the
``full`` gradient correction and reads the signed map: red (positive) = evidence for "yes", blue
(negative) = evidence for "no" — "is there a zebra?": the zebra red, the elephant blue. With a
single logit as the objective (Fig. 8a) the maps are "not satisfactory". Here that claim is
turned into numbers on questions ``is there a <colour> <shape> ?`` whose scenes we know:

- **positive → named object**: on questions whose named object is in the scene, how often the
  most positive image region is that object (pointing), and the share of the positive mass on
  it;
- **negative → distractor**: on questions whose scene holds a *distractor* — an object sharing
  exactly one of the named colour and shape (a red square or a blue circle for "a red circle") —
  how often the most negative region is a distractor, and the share of the negative mass on
  distractors.

Every objective is scored with the same sign convention, positive = towards "yes":
``Contrast(yes, no)`` as is; ``target=yes`` as is; ``target=no`` negated; the answer's own logit
(Fig. 8a) and ``Contrast(answer, other)`` (Fig. 8b) negated where the answer is "no". Chance is
the pointing rate of a region drawn uniformly among the scene's objects.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_hetattn import Contrast, HeterogenousAttentionAttribution
from captum_hetattn.zoo import ZooModel

#: objective name → (explain options for a batch, sign per example) given yes/no ids and the
#: predicted answers; the sign makes positive = towards "yes" for every row
ObjectiveSpec = Callable[[int, int, Tensor], tuple[dict[str, Any], Tensor]]


def _fixed(options: Callable[[int, int], dict[str, Any]], sign: float) -> ObjectiveSpec:
    def spec(yes: int, no: int, answers: Tensor) -> tuple[dict[str, Any], Tensor]:
        return options(yes, no), torch.full((len(answers),), sign)

    return spec


def _by_answer(contrast: bool) -> ObjectiveSpec:
    def spec(yes: int, no: int, answers: Tensor) -> tuple[dict[str, Any], Tensor]:
        said_yes = answers == yes
        own = torch.where(said_yes, yes, no)
        other = torch.where(said_yes, no, yes)
        options = ({"objective": Contrast(own.tolist(), other.tolist())} if contrast
                   else {"target": own.tolist()})
        return options, torch.where(said_yes, 1.0, -1.0)

    return spec


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "Contrast(yes, no)": _fixed(lambda yes, no: {"objective": Contrast(yes, no)}, 1.0),
    "target=yes": _fixed(lambda yes, no: {"target": yes}, 1.0),
    "target=no (negated)": _fixed(lambda yes, no: {"target": no}, -1.0),
    "answer logit (Fig. 8a)": _by_answer(contrast=False),
    "Contrast(answer, other) (Fig. 8b)": _by_answer(contrast=True),
}


def _load(zoo: ZooModel | str | None) -> ZooModel:
    if zoo is None or isinstance(zoo, str):
        from captum_hetattn.zoo import load

        return load(zoo or "shapes_vqa")
    return zoo


def logical_scores(relevance: Tensor, named: Tensor, distractor: Tensor, occupied: Tensor
                   ) -> dict[str, float | int]:
    r"""Scores of signed image relevance ``(B, n)`` (positive = towards "yes").

    Args:
        named, distractor, occupied: ``(B, n)`` bool, the named object's regions, the
            distractors' regions, the regions holding any object.

    Returns:
        ``positive_point`` / ``positive_mass`` / ``positive_chance`` over the examples whose
        named object is present (``n_named``), ``negative_point`` / ``negative_mass`` /
        ``negative_chance`` over those with a distractor (``n_distractor``). A map without a
        positive (negative) value scores 0 there.
    """
    relevance = relevance.detach().float()
    positive, negative = relevance.clamp(min=0), (-relevance).clamp(min=0)
    rows = torch.arange(relevance.shape[0])
    scores: dict[str, float | int] = {}
    for side, mass, truth in (("positive", positive, named), ("negative", negative, distractor)):
        keep = truth.any(dim=1)
        top = mass.argmax(dim=1)
        hit = truth[rows, top] & (mass.max(dim=1).values > 0)
        total = mass.sum(dim=1)
        share = torch.where(total > 0, (mass * truth).sum(dim=1) / total.clamp(min=1e-30),
                            torch.zeros_like(total))
        chance = truth.sum(dim=1) / occupied.sum(dim=1).clamp(min=1)
        count = int(keep.sum())
        scores[f"n_{'named' if side == 'positive' else 'distractor'}"] = count
        for name, values in (("point", hit.float()), ("mass", share), ("chance", chance)):
            scores[f"{side}_{name}"] = float(values[keep].mean()) if count else float("nan")
    return scores


def run_logical_inspection(
    zoo: ZooModel | str | None = None,
    n: int = 400,
    seed: int = 12345,
    out_dir: str | Path | None = None,
    *,
    correction: str = "full",
    objectives: Mapping[str, ObjectiveSpec] | None = None,
    n_figure: int = 4,
) -> dict[str, Any]:
    r"""Draw ``n`` held-out ``shapes_vqa`` examples, keep the ``is there a … ?`` questions and
    score each objective's image map (:func:`logical_scores`) under ``correction``.

    Returns:
        A JSON-ready dict: ``rows`` (objective → scores), ``rows_by_answer`` (the same on the
        questions whose true answer is ``"yes"`` / ``"no"``), ``n_questions``, ``n_yes``,
        ``accuracy`` (the model's, on these questions), ``correction``, ``seconds``, and
        ``figure_png`` (PNG bytes of the Fig. 8-like figure: the first ``n_figure // 2`` "yes"
        and "no" questions, single logit above, contrast below; left out of the JSON file).
        With ``out_dir``, writes ``logical_inspection.json`` and ``logical_inspection.png``.
    """
    from captum_hetattn.zoo.shapes_vqa import ANSWER_ID, distractor_cells, named_object

    start = time.perf_counter()
    zoo = _load(zoo)
    examples = [e for e in zoo.make_examples(n, seed)
                if getattr(e, "question", None) is not None and named_object(e.question)]
    if not examples:
        raise ValueError(f"no 'is there a … ?' question among {n} examples (seed {seed})")
    batch = zoo.collate(examples)
    named = batch.evidence["image"].bool()
    distractor = torch.from_numpy(np.stack(
        [distractor_cells(e.scene, e.question) for e in examples]))  # type: ignore[attr-defined]
    occupied = torch.from_numpy(np.stack([e.scene.colors >= 0 for e in examples]))  # type: ignore[attr-defined]
    yes, no = ANSWER_ID["yes"], ANSWER_ID["no"]
    with torch.no_grad():
        logits = zoo.forward_func(*batch.inputs, *(batch.additional_forward_args or ()))
    answers = torch.where(logits[:, yes] >= logits[:, no], yes, no)
    explainer = HeterogenousAttentionAttribution(
        zoo.forward_func, model=zoo.model, graph=zoo.graph, input_mappings=zoo.input_mappings)
    rows: dict[str, dict[str, float | int]] = {}
    by_answer: dict[str, dict[str, dict[str, float | int]]] = {}
    maps: dict[str, Tensor] = {}
    for name, spec in (OBJECTIVES if objectives is None else objectives).items():
        options, sign = spec(yes, no, answers)
        explanation = explainer.explain(
            batch.inputs, additional_forward_args=batch.additional_forward_args,
            correction=correction, **options)  # type: ignore[arg-type]
        maps[name] = explanation.relevance["image"].detach() * sign[:, None]
        rows[name] = logical_scores(maps[name], named, distractor, occupied)
        for answer, label in (("yes", yes), ("no", no)):
            subset = batch.labels == label
            by_answer.setdefault(answer, {})[name] = logical_scores(
                maps[name][subset], named[subset], distractor[subset], occupied[subset])
    result: dict[str, Any] = {
        "model": zoo.name, "n_examples": n, "seed": seed, "correction": correction,
        "n_questions": len(examples), "n_yes": int((batch.labels == yes).sum()),
        "accuracy": float((answers == batch.labels).float().mean()),
        "rows": rows,
        "rows_by_answer": by_answer,
    }
    figure_rows = [r for r in ("answer logit (Fig. 8a)", "Contrast(yes, no)") if r in maps]
    result["figure_png"] = (logical_figure(examples, answers, {r: maps[r] for r in figure_rows},
                                           n_figure) if n_figure and figure_rows else b"")
    result["seconds"] = round(time.perf_counter() - start, 1)
    if out_dir is not None:
        _write_logical(Path(out_dir), result)
    return result


def _write_logical(out: Path, result: Mapping[str, Any]) -> None:
    """Write ``logical_inspection.png`` (when drawn) and ``logical_inspection.json``."""
    out.mkdir(parents=True, exist_ok=True)
    if result["figure_png"]:
        (out / "logical_inspection.png").write_bytes(result["figure_png"])
    (out / "logical_inspection.json").write_text(json.dumps(
        {k: v for k, v in result.items() if k != "figure_png"}, indent=1))


def format_logical(result: Mapping[str, Any]) -> str:
    """The scores as an aligned text table (percent)."""
    lines = [
        f"{result['model']}: {result['n_questions']} 'is there a … ?' questions of "
        f"{result['n_examples']} held-out examples (seed {result['seed']}, {result['n_yes']} "
        f"yes), model accuracy {100 * result['accuracy']:.1f}%, correction="
        f"{result['correction']!r}; positive = towards 'yes'",
        f"{'objective':36} {'pos→named point':>15} {'mass':>6} {'chance':>6}   "
        f"{'neg→distractor point':>20} {'mass':>6} {'chance':>6}",
    ]
    for name, s in result["rows"].items():
        lines.append(
            f"{name:36} {100 * s['positive_point']:15.1f} {100 * s['positive_mass']:6.1f} "
            f"{100 * s['positive_chance']:6.1f}   {100 * s['negative_point']:20.1f} "
            f"{100 * s['negative_mass']:6.1f} {100 * s['negative_chance']:6.1f}")
    by_answer = result.get("rows_by_answer", {})
    if by_answer:
        lines.append("neg→distractor point by true answer: " + "; ".join(
            f"{name}: yes {100 * by_answer['yes'][name]['negative_point']:.1f} "
            f"(n={by_answer['yes'][name]['n_distractor']}), no "
            f"{100 * by_answer['no'][name]['negative_point']:.1f} "
            f"(n={by_answer['no'][name]['n_distractor']})"
            for name in result["rows"]))
    first = next(iter(result["rows"].values()))
    lines.append(f"(positive: {first['n_named']} questions whose named object is present; "
                 f"negative: {first['n_distractor']} with a distractor)")
    return "\n".join(lines)


def logical_figure(examples: list[Any], answers: Tensor, maps: Mapping[str, Tensor],
                   n: int = 4) -> bytes:
    r"""Fig. 8-like PNG: the first ``n // 2`` "yes" and "no" questions (not chosen), one row per
    objective; red = towards "yes", blue = towards "no" (symmetric scale per map). The named
    object's cells are outlined solid, the distractors' dashed."""
    import matplotlib.pyplot as plt

    from captum_hetattn.visualization import figure_png
    from captum_hetattn.zoo.shapes_vqa import ANSWER_ID, CELL, GRID, distractor_cells

    said_yes = (answers == ANSWER_ID["yes"]).tolist()
    picked = ([i for i, y in enumerate(said_yes) if y][: n - n // 2]
              + [i for i, y in enumerate(said_yes) if not y][: n // 2])
    figure, axes = plt.subplots(len(maps), len(picked), squeeze=False,
                                figsize=(2.1 * len(picked) + 0.4, 2.2 * len(maps)))
    for j, index in enumerate(picked):
        example = examples[index]
        distractors = distractor_cells(example.scene, example.question)
        for i, (name, values) in enumerate(maps.items()):
            axis = axes[i, j]
            axis.set_xticks([])
            axis.set_yticks([])
            heat = values[index].reshape(GRID, GRID).numpy()
            scale = float(np.abs(heat).max()) or 1.0
            axis.imshow(example.image)
            axis.imshow(np.kron(heat, np.ones((CELL, CELL))), cmap="bwr", vmin=-scale,
                        vmax=scale, alpha=0.55)
            for cell in range(GRID * GRID):
                row, col = divmod(cell, GRID)
                style = ("-" if example.evidence["image"][cell]
                         else "--" if distractors[cell] else None)
                if style:
                    axis.add_patch(plt.Rectangle((col * CELL - 0.5, row * CELL - 0.5), CELL,
                                                 CELL, fill=False, color="black",
                                                 linestyle=style, linewidth=1.2))
            if i == 0:
                axis.set_title(example.description, fontsize=7)
            if j == 0:
                axis.set_ylabel(name, fontsize=7)
    figure.suptitle("logical inspection (full correction): red = towards yes, blue = towards no",
                    fontsize=9)
    figure.tight_layout()
    return figure_png(figure)


__all__ = [
    "OBJECTIVES",
    "format_logical",
    "logical_figure",
    "logical_scores",
    "run_logical_inspection",
]
