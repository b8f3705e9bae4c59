r"""``make sweep``: every transformers model type, built tiny, explained with every default and
checked; writes ``tests/model_types/results.json``, ``results.md`` and the README's "Model types
swept" section.

Usage (from the repository root)::

    PYTHONPATH=.:tests python -m model_types.sweep [--workers 2] [--timeout 90] [--types a,b]
        [--resume] [--no-readme]
    PYTHONPATH=.:tests python -m model_types.sweep --one TYPE   # in this process, traceback shown
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results.json"
PARTIAL = HERE / "results.partial.jsonl"
TABLE = HERE / "results.md"
README = ROOT / "README.md"
OUTCOMES = ("explained", "refused", "silent", "crash", "hang", "skipped-build")


def all_types() -> list[str]:
    r"""Every model type with a model of its own in the auto mappings (sub-configs such as
    ``clip_text_model`` are parts of one and are swept through it)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return sorted(set(CONFIG_MAPPING_NAMES) & set(MODEL_MAPPING_NAMES))


def _preload() -> None:
    r"""Imports every child needs, done once before the forks."""
    import torch

    torch.set_num_threads(1)
    import test_capture  # noqa: F401 - the softmax collector of the eager check
    import transformers  # noqa: F401
    import transformers.generation.utils  # noqa: F401 - seconds per child otherwise
    import transformers.modeling_utils  # noqa: F401
    import transformers.models.auto.modeling_auto  # noqa: F401

    import captum_hetattn  # noqa: F401


def counts(results: list[dict[str, Any]]) -> dict[str, int]:
    found = {outcome: 0 for outcome in OUTCOMES}
    for result in results:
        found[result["outcome"]] = found.get(result["outcome"], 0) + 1
    return found


