r"""``captum-hetattn bench``: the scale benchmarks, written to ``benchmarks/results.md``.

Every model is built from its transformers config with random weights (no download) at the real
size, unless ``quick=True`` (tiny configs: checks that the harness runs, the numbers mean
nothing). Times are medians of ``repeats`` (≥ 5) runs after one warm-up; the two sides of every
ratio are measured in the same run, alternately. Sections (keys for ``only=``):

1. ``batch`` — ViT-base (224 px), BERT-base (128 tokens), LXMERT-base sizes (20 tokens, 36
   regions), batch 1 and 8: ``HeterogenousAttentionAttribution(...).attribute`` / a plain
   forward + ``.backward()`` under the model's default attention (sdpa; LXMERT's attention is
   hand-written). Target ≤ 0.7.
2. ``long_context`` — BERT-base and GPT-2 small (causal) at ``lengths`` tokens (default 512 /
   2048 / 4096 / 8192): time and peak memory of ours vs the plain sdpa forward+backward, each
   measured in a fresh subprocess (its peak RSS, ``VmHWM``, or
   ``torch.cuda.max_memory_allocated`` on a GPU). A length whose predicted time (quadratic
   growth from the last measured length) exceeds ``budget_s``, or whose predicted memory exceeds
   what the machine has free, is skipped and reported as such. Targets at 4096: memory ≤ 1.3×,
   time ≤ 1.5× plain.
3. ``many_targets`` — 20 targets on one input (BART-base, 20 decoder positions; DETR with a small
   ResNet backbone, 20 object queries): ``attribute(..., targets=[...])`` (one forward, batched
   backward) / a loop of ``attribute(..., target=t)``. Target ≤ 0.6. Reported "not available"
   when ``attribute`` has no ``targets`` keyword.
4. ``integrated_gradients`` — Captum ``IntegratedGradients(n_steps=50)`` / ours on ViT-base.
   Target ≥ 40.
5. ``evaluation`` — examples per second of the evaluation runner on ``shapes_vqa`` with 1 and 2
   processes (:func:`captum_hetattn.evaluation.distributed.evaluate_distributed`, wall clock
   including process start), and plain one-process :func:`~captum_hetattn.evaluation.evaluate`.

Run: ``captum-hetattn bench`` or ``python -m captum_hetattn.bench [--quick] [--only ...]``.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SECTIONS: tuple[str, ...] = (
    "batch", "long_context", "many_targets", "integrated_gradients", "evaluation",
)
DEFAULT_LENGTHS: tuple[int, ...] = (512, 2048, 4096, 8192)
QUICK_LENGTHS: tuple[int, ...] = (64,)
EVALUATION_METHODS: tuple[str, ...] = ("ours (pos)", "GAE", "rollout")


# ---------------------------------------------------------------------------------------------
# models (random weights, real sizes or tiny)


@dataclass
class Case:
    """A model, the function Captum explains, its inputs and the target to explain."""

    name: str
    model: nn.Module
    forward: Callable[..., Tensor]
    inputs: tuple[Tensor, ...]
    extra: tuple[Any, ...] | None
    target: Any
    _explainer: Any = None

    def plain(self) -> None:
        """Forward + ``.backward()`` of the target logit(s) into the parameters."""
        self.model.zero_grad(set_to_none=True)
        output = self.forward(*self.inputs, *(self.extra or ()))
        _select(output, self.target).sum().backward()

    def ours(self, **options: Any) -> Any:
        if self._explainer is None:  # built once, as a user would (its graph is cached)
            from captum_hetattn import HeterogenousAttentionAttribution

            self._explainer = HeterogenousAttentionAttribution(self.forward, model=self.model)
        explainer = self._explainer
        inputs = self.inputs[0] if len(self.inputs) == 1 else self.inputs
        options.setdefault("target", self.target)
        return explainer.attribute(inputs, additional_forward_args=self.extra, **options)

    @property
    def attention(self) -> str:
        return str(getattr(self.model.config, "_attn_implementation", None) or "?")


def _select(output: Tensor, target: Any) -> Tensor:
    if isinstance(target, tuple):
        return output[(slice(None), *target)]
    return output[:, target]


def _tiny(**extra: Any) -> dict[str, Any]:
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, **extra)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build_vit(batch: int, quick: bool) -> Case:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(**_tiny(image_size=32, patch_size=8), num_labels=10) if quick else \
        ViTConfig(num_labels=10)
    torch.manual_seed(0)
    model = ViTForImageClassification(config).eval()
    size = config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=_generator())

    def forward(x: Tensor) -> Tensor:
        return model(pixel_values=x).logits

    return Case("ViT-base" if not quick else "ViT (tiny)", model, forward, (pixels,), None, 3)


def build_bert(batch: int, quick: bool, tokens: int = 128) -> Case:
    from transformers import BertConfig, BertForSequenceClassification

    positions = max(512, tokens)
    config = BertConfig(**_tiny(), num_labels=2, max_position_embeddings=positions) if quick \
        else BertConfig(num_labels=2, max_position_embeddings=positions)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(1000, config.vocab_size, (batch, tokens), generator=_generator())

    def forward(i: Tensor) -> Tensor:
        return model(input_ids=i).logits

    return Case("BERT-base" if not quick else "BERT (tiny)", model, forward, (ids,), None, 1)


def build_gpt2(batch: int, quick: bool, tokens: int = 128) -> Case:
    from transformers import GPT2Config, GPT2LMHeadModel

    positions = max(1024, tokens)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=positions) if quick else \
        GPT2Config(n_positions=positions)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(1000, config.vocab_size, (batch, tokens), generator=_generator())

    def forward(i: Tensor) -> Tensor:
        return model(input_ids=i).logits[:, -1]  # next-token logits after the whole context

    return Case("GPT-2 small" if not quick else "GPT-2 (tiny)", model, forward, (ids,), None, 7)


def build_lxmert(batch: int, quick: bool) -> Case:
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    if quick:
        config = LxmertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=37,
                              l_layers=2, x_layers=2, r_layers=1, visual_feat_dim=8,
                              visual_pos_dim=4, num_qa_labels=4, vocab_size=50)
    else:
        config = LxmertConfig(num_qa_labels=3129)  # 9 language, 5 vision, 5 cross layers
    torch.manual_seed(0)
    model = LxmertForQuestionAnswering(config).eval()
    g = _generator()
    ids = torch.randint(5, config.vocab_size, (batch, 20), generator=g)
    feats = torch.randn(batch, 36, config.visual_feat_dim, generator=g)
    boxes = torch.rand(batch, 36, config.visual_pos_dim, generator=g)

    def forward(i: Tensor, f: Tensor, b: Tensor) -> Tensor:
        return model(input_ids=i, visual_feats=f, visual_pos=b).question_answering_score

    name = "LXMERT-base" if not quick else "LXMERT (tiny)"
    return Case(name, model, forward, (ids, feats, boxes), None, 2)


def build_bart(quick: bool, positions: int = 20) -> tuple[Case, list[tuple[int, int]]]:
    from transformers import BartConfig, BartForConditionalGeneration

    sizes = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                 vocab_size=1000) if quick else \
        dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
             decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(**sizes)).eval()
    g = _generator()
    vocab = model.config.vocab_size
    source = torch.randint(5, vocab, (1, 16 if quick else 128), generator=g)
    decoder = torch.randint(5, vocab, (1, positions + 1), generator=g)

    def forward(i: Tensor, d: Tensor) -> Tensor:
        return model(input_ids=i, decoder_input_ids=d).logits

    # explain each next token of the decoder sequence (teacher forcing): (position, token id)
    targets = [(p, int(decoder[0, p + 1])) for p in range(positions)]
    name = "BART-base" if not quick else "BART (tiny)"
    return Case(name, model, forward, (source,), (decoder,), targets[0]), targets


def build_detr(quick: bool, queries: int = 20) -> tuple[Case, list[tuple[int, int]]]:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    if quick:
        backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 8, 16],
                                depths=[1, 1, 1, 1], out_features=["stage4"])
        sizes = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     num_queries=max(queries, 20))
        image = 64
    else:  # DETR's transformer (d 256, 6+6 layers, 8 heads, 100 queries) on a ResNet-18
        backbone = ResNetConfig(num_channels=3, embedding_size=64,
                                hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                layer_type="basic", out_features=["stage4"])
        sizes = dict(num_queries=100)
        image = 384  # 12 × 12 = 144 encoder tokens
    config = DetrConfig(backbone_config=backbone, use_timm_backbone=False,
                        use_pretrained_backbone=False, num_labels=10, **sizes)
    torch.manual_seed(0)
    model = DetrForObjectDetection(config).eval()
    pixels = torch.randn(1, 3, image, image, generator=_generator())

    def forward(x: Tensor) -> Tensor:
        return model(pixel_values=x).logits

    targets = [(q, q % 10) for q in range(queries)]  # (query, class)
    name = "DETR (ResNet-18)" if not quick else "DETR (tiny)"
    return Case(name, model, forward, (pixels,), None, targets[0]), targets


# ---------------------------------------------------------------------------------------------
# timing and the report


def median_times(functions: dict[str, Callable[[], object]], repeats: int,
                 sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` runs, after one warm-up of each; the
    functions run in turn within each repeat, so slow drifts of the machine hit all alike."""
    for fn in functions.values():
        fn()
        sync()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _sync_for(device: str) -> Callable[[], None]:
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


