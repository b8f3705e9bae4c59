"""Capture overhead: AttentionRecorder vs a plain forward + backward on a ViT-base-sized model.

Run: ``.venv/bin/python benchmarks/capture_overhead.py [--repeats 7] [--threads 2]``

Random weights from ``ViTConfig()`` (ViT-base: 12 layers, hidden 768, 12 heads, 224×224 → 197
tokens), batch 1, CPU. Reported: median seconds of

- ``plain``: ``model(x).logits[0, 0].backward()`` under the model's default attention (sdpa);
- ``plain_eager``: the same with eager attention (what the recorder's maps cost by themselves);
- ``grad_to_maps``: forward + ``torch.autograd.grad`` to the attention maps only (no parameter
  gradients; the path the attribution engine takes);
- ``recorder_backward``: ``AttentionRecorder`` around forward + ``.backward()``;
- ``recorder_grad``: ``AttentionRecorder`` + ``compute_gradients`` (grad to the maps only);

and the ratios against ``plain``.
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import median_time  # benchmarks/timing.py (scripts run from this folder)
from transformers import ViTConfig, ViTForImageClassification

from captum_hetattn.capture import AttentionRecorder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=10)).eval()
    pixels = torch.randn(1, 3, 224, 224)

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        model(pixel_values=pixels).logits[0, 0].backward()

    def recorder_backward() -> None:
        model.zero_grad(set_to_none=True)
        with AttentionRecorder(model) as recorder:
            model(pixel_values=pixels).logits[0, 0].backward()
        assert len(recorder.records) == 12

    def recorder_grad() -> None:
        with AttentionRecorder(model) as recorder:
            recorder.compute_gradients(model(pixel_values=pixels).logits[0, 0])
        assert len(recorder.records) == 12

    results = {"plain": median_time(plain, args.repeats)}
    default_impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    results["plain_eager"] = median_time(plain, args.repeats)

    maps: list[torch.Tensor] = []

    def grad_to_maps() -> None:
        maps.clear()
        output = model(pixel_values=pixels, output_attentions=True)
        torch.autograd.grad(output.logits[0, 0], list(output.attentions))

    results["grad_to_maps"] = median_time(grad_to_maps, args.repeats)
    model.set_attn_implementation(default_impl)
    results["recorder_backward"] = median_time(recorder_backward, args.repeats)
    results["recorder_grad"] = median_time(recorder_grad, args.repeats)
    ratios = {f"{k}/plain": v / results["plain"] for k, v in results.items() if k != "plain"}
    ratios["recorder_backward/plain_eager"] = results["recorder_backward"] / results["plain_eager"]
    print(json.dumps({"seconds": results, "ratios": ratios, "threads": args.threads,
                      "repeats": args.repeats, "default_attention": default_impl}, indent=1))


if __name__ == "__main__":
    main()
