"""Attribution speed on a ViT-base-sized model vs a plain forward+backward and Captum's IG.

Run: ``.venv/bin/python benchmarks/attribution_speed.py [--repeats 5] [--threads 2]``

Random weights from ``ViTConfig()`` (12 layers, hidden 768, 197 tokens), batch 1, CPU. Medians of
``--repeats`` runs after one warm-up. ``IntegratedGradients`` runs with ``n_steps=50`` and
``internal_batch_size=10`` (once: it is slow).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from captum.attr import IntegratedGradients
from timing import median_time  # benchmarks/timing.py (scripts run from this folder)
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

    seconds = {"plain_forward_backward": median_time(plain, args.repeats)}
    for method in (HeterogenousAttentionAttribution, GenericAttentionExplainability,
                   AttentionRollout, RawAttention):
        if args.methods is not None and method.__name__ not in args.methods:
            continue
        explainer = method(forward, model=model)
        seconds[method.__name__] = median_time(
            lambda e=explainer: e.attribute(pixels, target=3), args.repeats
        )
    # explain(): token relevance without laying it out on the pixels (no input-row probes)
    explainer = HeterogenousAttentionAttribution(forward, model=model)
    seconds["HeterogenousAttentionAttribution.explain"] = median_time(
        lambda: explainer.explain(pixels, target=3), args.repeats
    )
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
    print(json.dumps({"seconds": seconds, "ratio_to_plain": ratios, "threads": args.threads,
                      "repeats": args.repeats}, indent=1))


if __name__ == "__main__":
    main()
