"""Cost of explaining models whose attention is windowed, banded or blocked (token layouts).

Run: ``.venv/bin/python benchmarks/layouts_speed.py [--repeats 5] [--threads 2]``

Random weights, CPU, batch 1, ``--repeats`` rounds after one warm-up round, each round timing
plain, first call and warm back to back (medians of the per-round ratios; ``best_ratio_*``:
fastest over fastest). For each model:
a plain forward+backward (sdpa where the model has it); ``explain()`` (record, lay out, trace,
propagate) on its **first call** (a new explainer each time: the layout probes run) and **warm**
(the same explainer again, same shapes: the layouts come from the explainer's cache after a
cheap check); and their ratios to plain.

- Swin-T sized (``SwinConfig()``: 224×224, window 7, 4 stages, 28M parameters);
- LED-base sized (d_model 768, 6+6 layers, 12 heads, window 512) on ``--tokens`` input tokens
  with one global token, 16 decoder tokens;
- LongT5-small sized, transient-global (d_model 512, 6+6 layers, 8 heads), ``--tokens`` input
  tokens (base size at 1024 tokens needed 20 GB here: the probes keep each call's double-backward
  graph while they run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from timing import interleaved_times  # benchmarks/timing.py (scripts run from this folder)

from captum_hetattn import HeterogenousAttentionAttribution


def _swin():
    from transformers import SwinConfig, SwinForImageClassification

    model = SwinForImageClassification(SwinConfig(num_labels=10)).eval()
    pixels = torch.randn(1, 3, 224, 224)
    return model, (lambda x: model(pixel_values=x).logits), (pixels,), None, 3


def _led(tokens: int):
    from transformers import LEDConfig, LEDForConditionalGeneration

    config = LEDConfig(d_model=768, encoder_layers=6, decoder_layers=6,
                       encoder_attention_heads=12, decoder_attention_heads=12,
                       encoder_ffn_dim=3072, decoder_ffn_dim=3072, attention_window=512,
                       max_encoder_position_embeddings=max(16384, tokens))
    model = LEDForConditionalGeneration(config).eval()
    ids = torch.randint(5, 1000, (1, tokens))
    decoder = torch.randint(5, 1000, (1, 16))
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1

    def forward(i, d, g):
        return model(input_ids=i, decoder_input_ids=d, global_attention_mask=g).logits[:, -1]

    return model, forward, (ids,), (decoder, glob), 7


def _longt5(tokens: int, attention: str = "transient-global"):
    from transformers import LongT5Config, LongT5ForConditionalGeneration

    config = LongT5Config(d_model=512, d_ff=1024, num_layers=6, num_heads=8,
                          encoder_attention_type=attention)
    model = LongT5ForConditionalGeneration(config).eval()
    ids = torch.randint(5, 1000, (1, tokens))
    decoder = torch.randint(5, 1000, (1, 16))

    def forward(i, d):
        return model(input_ids=i, decoder_input_ids=d).logits[:, -1]

    return model, forward, (ids,), (decoder,), 7


def _peak(built, which: str) -> None:
    """Run one plain forward+backward or one first ``explain`` call; print VmHWM (MiB)."""
    model, forward, inputs, extra, target = built
    if which == "plain":
        forward(*inputs, *(extra or ()))[0, target].backward()
    else:
        HeterogenousAttentionAttribution(forward, model=model).explain(
            inputs, target=target, additional_forward_args=extra)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    print(json.dumps({"memory": which, "peak_rss_mib": round(peak / 1024, 1)}))


def _reporting(model: str, call: str, fn, clock):
    """``fn``, printing the seconds of each of its calls (``--progress``)."""
    def timed():
        start = clock()
        fn()
        print(json.dumps({"model": model, "call": call, "seconds": round(clock() - start, 3)}),
              flush=True)
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--models", nargs="*",
                        default=["swin_t", "led", "longt5_local", "longt5_tglobal"])
    parser.add_argument("--cpu", action="store_true",
                        help="process CPU time instead of wall-clock (a shared machine)")
    parser.add_argument("--progress", action="store_true",
                        help="print every timed call as it ends (the warm-up round included), "
                        "so that a run stopped by a time limit still tells something")
    parser.add_argument("--memory", choices=["plain", "first"],
                        help="run one call of one model and print peak RSS (fresh process)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    builders = {"swin_t": _swin, "led": lambda: _led(args.tokens),
                "longt5_local": lambda: _longt5(args.tokens, "local"),
                "longt5_tglobal": lambda: _longt5(args.tokens)}
    if args.memory:
        _peak(builders[args.models[0]](), args.memory)
        return
    clock = time.process_time if args.cpu else time.perf_counter
    for name in args.models:
        build = builders[name]
        model, forward, inputs, extra, target = build()

        def plain(model=model, forward=forward, inputs=inputs, extra=extra, target=target):
            model.zero_grad(set_to_none=True)
            forward(*inputs, *(extra or ()))[0, target].backward()

        explainer = HeterogenousAttentionAttribution(forward, model=model)

        def first(model=model, forward=forward, inputs=inputs, extra=extra, target=target):
            HeterogenousAttentionAttribution(forward, model=model).explain(
                inputs, target=target, additional_forward_args=extra)

        fns = {
            "plain_forward_backward": plain,
            "explain_first_call": first,
            "explain_warm": lambda e=explainer, i=inputs, x=extra, t=target: e.explain(
                i, target=t, additional_forward_args=x),
        }
        if args.progress:
            fns = {call: _reporting(name, call, fn, clock) for call, fn in fns.items()}
        times = interleaved_times(fns, args.repeats, clock)
        seconds = {name: statistics.median(values) for name, values in times.items()}
        base = times["plain_forward_backward"]
        for call in ("first_call", "warm"):  # per round (plain and ours timed back to back)
            ratios = [t / b for t, b in zip(times[f"explain_{call}"], base, strict=True)]
            seconds[f"ratio_{call}"] = statistics.median(ratios)
            seconds[f"best_ratio_{call}"] = min(times[f"explain_{call}"]) / min(base)
        results[name] = seconds
        print(name, json.dumps({k: round(v, 3) for k, v in seconds.items()}), flush=True)
    print(json.dumps({"threads": args.threads, "repeats": args.repeats,
                      "tokens": args.tokens, "results": results}, indent=1))


if __name__ == "__main__":
    main()
