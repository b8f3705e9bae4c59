r"""``captum-hetattn bench``: the scale benchmarks, written to ``benchmarks/results.md``.

Every model is built from its transformers config with random weights (no download) at the real
size, unless ``quick=True`` (tiny configs: checks that the harness runs, the numbers mean
nothing). Times are medians of ``repeats`` (≥ 5) runs after one warm-up; the two sides of every
ratio are measured in the same run, alternately. Sections (keys for ``only=``):

1. ``batch`` — ViT-base (224 px), BERT-base (128 tokens), LXMERT-base sizes (20 tokens, 36
   regions), batch 1 and 8: ``HeterogenousAttentionAttribution(...).attribute`` / a plain
   forward + ``.backward()`` under the model's default attention (sdpa; LXMERT's attention is
   hand-written). Target ≤ 0.7.
2. ``long_context`` — BERT-base, BERT-mini (4 layers, hidden 256) and GPT-2 small (causal) at
   ``lengths`` tokens (default 512 / 2048 / 4096 / 8192): time and peak memory of ours vs the
   plain sdpa forward+backward, each measured in a fresh subprocess (its peak RSS, ``VmHWM``, or
   ``torch.cuda.max_memory_allocated`` on a GPU). A length whose predicted time (quadratic
   growth from the last measured length) exceeds ``budget_s``, or whose predicted memory exceeds
   what the machine has free, is skipped and reported as such. Targets: memory ≤ 1.3× plain;
   time ≤ 1.0× plain at 2048 tokens, ≤ 1.5× at 4096 and 8192.
3. ``many_targets`` — 20 targets on one input (BART-base, 20 decoder positions; DETR with a small
   ResNet backbone, 20 object queries): ``attribute(..., targets=[...])`` (one forward, batched
   backward) / a loop of ``attribute(..., target=t)``. Target ≤ 0.6. Reported "not available"
   when ``attribute`` has no ``targets`` keyword.
4. ``integrated_gradients`` — Captum ``IntegratedGradients(n_steps=50)`` / ours on ViT-base.
   Target ≥ 40.
5. ``evaluation`` — examples per second of the evaluation runner on ``shapes_vqa`` with 1 and 2
   processes (:func:`captum_hetattn.evaluation.distributed.evaluate_distributed`, wall clock
   including process start), and plain one-process :func:`~captum_hetattn.evaluation.evaluate`.
6. ``windowed`` — Swin-T (224 px), LED-base sizes and LongT5-small sizes (local and
   transient-global) at 1024 tokens: ``explain`` on its first call (new explainer: layout probes)
   and warm (same explainer, same shapes: cached layouts) / a plain forward+backward, in process
   CPU time on a CPU. Targets: warm ≤ 1.5×; Swin-T's first call ≤ 3×.

Run: ``captum-hetattn bench`` or ``python -m captum_hetattn.bench [--quick] [--only ...]``;
``--readme README.md`` also writes the headline table (:func:`headline_markdown`) into the
README's ``bench-headline`` block.

Modules: :mod:`~captum_hetattn.bench.cases` (models, timing, the long-context worker),
:mod:`~captum_hetattn.bench.machine`, :mod:`~captum_hetattn.bench.report` (sections, options,
markdown), :mod:`~captum_hetattn.bench.sections`, :mod:`~captum_hetattn.bench.long_context`,
:mod:`~captum_hetattn.bench.runner` (:func:`run_benchmarks`, the command line),
:mod:`~captum_hetattn.bench.windowed`.
"""

from captum_hetattn.bench.cases import (
    Case,
    build_bart,
    build_bert,
    build_detr,
    build_gpt2,
    build_lxmert,
    build_vit,
    median_times,
)
from captum_hetattn.bench.long_context import bench_long_context
from captum_hetattn.bench.machine import machine
from captum_hetattn.bench.report import (
    SECTIONS,
    TARGETS,
    TITLES,
    Options,
    Section,
    headline_markdown,
    headline_rows,
    write_headline,
)
from captum_hetattn.bench.runner import (
    DEFAULT_LENGTHS,
    QUICK_LENGTHS,
    RUNNERS,
    add_arguments,
    main,
    run_benchmarks,
    run_from_args,
)
from captum_hetattn.bench.sections import (
    EVALUATION_METHODS,
    bench_batch,
    bench_evaluation,
    bench_integrated_gradients,
    bench_many_targets,
)
from captum_hetattn.bench.windowed import bench_windowed

__all__ = [
    "DEFAULT_LENGTHS",
    "EVALUATION_METHODS",
    "QUICK_LENGTHS",
    "RUNNERS",
    "SECTIONS",
    "TARGETS",
    "TITLES",
    "Case",
    "Options",
    "Section",
    "add_arguments",
    "bench_batch",
    "bench_evaluation",
    "bench_integrated_gradients",
    "bench_long_context",
    "bench_many_targets",
    "bench_windowed",
    "build_bart",
    "build_bert",
    "build_detr",
    "build_gpt2",
    "build_lxmert",
    "build_vit",
    "headline_markdown",
    "headline_rows",
    "machine",
    "main",
    "median_times",
    "run_benchmarks",
    "run_from_args",
    "write_headline",
]
