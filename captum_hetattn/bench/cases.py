r"""The models of the scale benchmarks (random weights from a transformers config, at the real size
or tiny), timing, and one long-context measurement in a fresh process.

This file is also run as a script, ``python cases.py --worker SPEC`` (see
:func:`captum_hetattn.bench.long_context.run_worker`): it imports nothing of ``captum_hetattn`` at
module level, so the plain side of a measurement never loads the package.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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

    def floor(self) -> None:
        r"""The physical floor of one attribution: forward + ``torch.autograd.grad`` of the target
        logit(s) to every attention call's output — the fused kernel's context
        (``F.scaled_dot_product_attention``), or the probabilities of a hand-written softmax —
        with no parameter gradients (DESIGN §8): what any method that needs every layer's
        attention gradient pays at least. A call the target does not depend on gets none."""
        with attention_outputs() as outputs:
            output = self.forward(*self.inputs, *(self.extra or ()))
        torch.autograd.grad(_select(output, self.target).sum(), outputs, allow_unused=True)

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


@contextmanager
def attention_outputs() -> Iterator[list[Tensor]]:
    r"""While on, the outputs of ``F.scaled_dot_product_attention`` and ``F.softmax`` (the maps
    of eager and hand-written attention) called through ``torch.nn.functional``, in call order.

    The two functions are swapped on the module for the block (the models look them up there
    at each call); nothing else runs, so the floor pays no hook."""
    outputs: list[Tensor] = []
    functional = torch.nn.functional
    originals = functional.scaled_dot_product_attention, functional.softmax

    def keep(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def kept(*args: Any, **kwargs: Any) -> Tensor:
            out = function(*args, **kwargs)
            if out.requires_grad:
                outputs.append(out)
            return out
        return kept

    functional.scaled_dot_product_attention = keep(originals[0])
    functional.softmax = keep(originals[1])
    try:
        yield outputs
    finally:
        functional.scaled_dot_product_attention, functional.softmax = originals


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


#: BERT-mini's sizes (4 layers, hidden 256, 4 heads; google/bert_uncased_L-4_H-256_A-4): the
#: long-context section's small model, which reaches 8192 tokens on a CPU in minutes
MINI = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)


def build_bert(batch: int, quick: bool, tokens: int = 128, mini: bool = False) -> Case:
    from transformers import BertConfig, BertForSequenceClassification

    positions = max(512, tokens)
    sizes = _tiny() if quick else MINI if mini else {}
    config = BertConfig(**sizes, num_labels=2, max_position_embeddings=positions)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(1000, config.vocab_size, (batch, tokens), generator=_generator())

    def forward(i: Tensor) -> Tensor:
        return model(input_ids=i).logits

    name = "BERT (tiny)" if quick else "BERT-mini" if mini else "BERT-base"
    return Case(name, model, forward, (ids,), None, 1)


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
# timing


def median_times(functions: dict[str, Callable[[], object]], repeats: int,
                 sync: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds (of ``clock``) of each function over ``repeats`` runs, after one warm-up
    of each; the functions run in turn within each repeat, so slow drifts of the machine hit all
    alike."""
    for fn in functions.values():
        fn()
        sync()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def sync_for(device: str) -> Callable[[], None]:
    """What waits for the device's queued work before a clock is read (nothing on a CPU)."""
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def to_device(case: Case, device: str) -> None:
    """Move the case's model and inputs to ``device`` (in place)."""
    if device == "cpu":
        return
    case.model.to(device)
    case.inputs = tuple(t.to(device) for t in case.inputs)
    if case.extra is not None:
        case.extra = tuple(t.to(device) if isinstance(t, Tensor) else t for t in case.extra)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run inside a fresh process: build, then time ``mode`` (plain / ours); report peaks."""
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    build = {"bert": build_bert, "gpt2": build_gpt2,
             "bert_mini": lambda *a, **k: build_bert(*a, **k, mini=True)}[spec["model"]]
    case = build(1, spec["quick"], tokens=spec["tokens"])
    to_device(case, device)
    baseline = peak_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.max_memory_allocated() / 2**20
    function = case.plain if spec["mode"] == "plain" else case.ours
    seconds = median_times({"run": function}, spec["repeats"], sync_for(device))["run"]
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mib()
    return {"seconds": seconds, "peak_mib": peak, "baseline_mib": baseline,
            "attention": case.attention}


def peak_rss_mib() -> float:
    r"""This process's peak resident memory in MiB: ``VmHWM`` of ``/proc/self/status`` (the
    high-water mark of this program's own memory). ``getrusage``'s ``ru_maxrss`` is the
    fallback: on Linux it keeps the peak of the process before ``exec`` — the parent's size at
    the fork — so a worker started from a big benchmark process would report the parent's."""
    with suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


__all__ = [
    "Case",
    "attention_outputs",
    "build_bart",
    "build_bert",
    "build_detr",
    "build_gpt2",
    "build_lxmert",
    "build_vit",
    "median_times",
    "peak_rss_mib",
    "sync_for",
    "to_device",
    "worker",
]


if __name__ == "__main__":  # one long-context measurement in a fresh process
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(json.loads(sys.argv[2]))))
