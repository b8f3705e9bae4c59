r"""Weakly supervised segmentation with a DETR-style detector, as the paper runs it (§5.1).

For every held-out scene, every object query whose class probability exceeds 0.5 is explained
by each method with the DETR target ``(query, class)``; its relevance over the image tokens is
min-max scaled, binarised at Otsu's threshold (Table 1) and at 0.3 × Otsu's
threshold (Table 2, the paper's fix for maps that Otsu cuts too hard), upsampled (nearest) to
the image size, and the masks are scored against the scenes' instance masks with pycocotools
as COCO instance segmentation: the query's class is the category, its probability the score,
IoU thresholds from 0.2 (the paper lowers COCO's 0.5 to 0.2) to 0.95 in steps of 0.05, AP and
AR overall and by object size (:data:`~captum_hetattn.zoo.shapes_detr.AREA_RANGES`, COCO's
ranges scaled to the small pictures).

Methods (:func:`segmentation_methods`): ours with ``abs`` / ``pos`` / ``full`` correction and
``pos`` with the noise link ("noised"), GAE, ODAM (backbone feature map × gradient of the query's
class logit, summed over channels, ReLU), attention rollout and raw attention.

``run_segmentation(zoo, n, seed, out_dir)`` returns (and writes to ``segmentation.json``) both
tables; :func:`format_tables` prints them in the paper's layout (rows = metrics, columns =
methods); :func:`run_detection_demo` writes the HTML report with the tables, the per-query
figures like the paper's Fig. 2–4 and the logical-inspection figure.
"""

from __future__ import annotations

import html
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_hetattn.evaluation.methods import Method, standard_methods
from captum_hetattn.evaluation.odam import ODAM
from captum_hetattn.zoo import Batch, ZooModel

#: IoU thresholds of the scoring: the paper's minimal IoU 0.2, then COCO's steps up to 0.95
IOU_THRESHOLDS = np.round(np.linspace(0.2, 0.95, 16), 2)
#: binarisation thresholds, as multiples of Otsu's threshold: Table 1 and Table 2
THRESHOLDS: dict[str, float] = {"otsu": 1.0, "0.3 otsu": 0.3}
#: the paper's rows (Tables 1–2), then ours beyond them
PAPER_ROWS = ("AP", "AP_medium", "AP_large", "AR", "AR_medium", "AR_large")
EXTRA_ROWS = ("AP_small", "AR_small", "AP20", "AP50", "AP75")
#: column order: the paper's methods first
METHOD_ORDER = ("GAE", "ODAM", "ours (abs)", "ours (pos)", "ours (noised)", "ours (full)",
                "rollout", "raw attention")

#: the paper's Tables 1–2 (DETR on COCO val2017, percent)
PAPER_TABLES: dict[str, dict[str, dict[str, float]]] = {
    "otsu": {
        "GAE": dict(zip(PAPER_ROWS, (13.1, 14.4, 24.6, 19.3, 23.9, 33.2), strict=True)),
        "ODAM": dict(zip(PAPER_ROWS, (1.9, 3.3, 2.7, 4.8, 8.0, 6.4), strict=True)),
        "ours (abs)": dict(zip(PAPER_ROWS, (8.0, 12.2, 12.3, 14.7, 23.6, 19.5), strict=True)),
        "ours (pos)": dict(zip(PAPER_ROWS, (11.6, 13.9, 20.8, 18.0, 23.8, 29.2), strict=True)),
        "ours (noised)": dict(zip(PAPER_ROWS, (13.2, 14.4, 24.8, 19.4, 24.0, 33.3),
                                  strict=True)),
    },
    "0.3 otsu": {
        "GAE": dict(zip(PAPER_ROWS, (7.1, 4.6, 14.1, 11.3, 7.8, 26.7), strict=True)),
        "ODAM": dict(zip(PAPER_ROWS, (2.2, 1.3, 4.3, 4.6, 2.2, 11.6), strict=True)),
        "ours (abs)": dict(zip(PAPER_ROWS, (9.1, 8.3, 18.8, 14.5, 13.3, 32.1), strict=True)),
        "ours (pos)": dict(zip(PAPER_ROWS, (8.9, 6.2, 18.0, 13.6, 10.3, 31.6), strict=True)),
        "ours (noised)": dict(zip(PAPER_ROWS, (7.3, 4.8, 14.5, 11.7, 8.2, 27.3), strict=True)),
    },
}

