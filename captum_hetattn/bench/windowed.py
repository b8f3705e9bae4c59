r"""The windowed-models section: Swin-T, LED-base and LongT5-small sizes (local and
transient-global) — ``explain`` on its first call (a new explainer: the layout probes run) and
warm (the same explainer, same shapes: layouts from its cache after a cheap check), each vs a
plain forward+backward, timed in turn in one process."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from captum_hetattn.bench.cases import Case, _generator, median_times, sync_for, to_device
from captum_hetattn.bench.report import TARGETS, TITLES, Options, Section, met

#: input tokens of the long windowed models (LED, LongT5) at real sizes
WINDOWED_TOKENS = 1024


def build_swin(quick: bool) -> Case:
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                        num_heads=[2, 2], window_size=4, num_labels=10) if quick else \
        SwinConfig(num_labels=10)
    torch.manual_seed(0)
    model = SwinForImageClassification(config).eval()
    pixels = torch.randn(1, 3, config.image_size, config.image_size, generator=_generator())

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=x).logits

    return Case("Swin-T 224 px" if not quick else "Swin (tiny)", model, forward, (pixels,),
                None, 3)


def build_led(quick: bool, tokens: int = WINDOWED_TOKENS) -> Case:
    from transformers import LEDConfig, LEDForConditionalGeneration

    sizes = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                 attention_window=8) if quick else \
        dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
             decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
             attention_window=512)
    tokens = 32 if quick else tokens
    torch.manual_seed(0)
    model = LEDForConditionalGeneration(LEDConfig(
        **sizes, max_encoder_position_embeddings=max(16384, tokens))).eval()
    ids = torch.randint(5, 100, (1, tokens), generator=_generator())
    decoder = torch.randint(5, 100, (1, 16), generator=_generator(1))
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1

    def forward(i: torch.Tensor, d: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return model(input_ids=i, decoder_input_ids=d, global_attention_mask=g).logits[:, -1]

    name = f"LED-base sizes, {tokens} tokens" if not quick else "LED (tiny)"
    return Case(name, model, forward, (ids,), (decoder, glob), 7)


def build_longt5(quick: bool, attention: str, tokens: int = WINDOWED_TOKENS) -> Case:
    from transformers import LongT5Config, LongT5ForConditionalGeneration

    sizes = dict(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, local_radius=4,
                 global_block_size=4) if quick else \
        dict(d_model=512, d_ff=1024, num_layers=6, num_heads=8)
    tokens = 32 if quick else tokens
    torch.manual_seed(0)
    model = LongT5ForConditionalGeneration(LongT5Config(
        **sizes, encoder_attention_type=attention)).eval()
    ids = torch.randint(5, 100, (1, tokens), generator=_generator())
    decoder = torch.randint(5, 100, (1, 16), generator=_generator(1))

    def forward(i: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return model(input_ids=i, decoder_input_ids=d).logits[:, -1]

    kind = "transient-global" if attention == "transient-global" else "local"
    name = f"LongT5-small sizes ({kind}), {tokens} tokens" if not quick else \
        f"LongT5 (tiny, {kind})"
    return Case(name, model, forward, (ids,), (decoder,), 7)


def _explain_calls(case: Case) -> tuple[Callable[[], object], Callable[[], object]]:
    """``explain`` with a new explainer each time (first call) and with one kept (warm)."""
    from captum_hetattn import HeterogenousAttentionAttribution

    inputs = case.inputs[0] if len(case.inputs) == 1 else case.inputs
    kept = HeterogenousAttentionAttribution(case.forward, model=case.model)

    def first() -> object:
        return HeterogenousAttentionAttribution(case.forward, model=case.model).explain(
            inputs, target=case.target, additional_forward_args=case.extra)

    def warm() -> object:
        return kept.explain(inputs, target=case.target, additional_forward_args=case.extra)

    return first, warm


def _times(case: Case, repeats: int, device: str) -> dict[str, float]:
    """Process CPU seconds on a CPU (other processes' load does not count), wall clock on a
    GPU; plain, first call and warm in turn, medians of ``repeats`` after one warm-up each."""
    first, warm = _explain_calls(case)
    calls = {"plain": case.plain, "first": first, "warm": warm}
    clock = time.perf_counter if device == "cuda" else time.process_time
    return median_times(calls, repeats, sync_for(device), clock)


def bench_windowed(opts: Options) -> Section:
    """Windowed models: ``explain`` first call and warm vs a plain forward+backward."""
    section = Section("windowed", TITLES["windowed"], TARGETS["windowed"],
                      ["model", "plain fwd+bwd (s)", "first call (s)", "warm (s)",
                       "first / plain", "warm / plain", "met"])
    builders: tuple[Callable[[bool], Case], ...] = (
        build_swin, build_led, lambda q: build_longt5(q, "local"),
        lambda q: build_longt5(q, "transient-global"))
    for build in builders:
        case = build(opts.quick)
        to_device(case, opts.device)
        times = _times(case, opts.repeats, opts.device)
        first, warm = times["first"] / times["plain"], times["warm"] / times["plain"]
        swin = case.name.startswith("Swin")
        ok = met(warm, 1.5) if not swin else (
            "yes" if warm <= 1.5 and first <= 3.0 else "**no**")
        section.rows.append([case.name, f"{times['plain']:.3f}", f"{times['first']:.3f}",
                             f"{times['warm']:.3f}", f"{first:.2f}", f"{warm:.2f}", ok])
        section.data.append({"model": case.name, **times, "ratio_first": first,
                             "ratio_warm": warm})
        del case
    section.notes.append(
        "plain = forward + `.backward()` of the target logit into the parameters (the model's "
        "default attention); first call = `HeterogenousAttentionAttribution(forward, "
        "model=model).explain(...)` with a new explainer (records, probes the layouts, traces, "
        "propagates); warm = the same explainer again on the same shapes (layouts from its "
        "cache). CPU: process CPU time, so other processes' load does not count.")
    return section


__all__ = ["WINDOWED_TOKENS", "bench_windowed", "build_led", "build_longt5", "build_swin"]
