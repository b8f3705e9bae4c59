"""Attribution speed on a ViT-base-sized model vs a plain forward+backward and Captum's IG.

Run: ``.venv/bin/python benchmarks/attribution_speed.py [--repeats 5] [--threads 2]``

Random weights from ``ViTConfig()`` (12 layers, hidden 768, 197 tokens), batch 1, CPU. Medians of
``--repeats`` rounds after one warm-up round, each round timing the plain pass and every method
back to back (``ratio_to_plain_per_round``: medians of the per-round ratios); the explainers
are kept between rounds (warm), except ``HeterogenousAttentionAttribution.first_call`` (a new
explainer each time). ``IntegratedGradients`` runs with ``n_steps=50`` and
``internal_batch_size=10`` (once: it is slow).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from captum.attr import IntegratedGradients
from timing import interleaved_times  # benchmarks/timing.py (scripts run from this folder)
from transformers import ViTConfig, ViTForImageClassification

from captum_hetattn import (
    AttentionRollout,
    GenericAttentionExplainability,
    HeterogenousAttentionAttribution,
    RawAttention,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-ig", action="store_true")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="explainer classes to time (default: all four)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=10)).eval()
    pixels = torch.randn(1, 3, 224, 224)

    def forward(x):
        return model(pixel_values=x).logits

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        forward(pixels)[0, 3].backward()

    fns = {"plain_forward_backward": plain}
    for method in (HeterogenousAttentionAttribution, GenericAttentionExplainability,
                   AttentionRollout, RawAttention):
        if args.methods is not None and method.__name__ not in args.methods:
            continue
        explainer = method(forward, model=model)
        fns[method.__name__] = lambda e=explainer: e.attribute(pixels, target=3)
    fns["HeterogenousAttentionAttribution.first_call"] = (
        lambda: HeterogenousAttentionAttribution(forward, model=model).attribute(pixels, target=3))
    # explain(): token relevance without laying it out on the pixels (no input rows)
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    fns["HeterogenousAttentionAttribution.explain"] = lambda: explainer.explain(pixels, target=3)
    # every round times each of them back to back: a load that comes and goes falls on all
    times = interleaved_times(fns, args.repeats)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    per_round = {name: statistics.median(t / b for t, b in zip(values,
                                         times["plain_forward_backward"], strict=True))
                 for name, values in times.items()}
    if not args.skip_ig:
        start = time.perf_counter()
        IntegratedGradients(forward).attribute(
            pixels, target=3, n_steps=50, internal_batch_size=10
        )
        seconds["IntegratedGradients_n50"] = time.perf_counter() - start
    base = seconds["plain_forward_backward"]
    ratios = {name: value / base for name, value in seconds.items()}
    if "IntegratedGradients_n50" in seconds:
        ratios["IG_over_ours"] = (
            seconds["IntegratedGradients_n50"] / seconds["HeterogenousAttentionAttribution"]
        )
    print(json.dumps({"seconds": seconds, "ratio_to_plain": ratios,
                      "ratio_to_plain_per_round": per_round, "threads": args.threads,
                      "repeats": args.repeats}, indent=1))


if __name__ == "__main__":
    main()
