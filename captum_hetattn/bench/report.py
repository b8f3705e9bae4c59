r"""The benchmark report: its sections (title, target, table, notes), the options of a run, and
the markdown written to ``benchmarks/results.md``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTIONS: tuple[str, ...] = (
    "batch", "long_context", "many_targets", "integrated_gradients", "evaluation", "windowed",
)


@dataclass
class Section:
    """One section of the report: its table, notes and the numbers behind them."""

    key: str
    title: str
    target: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", f"Target: {self.target}.", ""]
        if self.rows:
            lines += ["| " + " | ".join(self.header) + " |",
                      "| " + " | ".join("---" for _ in self.header) + " |"]
            lines += ["| " + " | ".join(row) + " |" for row in self.rows]
            lines.append("")
        lines += [f"- {note}" for note in self.notes]
        lines.append(f"- Section wall time: {self.seconds:.1f} s.")
        return "\n".join(lines) + "\n"


TITLES = {
    "batch": "1. One attribution vs a plain forward+backward",
    "long_context": "2. Long context: time and peak memory",
    "many_targets": "3. Many targets on one input",
    "integrated_gradients": "4. Integrated Gradients vs ours",
    "evaluation": "5. Evaluation throughput",
    "windowed": "6. Windowed models: `explain`, first call and warm",
}
#: the batch section's goal per model (ours / plain): 0.7, and 1.0 for hand-written attention
#: (LXMERT: recorded through its softmax, no fused kernel to build on)
BATCH_GOALS = {"LXMERT": 1.0}


def batch_goal(model: str) -> float:
    """The batch section's goal for ``model`` (its name as the section writes it)."""
    return next((goal for prefix, goal in BATCH_GOALS.items() if model.startswith(prefix)), 0.7)


TARGETS = {
    "batch": "ours / plain ≤ 0.7 (LXMERT, hand-written attention: ≤ 1.0)",
    "long_context": "peak memory ≤ 1.3× plain; time ≤ 1.0× plain at 2048 tokens, ≤ 1.5× at "
                    "4096 and 8192",
    "many_targets": "batched / looped ≤ 0.6 for 20 targets",
    "integrated_gradients": "IntegratedGradients(n_steps=50) / ours ≥ 40",
    "evaluation": "none set (examples per second with 1 and 2 processes are reported)",
    "windowed": "Swin-T warm ≤ 1.5× and first call ≤ 3× plain; LED and LongT5 at 1024 tokens "
                "warm ≤ 1.5× plain",
}


def met(value: float, bound: float, below: bool = True) -> str:
    """The "met" cell: whether ``value`` is within ``bound`` (below or above it)."""
    if value is None or math.isnan(value):
        return "—"
    return "yes" if (value <= bound if below else value >= bound) else "**no**"


@dataclass
class Options:
    """The options of a run, defaults filled in (:func:`run_benchmarks`)."""

    quick: bool
    repeats: int
    threads: int
    budget_s: float
    lengths: tuple[int, ...]
    device: str
    eval_n: int
    eval_repeats: int


def earlier_sections(out: Path, quick: bool) -> dict[str, dict[str, Any]]:
    """Sections of an earlier run written to the same place in the same mode (for ``only``)."""
    try:
        earlier = json.loads(out.with_suffix(".json").read_text())
        if earlier["options"]["quick"] != quick:
            return {}
        return {key: value for key, value in earlier["sections"].items()
                if key in SECTIONS and "run" in value}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


#: where ``--readme`` writes the headline table (the markers stay)
HEADLINE_START = "<!-- bench-headline:start -->"
HEADLINE_END = "<!-- bench-headline:end -->"


