r"""Append the sweep's problem types to a findings file, one line per type not yet in it:
``type | outcome | exception and where | repro``. Crashes, hangs, silent answers and refusals
whose message names no module of the model are listed.

Usage: ``PYTHONPATH=.:tests python -m model_types.findings FILE``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .sweep import PARTIAL

REPRO = "PYTHONPATH=.:tests python -m model_types.sweep --one {}"


def problems(results: dict[str, dict]) -> list[str]:
    lines = []
    for name, r in sorted(results.items()):
        outcome = r["outcome"]
        if outcome == "refused" and not r.get("names_module", True):
            outcome = "unclear-refusal"
        elif outcome == "refused" and any(text in r.get("reason", "") for text in (
                "matches no module", "check the graph")):
            outcome = "unclear-refusal (a graph the user never wrote)"
        elif outcome not in ("crash", "hang", "silent"):
            continue
        reason = " ".join(str(r.get("reason", "")).split()).replace("|", "/")[:400]
        lines.append(f"{name} | {outcome} | {r.get('cls', '')}: {reason} | {REPRO.format(name)}")
    return lines


def main(path: str) -> int:
    results = {}
    for line in PARTIAL.read_text().splitlines():
        result = json.loads(line)
        results[result["type"]] = result
    target = Path(path)
    seen = target.read_text() if target.exists() else ""
    known = {line.split(" | ")[0] for line in seen.splitlines() if " | " in line}
    new = [line for line in problems(results) if line.split(" | ")[0] not in known]
    with target.open("a") as handle:
        handle.writelines(line + "\n" for line in new)
    print(f"{len(new)} new lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
