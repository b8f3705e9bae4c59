r"""Retrain a zoo model and write its weights: ``python -m captum_hetattn.zoo.train NAME``.

Each zoo module defines ``train(seed=0, log=print) -> ZooModel`` (seeded, CPU, minutes on 2
cores); this entry point runs it, saves the weights beside the package and prints the held-out
accuracy.
"""

from __future__ import annotations

import argparse
import importlib
import time

from captum_hetattn.zoo import REGISTRY, save_weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(REGISTRY))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    module = importlib.import_module(REGISTRY[args.name])
    if not hasattr(module, "train"):
        raise SystemExit(f"{args.name} is not trained here (it ships pretrained weights)")
    start = time.perf_counter()
    zoo_model = module.train(seed=args.seed)
    path = save_weights(zoo_model.model, args.name)
    print(f"trained {args.name} in {time.perf_counter() - start:.0f} s -> {path}")
    print(f"held-out accuracy: {zoo_model.accuracy():.3f}")


if __name__ == "__main__":
    main()