def headline_rows(sections: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The headline: one row per measured case, ``[case, ours / reference, goal, met]``, from
    the sections' saved data (a section not run gives no row)."""
    rows: list[list[str]] = []

    def add(case: str, value: float | None, goal: str, bound: float, below: bool = True,
            digits: int = 2, unit: str = "×") -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        rows.append([case, f"{value:.{digits}f}{unit}", goal, met(value, bound, below)])

    for item in sections.get("batch", {}).get("data", []):
        goal = batch_goal(item["model"])
        add(f"{item['model']}, batch {item['batch']}: `attribute` / plain forward+backward",
            item.get("ratio"), f"≤ {goal}×", goal)
    for item in sections.get("long_context", {}).get("data", []):
        plain, ours = item.get("plain", {}), item.get("ours", {})
        if "seconds" not in plain or "seconds" not in ours:
            continue
        case = f"{item['model']}, {item['tokens']} tokens"
        long = item["tokens"] > 2048
        add(f"{case}: time / plain", ours["seconds"] / plain["seconds"],
            "≤ 1.5×" if long else "≤ 1.0×", 1.5 if long else 1.0)
        add(f"{case}: peak memory / plain", ours["peak_mib"] / plain["peak_mib"], "≤ 1.3×", 1.3)
    for item in sections.get("many_targets", {}).get("data", []):
        add(f"{item['model']}, 20 targets: one call / 20 calls", item.get("ratio"), "≤ 0.6×",
            0.6)
    for item in sections.get("integrated_gradients", {}).get("data", []):
        add(f"{item['model']}: IntegratedGradients(50) / ours", item.get("ratio"), "≥ 40×", 40,
            below=False, digits=1)
    for item in sections.get("windowed", {}).get("data", []):
        add(f"{item['model']}: `explain` warm / plain", item.get("ratio_warm"), "≤ 1.5×", 1.5)
        if item["model"].startswith("Swin"):
            add(f"{item['model']}: `explain` first call / plain", item.get("ratio_first"),
                "≤ 3×", 3.0)
    for item in sections.get("evaluation", {}).get("data", []):
        if item.get("runner") == "evaluate":
            rows.append(["evaluation, shapes_vqa (in process)",
                         f"{item['examples_per_s']:.1f} examples/s", "—", "—"])
    return rows


def headline_markdown(data: dict[str, Any]) -> str:
    """The headline table of a run (:func:`headline_rows`) with its machine and date, as the
    README shows it."""
    info, opts = data["machine"], data["options"]
    load = data.get("load_average") or [math.nan, math.nan]
    lines = [
        f"Measured by `captum-hetattn bench` on {info['date']}: {info['cpu']}, "
        f"{info['cores']} cores, {opts['threads']} torch threads, device {opts['device']}; "
        f"torch {info['torch']}, transformers {info['transformers']}; commit "
        f"{info['commit'] or '?'}; load average {load[0]:.1f}–{load[1]:.1f}; medians of "
        f"{opts['repeats']} (full tables: `benchmarks/results.md`).",
        "",
        "| case | ours | goal | met |",
        "| --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in headline_rows(data["sections"])]
    return "\n".join(lines) + "\n"


def write_headline(readme: Path, text: str) -> None:
    r"""Put ``text`` between :data:`HEADLINE_START` and :data:`HEADLINE_END` in ``readme``.

    Raises:
        ValueError: the README has not both markers, in that order.
    """
    content = readme.read_text()
    start, end = content.find(HEADLINE_START), content.find(HEADLINE_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no '{HEADLINE_START}' … '{HEADLINE_END}' block for the "
                         "headline table")
    head = content[: start + len(HEADLINE_START)]
    readme.write_text(head + "\n" + text + content[end:])


def report_markdown(info: dict[str, Any], opts: Options, sections: dict[str, Section],
                    chosen: Sequence[str], total: float, load_start: float, load_end: float,
                    headline: str = "") -> str:
    """The markdown of ``benchmarks/results.md``: the machine, the headline, every section."""
    gpu = info["gpu"] or "no GPU"
    mode = ("**quick mode**: tiny models and sizes — checks the harness, the numbers mean "
            "nothing" if opts.quick else "real sizes, random weights (no download)")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `captum-hetattn bench` ({mode}).",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores available, "
        f"{info['memory_gib']} GiB RAM, {gpu}; device used: {opts.device}, "
        f"{opts.threads} torch threads.",
        f"- Versions: torch {info['torch']}, transformers {info['transformers']}, "
        f"captum {info['captum']}, Python {info['python']}; commit {info['commit'] or '?'}.",
        f"- Date: {info['date']}; total {total:.0f} s.",
        f"- Medians of {opts.repeats} runs after one warm-up; both sides of a ratio measured "
        "in the same run, in turn.",
        f"- Load average (1 min): {load_start:.1f} at start, {load_end:.1f} at end"
        + (" — other work was running: timings are less reliable."
           if max(load_start, load_end) > 0.5 * info["cores"] + 0.5 else "."),
        "",
    ]
    if headline:
        lines += ["## Headline", "", headline]
    for key in SECTIONS:
        if key in sections:
            lines.append(sections[key].markdown())
        else:
            lines += [f"## {TITLES[key]}", "", f"Target: {TARGETS[key]}.", "",
                      f"- Not run (`only={list(chosen)}`).", ""]
    return "\n".join(lines)


__all__ = ["BATCH_GOALS", "HEADLINE_END", "HEADLINE_START", "SECTIONS", "TARGETS", "TITLES",
           "Options", "Section", "batch_goal",
           "earlier_sections", "headline_markdown", "headline_rows", "met", "report_markdown",
           "write_headline"]
