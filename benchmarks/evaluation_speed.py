"""Dataset-runner speed: all non-IG methods on 200 ``shapes_vqa`` held-out examples.

Run: ``.venv/bin/python benchmarks/evaluation_speed.py [--n 200] [--repeats 3]``

Reports the median wall-clock seconds of ``evaluate`` (attribution + localisation + positive
and negative perturbation tests on both streams) and the seconds per example of each method.
"""

from __future__ import annotations

import argparse
import json

from timing import median_time  # benchmarks/timing.py (scripts run from this folder)

from captum_hetattn.evaluation import evaluate, standard_methods
from captum_hetattn.zoo import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    zoo = load("shapes_vqa")
    methods = standard_methods(include_integrated_gradients=False)
    results = []

    def run() -> None:
        results.append(evaluate(zoo, methods, n=args.n, progress=False))

    seconds = median_time(run, args.repeats)
    per_method = {m.method: m.seconds_per_example for m in results[-1].methods}
    print(json.dumps({"examples": args.n, "methods": len(methods), "seconds": seconds,
                      "attribution_seconds_per_example": per_method}, indent=1))


if __name__ == "__main__":
    main()