def summary(results: list[dict[str, Any]]) -> str:
    c = counts(results)
    total = len(results) - c["skipped-build"]
    handled = c["explained"] + c["refused"]
    share = (lambda n: f"{100 * n / total:.0f}%") if total else (lambda n: "-")
    return (f"{c['explained']} of {total} types explained ({share(c['explained'])}), "
            f"{c['refused']} refused by name, {c['silent']} silent, {c['crash']} crashes, "
            f"{c['hang']} hangs — {handled} handled ({share(handled)}); "
            f"{c['skipped-build']} of {len(results)} types not built here")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def write_table(results: list[dict[str, Any]], seconds: float | None) -> None:
    lines = ["# Model types swept", "", summary(results) + ".", ""]
    if seconds is not None:
        lines += [f"Wall time {seconds / 60:.0f} min (`make sweep`, 2 workers).", ""]
    elif TABLE.exists():  # a --resume run keeps the full run's wall time
        lines += [line for line in TABLE.read_text().splitlines() if line.startswith("Wall time")]
        lines += [""] if lines[-1] != "" else []
    lines += ["| type | outcome | class | reason | s |", "| --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (OUTCOMES.index(r["outcome"]), r["type"])):
        lines.append(f"| {r['type']} | {r['outcome']} | {r.get('cls', '')} | "
                     f"{_short(r.get('reason', ''), 300)} | {r.get('seconds', '')} |")
    TABLE.write_text("\n".join(lines) + "\n")
    RESULTS.write_text(json.dumps(sorted(results, key=lambda r: r["type"]), indent=1) + "\n")


REFUSAL_KINDS = (
    ("no attention at all (convolutional, state-space, Fourier mixers)", "looks like attention"),
    ("no softmax attention recorded", "no attention call"),
    ("no attention map over the tokens (convolutional projections, channel attention)",
     "no attention map over the model's tokens"),
    ("the graph does not fit (layers that never run softmax attention)", "never called"),
    ("the graph does not fit (a preset's pattern)", "matches no module"),
    ("a NaN or infinity inside the model", "NaN or an infinity"),
    ("the score does not depend on the final tokens", "gradient is zero"),
    ("hidden states or maps the engine cannot lay out", "NotImplementedError"),
)


def refusal_kind(reason: str) -> str:
    return next((kind for kind, text in REFUSAL_KINDS if text in reason), "other")


def readme_section(results: list[dict[str, Any]]) -> str:
    by = {o: sorted(r["type"] for r in results if r["outcome"] == o) for o in OUTCOMES}
    reasons = {r["type"]: _short(r.get("reason", ""), 140) for r in results}
    full = {r["type"]: str(r.get("reason", "")) for r in results}
    lines = [
        "## Model types swept", "",
        "`make sweep` (`tests/model_types/`) builds every model type transformers ships with a "
        "model of its own (`MODEL_MAPPING_NAMES`: sub-configs such as `clip_text_model` are swept "
        "through their model) tiny from a shrunk default config (per-type overrides where the "
        "shrink fails; multimodal models whose inputs it cannot guess from `tests/arch_zoo.py`), "
        "picks the class a user would (a classifier, a seq2seq or causal LM, else the base model "
        "scored on its last hidden state), explains a batch of 2 (ids with per-example padding "
        "and their mask, pixels, audio) with `HeterogenousAttentionAttribution` and every "
        "default, each type in its own process with a time limit (a default call past 60 s is a "
        "hang), and checks every explained type: maps and gradients equal an eager softmax "
        "collector, relevance equals the paper's rule recomputed from scratch (single-stream "
        "models), the batch equals its single examples, padding gets zero, the model is "
        "restored. Full table, with why each type was not built here: "
        "`tests/model_types/results.md`.", "",
        f"**{summary(results)}.**", "",
        "| outcome | types |", "| --- | --- |",
    ]
    for outcome in ("silent", "crash", "hang"):
        lines.append(f"| {outcome} | " + (", ".join(
            f"`{t}` ({reasons[t]})" for t in by[outcome]) or "none") + " |")
    kinds: dict[str, list[str]] = {}
    for name in by["refused"]:
        kinds.setdefault(refusal_kind(full[name]), []).append(f"`{name}`")
    for kind, names in sorted(kinds.items()):
        lines.append(f"| refused: {kind} | {', '.join(names)} |")
    lines.append(f"| explained | {len(by['explained'])} types |")
    return "\n".join(lines) + "\n\n"


def write_readme(results: list[dict[str, Any]]) -> None:
    text = README.read_text()
    section = readme_section(results)
    if "## Model types swept" in text:
        start = text.index("## Model types swept")
        end = text.index("\n## ", start + 1) + 1
        text = text[:start] + section + text[end:]
    else:
        at = text.index("## Performance")
        text = text[:at] + section + text[at:]
    README.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per type")
    parser.add_argument("--explain-timeout", type=float, default=60.0,
                        help="seconds for the default explain call: past it, a hang")
    parser.add_argument("--types", default="", help="comma-separated types (default: all)")
    parser.add_argument("--resume", action="store_true", help="keep results.partial.jsonl")
    parser.add_argument("--redo", default="", help="with --resume: outcomes to run again")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--one", default="", help="run one type here, traceback shown")
    args = parser.parse_args(argv)
    _preload()
    if args.one:
        from .run import run_type

        result = run_type(args.one, lambda name: print(
            "stage:", name if isinstance(name, str) else "explained", flush=True))
        print(json.dumps(result, indent=1, default=str))
        return 0
    from .run import run_many

    types = [t for t in args.types.split(",") if t] or all_types()
    done: dict[str, dict[str, Any]] = {}
    if args.resume and PARTIAL.exists():
        for line in PARTIAL.read_text().splitlines():
            result = json.loads(line)
            if result["outcome"] not in args.redo.split(","):
                done[result["type"]] = result
    elif not args.types:
        PARTIAL.write_text("")
    todo = [t for t in types if t not in done]
    start = time.perf_counter()

    def finished(result: dict[str, Any]) -> None:
        done[result["type"]] = result
        with PARTIAL.open("a") as handle:
            handle.write(json.dumps(result, default=str) + "\n")
        print(f"[{len(done)}/{len(types)}] {result['type']}: {result['outcome']} "
              f"({result.get('seconds')} s) {_short(result.get('reason', ''), 200)}", flush=True)

    run_many(todo, args.workers, args.timeout, finished, args.explain_timeout)
    results = [done[t] for t in types if t in done]
    seconds = time.perf_counter() - start if not args.resume else None
    if not args.types:
        write_table(results, seconds)
        if not args.no_readme:
            write_readme(results)
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