TABLE_TITLES = {
    "otsu": "Table 1: weakly supervised segmentation, threshold = Otsu",
    "0.3 otsu": "Table 2: weakly supervised segmentation, threshold = 0.3 × Otsu",
}


# ------------------------------------------------------------------ methods
def odam_method(layer: Callable[[ZooModel], torch.nn.Module] | None = None) -> Method:
    r"""ODAM as a token-relevance method: the feature map of ``layer(zoo)`` (default: the zoo
    model's ``feature_layer``, the backbone's last stage), one value per feature-map cell,
    row-major — the image tokens of a DETR."""

    def run(zoo: ZooModel, batch: Batch) -> dict[str, Tensor]:
        module = layer(zoo) if layer is not None else zoo.feature_layer  # type: ignore[attr-defined]
        heat = ODAM(zoo.forward_func, module).attribute(
            batch.inputs, target=batch.targets,
            additional_forward_args=batch.additional_forward_args,
        )
        return {"image": heat.reshape(heat.shape[0], -1)}

    return run


def segmentation_methods() -> dict[str, Method]:
    """The methods of the segmentation experiment, by display name (:data:`METHOD_ORDER`): the
    attention methods of :func:`~captum_hetattn.evaluation.standard_methods` and ODAM."""
    methods = {**standard_methods(include_integrated_gradients=False), "ODAM": odam_method()}
    return {name: methods[name] for name in METHOD_ORDER}


# ------------------------------------------------------------------ masks
def binarise(relevance: np.ndarray | Tensor, k: float = 1.0) -> np.ndarray:
    r"""Min-max scale a relevance map and keep what exceeds ``k`` × Otsu's threshold
    (``skimage.filters.threshold_otsu``). A constant map gives an empty mask."""
    from skimage.filters import threshold_otsu

    values = np.nan_to_num(np.asarray(
        relevance.detach().cpu() if isinstance(relevance, Tensor) else relevance, dtype=float))
    low, high = values.min(), values.max()
    if not high > low:
        return np.zeros(values.shape, dtype=bool)
    scaled = (values - low) / (high - low)
    return scaled > k * threshold_otsu(scaled)