@dataclass
class Section:
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
}
TARGETS = {
    "batch": "ours / plain ≤ 0.7",
    "long_context": "at 4096 tokens, peak memory ≤ 1.3× plain and time ≤ 1.5× plain",
    "many_targets": "batched / looped ≤ 0.6 for 20 targets",
    "integrated_gradients": "IntegratedGradients(n_steps=50) / ours ≥ 40",
    "evaluation": "none set (examples per second with 1 and 2 processes are reported)",
}


def _met(value: float, bound: float, below: bool = True) -> str:
    if value is None or math.isnan(value):
        return "—"
    return "yes" if (value <= bound if below else value >= bound) else "**no**"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib(key: str = "MemTotal") -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return math.nan


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def machine() -> dict[str, Any]:
    """CPU, cores, memory, GPU, versions, date and commit of this run."""
    import captum
    import transformers

    commit = None
    with suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    return {
        "cpu": _cpu_model(),
        "cores": _cores(),
        "memory_gib": round(_memory_gib(), 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "captum": captum.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
    }


def _threads(count: int):
    """Torch threads set to ``count`` inside the block (the evaluation runner's helper)."""
    from captum_hetattn.evaluation.distributed import _threads as threads

    return threads(count)


# ---------------------------------------------------------------------------------------------
# the sections


@dataclass
class Options:
    quick: bool
    repeats: int
    threads: int
    budget_s: float
    lengths: tuple[int, ...]
    device: str
    eval_n: int
    eval_repeats: int


def bench_batch(opts: Options) -> Section:
    section = Section("batch", TITLES["batch"], TARGETS["batch"],
                      ["model", "batch", "attention", "plain fwd+bwd (s)", "ours (s)",
                       "ours / plain", "met"])
    builders = (build_vit, build_bert, build_lxmert)
    for build in builders:
        for batch in (1, 8):
            case = build(batch, opts.quick)
            _to_device(case, opts.device)
            times = median_times({"plain": case.plain, "ours": case.ours}, opts.repeats,
                                 _sync_for(opts.device))
            ratio = times["ours"] / times["plain"]
            section.rows.append([case.name, str(batch), case.attention, f"{times['plain']:.4f}",
                                 f"{times['ours']:.4f}", f"{ratio:.2f}", _met(ratio, 0.7)])
            section.data.append({"model": case.name, "batch": batch, **times, "ratio": ratio})
            del case
    section.notes.append(
        "plain = forward + `.backward()` of the target logit into the parameters under the "
        "model's default attention (LXMERT's is hand-written); ours = "
        "`HeterogenousAttentionAttribution(forward, model=model).attribute(inputs, target=...)`"
        " with default options (input-shaped output)."
    )
    return section


def _to_device(case: Case, device: str) -> None:
    if device == "cpu":
        return
    case.model.to(device)
    case.inputs = tuple(t.to(device) for t in case.inputs)
    if case.extra is not None:
        case.extra = tuple(t.to(device) if isinstance(t, Tensor) else t for t in case.extra)


# --- long context: one fresh process per measurement


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run inside a fresh process: build, then time ``mode`` (plain / ours); report peaks."""
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    build = {"bert": build_bert, "gpt2": build_gpt2}[spec["model"]]
    case = build(1, spec["quick"], tokens=spec["tokens"])
    _to_device(case, device)
    baseline = _peak_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.max_memory_allocated() / 2**20
    function = case.plain if spec["mode"] == "plain" else case.ours
    seconds = median_times({"run": function}, spec["repeats"], _sync_for(device))["run"]
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_rss_mib()
    return {"seconds": seconds, "peak_mib": peak, "baseline_mib": baseline,
            "attention": case.attention}


def _peak_rss_mib() -> float:
    r"""This process's peak resident memory in MiB: ``VmHWM`` of ``/proc/self/status`` (the
    high-water mark of this program's own memory). ``getrusage``'s ``ru_maxrss`` is the
    fallback: on Linux it keeps the peak of the process before ``exec`` — the parent's size at
    the fork — so a worker started from a big benchmark process would report the parent's."""
    with suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    # run this file as a script: the plain side then never imports captum_hetattn
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout:.0f} s (the time budget)"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        killed = done.returncode < 0 or done.returncode == 137
        why = "killed (out of memory?)" if killed else f"exit status {done.returncode}"
        return {"error": f"{why}: {tail[0][:200]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_long_context(opts: Options) -> Section:
    section = Section(
        "long_context", TITLES["long_context"], TARGETS["long_context"],
        ["model", "tokens", "plain (s)", "ours (s)", "time ratio", "plain peak (MiB)",
         "ours peak (MiB)", "memory ratio", "Δ plain / Δ ours (MiB)", "met"],
    )
    free_mib = _memory_gib("MemAvailable") * 1024

    def spec(model: str, tokens: int, mode: str) -> dict[str, Any]:
        return {"model": model, "tokens": tokens, "mode": mode, "quick": opts.quick,
                "repeats": opts.repeats, "threads": opts.threads, "device": opts.device}

    # quick: BERT only (each process pays ~3 s of importing transformers)
    models = ("bert",) if opts.quick else ("bert", "gpt2")
    ready: dict[tuple[str, int, str], dict[str, Any]] = {}
    if opts.quick:  # tiny sizes: start every process at once (memory is per process anyway)
        from concurrent.futures import ThreadPoolExecutor

        keys = [(m, t, mode) for m in models for t in opts.lengths for mode in ("plain", "ours")]
        with ThreadPoolExecutor(len(keys)) as pool:
            futures = {k: pool.submit(_run_worker, spec(*k), opts.budget_s) for k in keys}
        ready = {k: f.result() for k, f in futures.items()}
    if opts.quick:
        section.notes.append("Quick mode: BERT only (GPT-2 small runs in the full benchmark).")
    for model in models:
        measured: dict[str, list[tuple[int, dict[str, Any]]]] = {"plain": [], "ours": []}
        for tokens in sorted(opts.lengths):
            results: dict[str, dict[str, Any]] = {}
            for mode in ("plain", "ours"):
                skip = None
                if mode == "ours" and "error" in results.get("plain", {}):
                    skip = "not run: the plain run did not finish"
                elif measured[mode]:
                    points = measured[mode][-2:]
                    seconds = _extrapolate([(t, r["seconds"]) for t, r in points], tokens)
                    predicted_s = seconds * (opts.repeats + 1) + 5
                    grown = _extrapolate(
                        [(t, max(r["peak_mib"] - r["baseline_mib"], 0)) for t, r in points],
                        tokens)
                    if predicted_s > opts.budget_s:
                        skip = (f"skipped: ~{predicted_s:.0f} s predicted (a + b·n² through "
                                f"the measured lengths) > budget {opts.budget_s:.0f} s")
                    elif opts.device == "cpu" and grown > 0.8 * free_mib:
                        skip = (f"skipped: ~{grown / 1024:.1f} GiB predicted > 80% of the "
                                f"{free_mib / 1024:.1f} GiB free")
                if skip:
                    results[mode] = {"error": skip}
                    continue
                results[mode] = ready.get((model, tokens, mode)) or _run_worker(
                    spec(model, tokens, mode), opts.budget_s)
                if "error" not in results[mode]:
                    measured[mode].append((tokens, results[mode]))
            plain, ours = results["plain"], results["ours"]
            name = {"bert": "BERT-base", "gpt2": "GPT-2 small"}[model]
            if opts.quick:
                name += " (tiny)"
            row = [name, str(tokens)]
            if "error" in plain or "error" in ours:
                row += [_cell(plain, "seconds"), _cell(ours, "seconds"), "—",
                        _cell(plain, "peak_mib", 0), _cell(ours, "peak_mib", 0), "—", "—", "—"]
                for mode, value in (("plain", plain), ("ours", ours)):
                    if "error" in value:
                        section.notes.append(f"{name}, {tokens} tokens, {mode}: {value['error']}")
            else:
                time_ratio = ours["seconds"] / plain["seconds"]
                memory_ratio = ours["peak_mib"] / plain["peak_mib"]
                met = "—"
                if tokens == 4096:
                    met = "yes" if time_ratio <= 1.5 and memory_ratio <= 1.3 else "**no**"
                row += [f"{plain['seconds']:.3f}", f"{ours['seconds']:.3f}", f"{time_ratio:.2f}",
                        f"{plain['peak_mib']:.0f}", f"{ours['peak_mib']:.0f}",
                        f"{memory_ratio:.2f}",
                        f"{plain['peak_mib'] - plain['baseline_mib']:.0f} / "
                        f"{ours['peak_mib'] - ours['baseline_mib']:.0f}", met]
            section.rows.append(row)
            section.data.append({"model": name, "tokens": tokens, "plain": plain, "ours": ours})
    memory = "torch.cuda.max_memory_allocated" if opts.device == "cuda" else \
        "peak RSS (VmHWM) of a fresh process"
    at_once = "; quick mode starts them all at once" if opts.quick else ""
    section.notes.insert(0, (
        f"Each cell is one fresh process (build the model at batch 1, warm up, {opts.repeats} "
        f"timed runs{at_once}): memory = {memory}, including the model; Δ = peak minus the "
        "process's peak after building the model and inputs. Ours = `attribute` with default "
        "options."
    ))
    return section


def _extrapolate(points: list[tuple[int, float]], n: int) -> float:
    """``a + b·n²`` through the last two measured points (``b·n²`` through one); never less than
    the last value. Attention's share grows with n², the rest (weights, projections) slower, so
    this errs on the high side: a length is skipped too early rather than run out of memory."""
    (n1, v1) = points[-1]
    if len(points) == 1 or points[0][0] == n1:
        return v1 * (n / n1) ** 2
    (n0, v0) = points[0]
    b = max((v1 - v0) / (n1**2 - n0**2), 0.0)
    return max(v1 + b * (n**2 - n1**2), v1)


def _cell(result: dict[str, Any], key: str, digits: int = 3) -> str:
    if "error" in result:
        return "skipped" if result["error"].startswith(("skipped", "not run")) else "failed"
    return f"{result[key]:.{digits}f}"


# --- many targets


def _max_difference(batched: Any, looped: list[Any]) -> float:
    first = batched[0] if isinstance(batched, tuple) else batched
    parts = [x[0] if isinstance(x, tuple) else x for x in looped]
    stacked = torch.stack(parts, dim=1)  # (B, K, ...)
    if tuple(first.shape) != tuple(stacked.shape):
        return math.nan
    return float((first - stacked).abs().max())


def bench_many_targets(opts: Options) -> Section:
    section = Section("many_targets", TITLES["many_targets"], TARGETS["many_targets"],
                      ["model", "targets", "looped (s)", "batched (s)", "batched / looped",
                       "max abs difference", "met"])
    from captum_hetattn import HeterogenousAttentionAttribution

    available = "targets" in inspect.signature(
        HeterogenousAttentionAttribution.attribute).parameters
    count = 4 if opts.quick else 20
    for build in (build_bart, build_detr):
        case, targets = build(opts.quick, count)
        _to_device(case, opts.device)
        if not available:
            section.rows.append([case.name, str(len(targets)), "—", "—", "not available", "—",
                                 "—"])
            continue

        def looped(case: Case = case, targets: list = targets) -> list[Any]:
            return [case.ours(target=t) for t in targets]

        def batched(case: Case = case, targets: list = targets) -> Any:
            return case.ours(target=None, targets=targets)

        times = median_times({"looped": looped, "batched": batched}, opts.repeats,
                             _sync_for(opts.device))
        ratio = times["batched"] / times["looped"]
        difference = _max_difference(batched(), looped())
        section.rows.append([case.name, str(len(targets)), f"{times['looped']:.3f}",
                             f"{times['batched']:.3f}", f"{ratio:.2f}", f"{difference:.1e}",
                             _met(ratio, 0.6)])
        section.data.append({"model": case.name, **times, "ratio": ratio,
                             "max_difference": difference})
    if not available:
        section.notes.append("`attribute` has no `targets` keyword in this version: not measured.")
    section.notes.append(
        f"BART: targets (decoder position, next token id) for {count} positions of one input "
        f"(teacher forcing); DETR: (query, class) for queries 0–{count - 1}. Looped = one "
        "`attribute` call per target; batched = one call with `targets=[...]`."
    )
    return section


# --- Integrated Gradients


def bench_integrated_gradients(opts: Options) -> Section:
    from captum.attr import IntegratedGradients

    section = Section("integrated_gradients", TITLES["integrated_gradients"],
                      TARGETS["integrated_gradients"],
                      ["model", "ours (s)", "IntegratedGradients n_steps=50 (s)", "IG / ours",
                       "met"])
    case = build_vit(1, opts.quick)
    _to_device(case, opts.device)
    ig = IntegratedGradients(case.forward)
    times = median_times(
        {"ours": case.ours,
         "ig": lambda: ig.attribute(case.inputs[0], target=case.target, n_steps=50,
                                    internal_batch_size=10)},
        opts.repeats, _sync_for(opts.device),
    )
    ratio = times["ig"] / times["ours"]
    section.rows.append([case.name, f"{times['ours']:.3f}", f"{times['ig']:.3f}",
                         f"{ratio:.1f}", _met(ratio, 40, below=False)])
    section.data.append({"model": case.name, **times, "ratio": ratio})
    section.notes.append("Batch 1, `internal_batch_size=10`.")
    return section


# --- evaluation throughput


def bench_evaluation(opts: Options) -> Section:
    from captum_hetattn.evaluation import evaluate, standard_methods
    from captum_hetattn.evaluation.distributed import evaluate_distributed
    from captum_hetattn.zoo import load

    section = Section("evaluation", TITLES["evaluation"], TARGETS["evaluation"],
                      ["runner", "processes", "threads each", "wall (s)", "examples / s",
                       "vs one process"])
    methods = list(EVALUATION_METHODS[:1] if opts.quick else EVALUATION_METHODS)
    n = opts.eval_n
    shard = max(4, math.ceil(n / 4))  # two shards per rank: few calls, little per-call cost
    every = standard_methods(include_integrated_gradients=False)
    zoo = load("shapes_vqa")
    scratch = Path(tempfile.mkdtemp(prefix="hetattn-bench-"))
    runs = {"evaluate": [], "1": [], "2": []}
    try:
        for repeat in range(opts.eval_repeats):
            start = time.perf_counter()
            with _threads(opts.threads):
                evaluate(zoo, {m: every[m] for m in methods}, n=n, seed=12345, progress=False)
            runs["evaluate"].append(time.perf_counter() - start)
            for nproc in (2,) if opts.quick else (1, 2):
                out = scratch / f"run-{repeat}-{nproc}"
                start = time.perf_counter()
                evaluate_distributed("shapes_vqa", methods, n=n, seed=12345, out_dir=out,
                                     nproc=nproc, shard_size=shard)
                runs[str(nproc)].append(time.perf_counter() - start)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = statistics.median(runs["evaluate"])
    cores = opts.threads
    for label, key, processes, threads in (
        ("`evaluate` (in process)", "evaluate", 1, cores),
        ("`evaluate_distributed`, in process", "1", 1, cores),
        ("`evaluate_distributed`, worker processes", "2", 2, max(1, _cores() // 2)),
    ):
        if not runs[key]:
            continue
        wall = statistics.median(runs[key])
        section.rows.append([label, str(processes), str(threads), f"{wall:.2f}",
                             f"{n / wall:.1f}", f"{base / wall:.2f}×"])
        section.data.append({"runner": key, "processes": processes, "wall_s": wall,
                             "examples_per_s": n / wall, "runs": runs[key]})
    section.notes.append(
        f"shapes_vqa, {n} examples, seed 12345, methods {methods}, perturbation tests on, "
        f"shards of {shard}; median of {opts.eval_repeats} runs; wall clock includes starting "
        "the worker processes (each imports torch and transformers and loads the model) and "
        "writing the shards."
    )
    return section


RUNNERS: dict[str, Callable[[Options], Section]] = {
    "batch": bench_batch,
    "long_context": bench_long_context,
    "many_targets": bench_many_targets,
    "integrated_gradients": bench_integrated_gradients,
    "evaluation": bench_evaluation,
}


def run_benchmarks(
    out: str | Path = "benchmarks/results.md",
    quick: bool = False,
    only: Sequence[str] | None = None,
    *,
    repeats: int | None = None,
    threads: int | None = None,
    budget_s: float | None = None,
    lengths: Sequence[int] | None = None,
    device: str | None = None,
    eval_n: int | None = None,
    eval_repeats: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    r"""Run the benchmarks and write ``out`` (markdown) and ``out`` with ``.json`` (numbers).

    Args:
        out: the markdown report.
        quick: tiny models and sizes (a smoke test of the harness; numbers mean nothing).
        only: section keys to run (:data:`SECTIONS`); the others keep the figures of an earlier
            run written to ``out`` in the same mode (noted as carried over), or are listed as
            not run — so a long benchmark can be run in parts.
        repeats: timed runs per median (default 5; quick 1).
        threads: torch threads (default: every core this process may use; quick: 1).
        budget_s: longest a long-context measurement may take (default 900 s; quick 120 s);
            lengths predicted to exceed it are skipped and reported.
        lengths: long-context token counts (default 512, 2048, 4096, 8192; quick 64).
        device: ``"cpu"`` or ``"cuda"`` (default: cuda when there is one).
        eval_n / eval_repeats: examples and runs of the evaluation throughput (default 1000 / 5;
            quick 8 / 1).

    Returns:
        ``{"machine": ..., "options": ..., "sections": {key: {...}}}`` (also written as JSON).
    """
    chosen = list(SECTIONS if only is None else only)
    unknown = [key for key in chosen if key not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(SECTIONS)}")
    repeats = repeats if repeats is not None else (1 if quick else 5)
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int ≥ 1, got {repeats!r}")
    opts = Options(
        quick=quick,
        repeats=repeats,
        threads=threads or (1 if quick else _cores()),
        budget_s=float(budget_s if budget_s is not None else (120 if quick else 900)),
        lengths=tuple(lengths or (QUICK_LENGTHS if quick else DEFAULT_LENGTHS)),
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        eval_n=eval_n or (8 if quick else 1000),
        eval_repeats=eval_repeats or (1 if quick else 5),
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    load_start = _load()
    began = time.perf_counter()
    sections: dict[str, Section] = {}
    with _threads(opts.threads):
        for key in SECTIONS:
            if key not in chosen:
                continue
            log(f"bench: {TITLES[key]} ...")
            start = time.perf_counter()
            sections[key] = RUNNERS[key](opts)
            sections[key].seconds = time.perf_counter() - start
            log(f"bench: {key} done in {sections[key].seconds:.1f} s")
    total = time.perf_counter() - began
    load_end = _load()
    stamp = f"{info['date']}, commit {info['commit'] or '?'}, load {load_start:.1f}–{load_end:.1f}"
    saved = {key: {"title": s.title, "target": s.target, "header": s.header, "rows": s.rows,
                   "notes": s.notes, "data": s.data, "seconds": s.seconds, "run": stamp}
             for key, s in sections.items()}
    for key, earlier in _earlier_sections(out, opts.quick).items():
        if key not in sections:  # left out by `only`: keep the earlier run's figures
            saved[key] = earlier
            sections[key] = Section(key, earlier["title"], earlier["target"], earlier["header"],
                                    earlier["rows"], earlier["notes"] + [
                                        f"Carried over from an earlier run ({earlier['run']})."],
                                    earlier["data"], earlier["seconds"])
    out.write_text(_report(info, opts, sections, chosen, total, load_start, load_end))
    data = {
        "machine": info,
        "options": vars(opts),
        "load_average": [load_start, load_end],
        "total_seconds": total,
        "sections": {key: saved[key] for key in SECTIONS if key in saved},
    }
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    return data


def _earlier_sections(out: Path, quick: bool) -> dict[str, dict[str, Any]]:
    """Sections of an earlier run written to the same place in the same mode (for ``only``)."""
    try:
        earlier = json.loads(out.with_suffix(".json").read_text())
        if earlier["options"]["quick"] != quick:
            return {}
        return {key: value for key, value in earlier["sections"].items()
                if key in SECTIONS and "run" in value}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _report(info: dict[str, Any], opts: Options, sections: dict[str, Section],
            chosen: Sequence[str], total: float, load_start: float, load_end: float) -> str:
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
    for key in SECTIONS:
        if key in sections:
            lines.append(sections[key].markdown())
        else:
            lines += [f"## {TITLES[key]}", "", f"Target: {TARGETS[key]}.", "",
                      f"- Not run (`only={list(chosen)}`).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``captum-hetattn bench`` (also ``python -m captum_hetattn.bench``)."""
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.md"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny models: check the harness in seconds (numbers mean nothing)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="runs per median (5)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds a long-context measurement may take (default 900)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="long-context tokens (default 512 2048 4096 8192)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--eval-n", type=int, default=None)
    parser.add_argument("--eval-repeats", type=int, default=None)


def run_from_args(args: argparse.Namespace) -> int:
    """Run what :func:`add_arguments` parsed; print where the report went."""
    data = run_benchmarks(
        args.out, quick=args.quick, only=args.only, repeats=args.repeats, threads=args.threads,
        budget_s=args.budget, lengths=args.lengths, device=args.device, eval_n=args.eval_n,
        eval_repeats=args.eval_repeats,
    )
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')} "
          f"({data['total_seconds']:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:  # one long-context measurement in a fresh process
        print(json.dumps(_worker(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m captum_hetattn.bench",
                                     description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


__all__ = ["SECTIONS", "add_arguments", "machine", "median_times", "run_benchmarks",
           "run_from_args"]


if __name__ == "__main__":
    sys.exit(main())