def upsample(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``rows × cols`` boolean grid → ``size`` pixels (nearest; size a multiple of the grid)."""
    rows, cols = mask.shape
    if size[0] % rows or size[1] % cols:
        raise ValueError(f"image {size} is not a multiple of the {rows}×{cols} token grid")
    return mask.repeat(size[0] // rows, axis=0).repeat(size[1] // cols, axis=1)


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


# ------------------------------------------------------------------ the experiment
def _load(zoo: ZooModel | str | None) -> ZooModel:
    if zoo is None or isinstance(zoo, str):
        from captum_hetattn.zoo import load

        return load(zoo or "shapes_detr")
    return zoo


def explained_queries(zoo: ZooModel, n: int, seed: int, threshold: float = 0.5
                      ) -> tuple[list[Any], Tensor, list[tuple[int, Any]]]:
    r"""The held-out scenes, their pixels and every ``(scene index, detection)`` whose class
    probability exceeds ``threshold``."""
    from captum_hetattn.zoo.shapes_detr import render, to_pixels

    scenes = render(np.random.default_rng(seed), n)
    pixels = to_pixels([s.image for s in scenes]) if scenes else torch.zeros(0, 3, 1, 1)
    queries: list[tuple[int, Any]] = []
    for start in range(0, n, 100):
        found = zoo.detect(pixels[start : start + 100], threshold=threshold)  # type: ignore[attr-defined]
        for offset, detections in enumerate(found):
            queries += [(start + offset, d) for d in detections]
    return scenes, pixels, queries


def relevance_maps(zoo: ZooModel, pixels: Tensor, targets: Sequence[tuple[int, int]],
                   methods: Mapping[str, Method], batch_size: int = 128,
                   progress: Callable[[str], None] | None = None) -> dict[str, Tensor]:
    r"""Image-token relevance ``(N, n_image)`` of every method for ``N`` (pixels, target) pairs,
    in batches of ``batch_size`` (one forward + backward per batch and method)."""
    out: dict[str, list[Tensor]] = {name: [] for name in methods}
    with warnings.catch_warnings():
        # DETR's first decoder self-attention reads all-zero queries: it never gets a gradient,
        # which the engine reports once per explainer (here: once per batch)
        warnings.filterwarnings("ignore", message=".*got no gradient from the objective.*")
        for start in range(0, len(targets), batch_size):
            chunk = list(targets[start : start + batch_size])
            batch = Batch(inputs=pixels[start : start + len(chunk)], additional_forward_args=None,
                          labels=torch.tensor([t[1] for t in chunk]), targets=chunk,
                          evidence={})
            for name, method in methods.items():
                relevance = method(zoo, batch)["image"].detach().float()
                if not torch.isfinite(relevance).all():
                    raise ValueError(f"{name}: non-finite relevance for targets {chunk}")
                out[name].append(relevance)
            if progress is not None:
                progress(f"{min(start + batch_size, len(targets))}/{len(targets)} queries")
    return {name: torch.cat(parts) if parts else torch.zeros(0) for name, parts in out.items()}


def run_segmentation(
    zoo: ZooModel | str | None = None,
    n: int = 200,
    seed: int = 12345,
    out_dir: str | Path | None = None,
    *,
    methods: Mapping[str, Method] | None = None,
    threshold: float | None = None,
    n_figures: int = 6,
    batch_size: int = 128,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    r"""The paper's weakly supervised segmentation experiment on ``n`` held-out scenes.

    Args:
        zoo: a detection zoo model (``shapes_detr``; loaded when ``None`` or a name).
        n: held-out scenes, drawn with ``seed`` (training never sees seed 12345).
        out_dir: if given, writes ``segmentation.json`` and the figures
            ``segmentation_relevance.png``, ``segmentation_otsu.png``,
            ``segmentation_0.3otsu.png`` (rows = methods, columns = the most confident query of
            each of the first ``n_figures`` scenes — not chosen — like the paper's Fig. 2, 3
            and 4).
        methods: name → method; default :func:`segmentation_methods`.
        threshold: class probability a query must exceed to be explained. ``None``: the
            zoo model's ``query_threshold`` if it has one, else the paper's 0.5 (DETR's softmax
            probabilities). A detector scored by sigmoids under the focal loss (Conditional
            DETR) gives correct detections lower probabilities than DETR's softmax; a zoo
            model names its operating point as ``query_threshold`` (``shapes_detr``: 0.5).

    Returns:
        A JSON-ready dict: ``tables`` (``"otsu"`` and ``"0.3 otsu"`` → method → metric → value
        in percent; COCO's -1 where no object of a size exists), ``paper`` (the paper's
        Tables 1–2), ``constant_maps`` (per method, how many explained queries got a map of
        one value everywhere, hence an empty mask), ``n_scenes``, ``n_objects``,
        ``n_queries``, ``detection`` (box AP of the detector on these queries),
        ``iou_thresholds``, ``area_ranges``, ``seconds``, ``figures`` (paths, with
        ``out_dir``) and ``figure_png`` (name → PNG bytes; left out of the JSON file).
    """
    from captum_hetattn.zoo.shapes_detr import AREA_RANGES, coco_evaluate, coco_ground_truth

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    start_time = time.perf_counter()
    zoo = _load(zoo)
    methods = dict(segmentation_methods() if methods is None else methods)
    if threshold is None:
        threshold = float(getattr(zoo, "query_threshold", 0.5))
    scenes, pixels, queries = explained_queries(zoo, n, seed, threshold)
    image_ids = [i for i, _ in queries]
    targets = [(d.query, d.label) for _, d in queries]
    maps = relevance_maps(zoo, pixels[image_ids], targets, methods, batch_size, progress)
    ground_truth = coco_ground_truth(scenes)
    tables = _mask_tables(maps, queries, methods, ground_truth, tuple(pixels.shape[-2:]))
    detection = coco_evaluate(ground_truth, [
        {"image_id": i, "category_id": d.label, "bbox": list(d.box), "score": d.score}
        for i, d in queries], "bbox")
    result: dict[str, Any] = {
        "model": zoo.name,
        "n_scenes": n,
        "seed": seed,
        "n_objects": int(sum(len(s.classes) for s in scenes)),
        "n_queries": len(queries),
        "query_threshold": threshold,
        "detection": {m: _percent(v) for m, v in detection.items()},
        "iou_thresholds": [float(t) for t in IOU_THRESHOLDS],
        "area_ranges": {k: list(v) for k, v in AREA_RANGES.items()},
        "thresholds": dict(THRESHOLDS),
        "methods": list(methods),
        "tables": tables,
        "paper": PAPER_TABLES,
        # maps with one value everywhere binarise to empty masks (GAE's reference rule drops a
        # whole cross term when any row of R − I sums to 0, which can leave no image relevance)
        "constant_maps": {name: int((maps[name].amax(dim=1) <= maps[name].amin(dim=1)).sum())
                          if len(queries) else 0 for name in methods},
    }
    result["figure_png"] = _figures(scenes, queries, maps, methods, n_figures)
    result["seconds"] = round(time.perf_counter() - start_time, 1)
    if out_dir is not None:
        _write_segmentation(Path(out_dir), result)
    return result


def _mask_tables(maps: Mapping[str, Tensor], queries: Sequence[tuple[int, Any]],
                 methods: Sequence[str], ground_truth: Any,
                 size: tuple[int, int]) -> dict[str, dict[str, dict[str, float]]]:
    """COCO mask AP / AR (percent) of every method's binarised maps, per threshold."""
    from captum_hetattn.zoo.shapes_detr import GRID, coco_evaluate

    tables: dict[str, dict[str, dict[str, float]]] = {}
    for label, k in THRESHOLDS.items():
        tables[label] = {}
        for name in methods:
            results = []
            for row, (image_id, detection) in enumerate(queries):
                grid = binarise(maps[name][row], k).reshape(GRID, GRID)
                results.append({"image_id": image_id, "category_id": detection.label,
                                "score": detection.score,
                                "segmentation": _rle(upsample(grid, size))})  # type: ignore[arg-type]
            summary = coco_evaluate(ground_truth, results, "segm", IOU_THRESHOLDS)
            tables[label][name] = {m: _percent(v) for m, v in summary.items()}
    return tables


def _figures(scenes: Sequence[Any], queries: Sequence[tuple[int, Any]],
             maps: Mapping[str, Tensor], methods: Sequence[str],
             n_figures: int) -> dict[str, bytes]:
    """The relevance and mask figures (PNG) of the first ``n_figures`` scenes."""
    image_ids = [i for i, _ in queries]
    figures = {}
    if n_figures > 0 and queries:
        # the most confident query of each of the first scenes (scene order, not chosen)
        firsts = [row for row, image_id in enumerate(image_ids)
                  if row == 0 or image_ids[row - 1] != image_id]
        shown = (firsts + [r for r in range(len(queries)) if r not in firsts])[:n_figures]
        for kind in ("relevance", *THRESHOLDS):
            figures[kind] = segmentation_figure(
                [scenes[image_ids[i]] for i in shown], [queries[i][1] for i in shown],
                {name: maps[name][shown] for name in methods}, kind)
    return figures


def _write_segmentation(out: Path, result: dict[str, Any]) -> None:
    """Write the figures and ``segmentation.json`` into ``out``; ``result["figures"]`` gets
    their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, png in result["figure_png"].items():
        path = out / f"segmentation_{kind.replace(' ', '')}.png"
        path.write_bytes(png)
        paths[kind] = str(path)
    result["figures"] = paths
    (out / "segmentation.json").write_text(json.dumps(
        {k: v for k, v in result.items() if k != "figure_png"}, indent=1))


def _percent(value: float) -> float:
    return round(100 * value, 2) if value >= 0 else -1.0


# ------------------------------------------------------------------ tables
def _ordered(methods: Sequence[str]) -> list[str]:
    known = [m for m in METHOD_ORDER if m in methods]
    return known + [m for m in methods if m not in known]


def _cell(value: float | None) -> str:
    if value is None:
        return "–"
    return "n/a" if value < 0 else f"{value:.1f}"


def format_tables(result: Mapping[str, Any], *, markdown: bool = False,
                  with_paper: bool = False) -> str:
    r"""Both tables in the paper's layout: rows = metrics (the paper's AP, AP_medium, AP_large,
    AR, AR_medium, AR_large, then AP_small, AR_small, AP20, AP50, AP75), columns = methods;
    values in percent.

    Args:
        result: from :func:`run_segmentation` (or its JSON file, loaded).
        markdown: a Markdown table instead of aligned text.
        with_paper: each of the paper's cells followed by the paper's number in brackets.
    """
    lines: list[str] = []
    methods = _ordered(result["methods"])
    header = (f"{result['model']}: {result['n_queries']} queries (class probability > "
              f"{result['query_threshold']}) on {result['n_scenes']} held-out scenes (seed "
              f"{result['seed']}), {result['n_objects']} objects; IoU thresholds "
              f"{result['iou_thresholds'][0]:.2f}:0.05:0.95; percent")
    constant = result.get("constant_maps", {})
    if any(constant.values()):
        header += "\nmaps of one value (empty masks): " + ", ".join(
            f"{m} {constant[m]}" for m in methods if constant.get(m))
    for label, title in TABLE_TITLES.items():
        table = result["tables"][label]
        paper = result.get("paper", PAPER_TABLES)[label]
        rows = [*PAPER_ROWS, *EXTRA_ROWS]
        cells = []
        for metric in rows:
            row = []
            for method in methods:
                text = _cell(table[method].get(metric))
                if with_paper and method in paper and metric in paper[method]:
                    text += f" ({paper[method][metric]:.1f})"
                row.append(text)
            cells.append(row)
        lines.append(title)
        if markdown:
            lines.append("| metric | " + " | ".join(methods) + " |")
            lines.append("| --- |" + " --- |" * len(methods))
            lines += [f"| {m} | " + " | ".join(r) + " |" for m, r in zip(rows, cells,
                                                                       strict=True)]
        else:
            width = [max(len(m), *(len(r[j]) for r in cells)) for j, m in enumerate(methods)]
            lines.append(f"{'':10} " + " ".join(m.rjust(w) for m, w in zip(methods, width,
                                                                           strict=True)))
            lines += [f"{m:10} " + " ".join(c.rjust(w) for c, w in zip(r, width, strict=True))
                      for m, r in zip(rows, cells, strict=True)]
        lines.append("")
    return header + "\n\n" + "\n".join(lines)


def tables_html(result: Mapping[str, Any]) -> str:
    """Both tables as HTML (the paper's numbers in brackets where it reports them)."""
    methods = _ordered(result["methods"])
    parts = []
    for label, title in TABLE_TITLES.items():
        table, paper = result["tables"][label], result.get("paper", PAPER_TABLES)[label]
        head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
        body = []
        for metric in (*PAPER_ROWS, *EXTRA_ROWS):
            cells = []
            for method in methods:
                text = _cell(table[method].get(metric))
                if method in paper and metric in paper[method]:
                    text += f" <small>({paper[method][metric]:.1f})</small>"
                cells.append(f"<td>{text}</td>")
            body.append(f"<tr><td class='name'>{metric}</td>{''.join(cells)}</tr>")
        parts.append(f"<h3>{html.escape(title)}</h3><table><tr><th class='name'>metric</th>"
                     f"{head}</tr>{''.join(body)}</table>")
    return "\n".join(parts)


# ------------------------------------------------------------------ figures
def segmentation_figure(scenes: Sequence[Any], detections: Sequence[Any],
                        maps: Mapping[str, Tensor], kind: str) -> bytes:
    r"""Rows = methods, columns = explained queries (the paper's Fig. 2–4 layout), as PNG.

    ``kind``: ``"relevance"`` (min-max scaled map blended over the picture), ``"otsu"`` or
    ``"0.3 otsu"`` (the binarised mask over the picture). The object the query matches is
    outlined in white; the detection's box is drawn dashed.
    """
    import matplotlib.pyplot as plt

    from captum_hetattn.visualization import figure_png
    from captum_hetattn.zoo.shapes_detr import CLASSES, GRID, _best_match

    names = _ordered(list(maps))
    columns = len(detections)
    figure, axes = plt.subplots(len(names), columns, figsize=(1.45 * columns + 1.2,
                                                              1.45 * len(names)),
                                squeeze=False)
    for j, (scene, detection) in enumerate(zip(scenes, detections, strict=True)):
        truth = _best_match(detection.box, scene.boxes)
        size = scene.image.shape[:2]
        for i, name in enumerate(names):
            axis = axes[i, j]
            axis.set_xticks([])
            axis.set_yticks([])
            values = maps[name][j].numpy().reshape(GRID, GRID)
            axis.imshow(scene.image)
            if kind == "relevance":
                low, high = values.min(), values.max()
                scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
                heat = scaled.repeat(size[0] // GRID, axis=0).repeat(size[1] // GRID, axis=1)
                axis.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            else:
                mask = upsample(binarise(values, THRESHOLDS[kind]), size)
                overlay = np.zeros((*size, 4))
                overlay[mask] = (1.0, 0.1, 0.1, 0.55)
                axis.imshow(overlay)
            if truth >= 0:
                axis.contour(scene.masks[truth], levels=[0.5], colors="white", linewidths=0.8)
            x, y, w, h = detection.box
            axis.add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, color="yellow",
                                         linestyle="--", linewidth=0.7))
            if i == 0:
                axis.set_title(f"q{detection.query} {CLASSES[detection.label]} "
                               f"{detection.score:.2f}", fontsize=7)
            if j == 0:
                axis.set_ylabel(name, fontsize=7)
    title = {"relevance": "relevance (min-max scaled)", "otsu": "mask at Otsu's threshold",
             "0.3 otsu": "mask at 0.3 × Otsu's threshold"}[kind]
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure_png(figure)


# ------------------------------------------------------------------ the demo report
def run_detection_demo(out_dir: str | Path, n: int = 60, seed: int = 12345,
                       n_vqa: int = 120) -> dict[str, Any]:
    r"""The detection demo: the segmentation experiment on ``n`` held-out scenes (both tables,
    the per-query figures at both thresholds) and the logical inspection of ``shapes_vqa``
    (its score and figure), written to ``out_dir/report.html`` (plus ``segmentation.json``,
    ``logical_inspection.json`` and the PNG files). Returns ``{"report": path, "segmentation":
    result, "logical": result, "seconds": s}``.
    """
    from captum_hetattn.evaluation.logical import run_logical_inspection
    from captum_hetattn.visualization.report import write_detection_report

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segmentation = run_segmentation(n=n, seed=seed, out_dir=out)
    logical = run_logical_inspection(n=n_vqa, seed=seed, out_dir=out)
    path = write_detection_report(out, segmentation, logical)
    return {"report": str(path), "segmentation": segmentation, "logical": logical,
            "seconds": round(time.perf_counter() - start, 1)}


__all__ = [
    "IOU_THRESHOLDS",
    "PAPER_TABLES",
    "THRESHOLDS",
    "binarise",
    "explained_queries",
    "format_tables",
    "odam_method",
    "relevance_maps",
    "run_detection_demo",
    "run_segmentation",
    "segmentation_figure",
    "segmentation_methods",
    "tables_html",
    "upsample",
]
