r"""Configurations the sweep never built: each type's sweep build, perturbed, then explained and
checked exactly as :mod:`model_types.run` checks the sweep (eager maps, the paper's rule, batch
equals singles, padding is zero, the model restored).

A run is ``TYPE@VARIANT``. Every variant also moves each floating parameter by a random step of
its own spread (seeded by ``--seed``, the type and the variant), so that weights the default init
leaves at zero or one (gates, layer scales) take part. Variants:

- config: ``layers3``, ``heads4``, ``heads1``, ``hidden48`` (48 wide, 4 heads of 12), ``short``
  (4 tokens), ``tokens2`` (2 tokens, one padded), ``long`` (24 tokens), ``labels1`` (a
  regression head), ``labels5``;
- head: ``head-lm``, ``head-base``, ``head-classifier`` (another class than the sweep's);
- batch: ``batch3`` (a third example), and for ids with a mask ``pad-left``, ``pad-right``
  (three examples padded 0 / 3 / 1 tokens), ``holes`` (masked tokens inside real ones),
  ``embeds`` (``inputs_embeds`` instead of ids);
- target: ``target-tuple`` (``(t,)``), ``target-list`` (one class per example);
- ``weights``: the perturbation alone; ``sharp``: a perturbation four times larger (peaked maps);
- ``window``: a sliding window of 4 tokens over 16 (where the config has one); ``eager``: the
  model set to ``attn_implementation="eager"``; ``output-attentions``: the model returns its maps;
  ``double``: the model and its float inputs in float64; ``bool-mask`` / ``float-mask``: the
  attention mask as booleans / floats.

Usage (from the repository root)::

    PYTHONPATH=.:tests python -m model_types.variants --sample 80 --seed 9 --per-type 3
    PYTHONPATH=.:tests python -m model_types.variants --types gpt2,bert --variants pad-left
    PYTHONPATH=.:tests python -m model_types.variants --one gpt2@pad-left   # here, traceback
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import build as B
from .build import BuildError, Case

HERE = Path(__file__).resolve().parent
ORDINARY = (5, 89)  # ids the sweep's inputs draw: clear of special and placeholder ids

#: config variants: values of :mod:`model_types.build`'s module constants
CONFIG: dict[str, dict[str, int]] = {
    "layers3": {"LAYERS": 3},
    "heads4": {"HEADS": 4, "HEAD_DIM": 8},
    "heads1": {"HEADS": 1, "HEAD_DIM": 32},
    "hidden48": {"HIDDEN": 48, "HEADS": 4, "HEAD_DIM": 12},
    "short": {"LENGTH": 4, "PAD_EXTRA": 1},
    "tokens2": {"LENGTH": 2, "PAD_EXTRA": 1},  # example 1: one real token
    "long": {"LENGTH": 24, "PAD_EXTRA": 7},
    "labels1": {"LABELS": 1},
    "labels5": {"LABELS": 5},
}
#: config values merged into the type's tiny config (a key the config lacks is inert)
WINDOW = {"sliding_window": 4, "use_sliding_window": True, "max_window_layers": 0}
HEADS = {"head-lm": "lm", "head-base": "base", "head-classifier": "classifier"}
IDS = ("pad-left", "pad-right", "holes", "embeds", "bool-mask", "float-mask")
OTHER = ("batch3", "target-tuple", "target-list", "weights", "window", "eager",
         "output-attentions", "double", "sharp")
VARIANTS = (*CONFIG, *HEADS, *IDS, *OTHER)


class NotApplicable(BuildError):
    r"""The variant does not apply to this type (counted as not built)."""


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


@contextmanager
def _constants(values: dict[str, int], model_type: str, head: Any, seed: int,
               config: dict[str, Any] | None = None) -> Any:
    r"""``build``'s module constants, its input generator (seeded), the type's forced class and
    extra config values set for the duration of a build."""
    saved = {name: getattr(B, name) for name in values}
    generator, overrides = B._generator, B.OVERRIDES.get(model_type)
    try:
        for name, value in values.items():
            setattr(B, name, value)
        B._generator = lambda offset: torch.Generator().manual_seed(1234 + offset + seed)
        entry = dict(overrides or {})
        if head is not None:
            entry["head"] = head
        if config:
            entry["config"] = {**entry.get("config", {}), **config}
        B.OVERRIDES[model_type] = entry
        yield
    finally:
        for name, value in saved.items():
            setattr(B, name, value)
        B._generator = generator
        if overrides is None:
            B.OVERRIDES.pop(model_type, None)
        else:
            B.OVERRIDES[model_type] = overrides


def perturb(model: torch.nn.Module, seed: int, size: float = 1.0) -> None:
    r"""Every floating parameter moved by ``size`` × its spread (0.02 for constant ones)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.is_floating_point():
                continue
            spread = float(parameter.std()) if parameter.numel() > 1 else 0.0
            spread = spread if spread > 1e-6 and spread == spread else 0.02
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            parameter.add_((noise * size * spread).to(parameter.dtype))


def _scores(case: Case) -> Tensor:
    with torch.no_grad():
        return case.forward_func(*case.inputs, *case.additional_forward_args)


def _other_class(model_type: str, head: str, current: str) -> tuple[str, str]:
    r"""The first class of kind ``head`` for the type other than the sweep's."""
    config = B.tiny_config(model_type)
    saved = B.OVERRIDES.get(model_type, {})
    B.OVERRIDES[model_type] = {k: v for k, v in saved.items() if k != "head"}
    try:
        found = [p for p in B._head_candidates(model_type, config) if p[0] == head]
    finally:
        B.OVERRIDES[model_type] = saved
    found = [p for p in found if p[1] != current]
    if not found:
        raise NotApplicable(f"no {head} class other than {current}")
    return found[0]


def _ids_case(case: Case) -> tuple[Tensor, Tensor]:
    r"""The ids and the mask of a sweep case whose first input is ordinary ids beside their
    mask (other inputs may follow: decoder ids, pixels)."""
    ids = case.inputs[0] if case.inputs else None
    if (ids is None or case.mask is None or ids.is_floating_point()
            or ids.shape != case.mask.shape or not any(
                a is case.mask for a in case.additional_forward_args)):
        raise NotApplicable("not an ids-and-mask case")
    real = ids[case.mask.bool()]
    if bool(((real < ORDINARY[0]) | (real >= ORDINARY[1])).any()):
        raise NotApplicable("the ids hold special or placeholder ids")
    return ids, case.mask


def _padded(case: Case, side: str, seed: int, holes: bool = False) -> Case:
    r"""Examples padded 0 / 3 / 1 tokens on ``side`` (three of them, other inputs given a third
    example); ``holes``: masked tokens inside the real ones of examples 0 and 2 too."""
    ids, mask = _ids_case(case)
    if ids.shape[0] == 2:
        case = _batch3(case, seed)
        ids, mask = case.inputs[0], case.mask
    pad = int(ids[1, -1]) if int(mask[1, -1]) == 0 else (int(ids[1, 0]) if int(mask[1, 0]) == 0
                                                          else 0)
    length, batch = ids.shape[1], ids.shape[0]
    generator = torch.Generator().manual_seed(seed)
    top = min(ORDINARY[1], int(ids.max()) + 1)  # inside a small vocabulary (VITS' symbols)
    new = torch.randint(ORDINARY[0], max(top, ORDINARY[0] + 1), (batch, length),
                        generator=generator)
    new_mask = torch.ones(batch, length, dtype=mask.dtype)
    for row, count in zip(range(batch), (0, min(3, length - 2), min(1, length - 2)), strict=False):
        cut = slice(0, count) if side == "left" else slice(length - count, length)
        new[row, cut], new_mask[row, cut] = pad, 0
    if holes:
        new_mask[0, length // 2] = 0
        new_mask[min(2, batch - 1), 1 if side == "right" else length - 2] = 0
    args = tuple(new_mask if a is case.mask else a for a in case.additional_forward_args)
    return _replace(case, (new, *case.inputs[1:]), args, new_mask,
                    f"padded on the {side}" + (" with holes" if holes else ""))


def _replace(case: Case, inputs: tuple, args: tuple, mask: Tensor | None, note: str,
             forward: Callable[..., Tensor] | None = None) -> Case:
    return Case(case.model_type, case.head, case.class_name, case.model,
                forward or case.forward_func, inputs, args, case.target, mask,
                [*case.notes, note], case.types)


def _embeds(case: Case) -> Case:
    ids, mask = _ids_case(case)
    import inspect

    if len(case.inputs) != 1 or len(case.additional_forward_args) != 1:
        raise NotApplicable("inputs beside the ids")
    if "inputs_embeds" not in inspect.signature(case.model.forward).parameters:
        raise NotApplicable("the model takes no inputs_embeds")
    try:
        with torch.no_grad():
            embeds = case.model.get_input_embeddings()(ids).detach()
    except (NotImplementedError, TypeError, AttributeError) as error:
        raise NotApplicable(f"no input embeddings: {str(error)[:200]}") from error
    if embeds.shape[:2] != ids.shape or embeds.dim() != 3:
        raise NotApplicable(f"embeddings of shape {tuple(embeds.shape)}")
    extra = B.OVERRIDES.get(case.model_type, {}).get("kwargs", {})
    forward = B._forward_for(case.model, case.head, ("inputs_embeds",), True, extra)
    return _replace(case, (embeds,), (mask,), mask, "inputs_embeds", forward)


def _third(tensor: Any, first: bool, seed: int) -> Any:
    r"""``tensor`` with a third example: new ordinary ids for the first (ids) input, example 0
    moved by noise for floats, example 0 again for other integer tensors (masks, boxes)."""
    if not isinstance(tensor, Tensor) or tensor.dim() == 0 or tensor.shape[0] != 2:
        return tensor
    generator = torch.Generator().manual_seed(seed)
    extra = tensor[:1].clone()
    if tensor.is_floating_point():
        spread = float(tensor.std()) or 1.0
        extra = extra + 0.5 * spread * torch.randn(extra.shape, generator=generator).to(
            tensor.dtype)
    elif first and tensor.dtype != torch.bool:
        ordinary = (extra >= ORDINARY[0]) & (extra < ORDINARY[1])
        fresh = torch.randint(*ORDINARY, extra.shape, generator=generator).to(tensor.dtype)
        extra = torch.where(ordinary, fresh, extra)
    return torch.cat([tensor, extra])


def _batch3(case: Case, seed: int) -> Case:
    if any("packed" in note for note in case.notes) or case.inputs[0].shape[0] != 2:
        raise NotApplicable("packed examples or not a batch of 2")
    inputs = tuple(_third(t, i == 0, seed) for i, t in enumerate(case.inputs))
    args = tuple(_third(t, False, seed) for t in case.additional_forward_args)
    mask = None
    if case.mask is not None:
        mask = next((new for old, new in zip((*case.inputs, *case.additional_forward_args),
                                             (*inputs, *args), strict=True) if old is case.mask),
                    _third(case.mask, False, seed))
    return _replace(case, inputs, args, mask, "a third example")


def _target(case: Case, variant: str) -> Case:
    batch, classes = _scores(case).shape  # packed inputs: the scores' rows are the examples
    if variant == "target-tuple":
        target: Any = (case.target,)
    else:
        target = [(case.target + index) % classes for index in range(batch)]
    return Case(case.model_type, case.head, case.class_name, case.model, case.forward_func,
                case.inputs, case.additional_forward_args, target, case.mask,
                [*case.notes, f"target {target!r}"], case.types)


def _has_window(model_type: str) -> bool:
    r"""Whether the type's own tiny config (or a sub-config) has a sliding window."""
    def find(data: Any) -> bool:
        return isinstance(data, dict) and ("sliding_window" in data or any(
            find(value) for value in data.values()))

    return find(B.tiny_config(model_type).to_dict())


def _mask_dtype(case: Case, dtype: torch.dtype) -> Case:
    _, mask = _ids_case(case)
    new = mask.to(dtype)
    args = tuple(new if a is case.mask else a for a in case.additional_forward_args)
    return _replace(case, case.inputs, args, new, f"the mask as {dtype}")


def _configs(model: torch.nn.Module) -> list[Any]:
    found: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            found[id(config)] = config
            for name in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, name, None)
                if hasattr(sub, "_attn_implementation_internal"):
                    found[id(sub)] = sub
    return list(found.values())


def _model_setting(case: Case, variant: str) -> Case:
    r"""The model as a user may have set it: eager attention, maps returned, float64."""
    if variant == "eager":
        for config in _configs(case.model):
            config._attn_implementation_internal = "eager"
    elif variant == "output-attentions":  # transformers returns maps under eager only
        for config in _configs(case.model):
            config._attn_implementation_internal = "eager"
            config.output_attentions = True
    else:
        case.model.double()
        cast = lambda t: t.double() if isinstance(t, Tensor) and t.is_floating_point() else t  # noqa: E731
        mask = case.mask
        inputs = tuple(cast(t) for t in case.inputs)
        args = tuple(cast(t) for t in case.additional_forward_args)
        case = _replace(case, inputs, args, mask, "float64")
    case.notes.append(variant)
    return case


def _build(model_type: str, parts: list[str], seed: int) -> Case:
    r"""The sweep's build under the config parts of a variant (constants, head, window)."""
    head, constants, window = None, {}, None
    for part in parts:
        constants.update(CONFIG.get(part, {}))
        if part in HEADS:
            head = _other_class(model_type, HEADS[part], B.build(model_type).class_name)
        if part == "window":
            constants, window = {**constants, "LENGTH": 16, "PAD_EXTRA": 3}, WINDOW
    with _constants(constants, model_type, head, seed, window):
        try:
            case = B.build(model_type)
        except BuildError:
            raise
        except Exception as error:  # noqa: BLE001 - a builder's config the variant made invalid
            raise NotApplicable(f"the variant's config is invalid here: {type(error).__name__}: "
                                f"{str(error)[:200]}") from error
    if window and not _has_window(model_type):
        raise NotApplicable("no sliding window in the config")
    return case


def _transform(case: Case, part: str, seed: int) -> Case:
    r"""One case-level part of a variant."""
    if part in ("pad-left", "pad-right", "holes"):
        return _padded(case, "left" if part == "pad-left" else "right", seed, part == "holes")
    if part == "embeds":
        return _embeds(case)
    if part == "batch3":
        return _batch3(case, seed)
    if part.startswith("target-"):
        return _target(case, part)
    if part in ("bool-mask", "float-mask"):
        return _mask_dtype(case, torch.bool if part == "bool-mask" else torch.float32)
    if part in ("eager", "output-attentions", "double"):
        return _model_setting(case, part)
    return case


def make(name: str, seed: int = 0, size: float = 1.0) -> Case:
    r"""The case ``TYPE@VARIANT`` (:data:`VARIANTS`, or several joined by ``+``: ``gpt2@pad-left
    +heads4``), weights perturbed with ``seed``."""
    model_type, _, variant = name.partition("@")
    parts = variant.split("+")
    unknown = [part for part in parts if part not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}: each one of {', '.join(VARIANTS)}")
    run_seed = _seed(seed, model_type, variant)
    case = _build(model_type, parts, seed)
    order = ("pad-left", "pad-right", "holes", "batch3", "embeds", "bool-mask", "float-mask")
    # padding before the mask's dtype and the model's settings, the target after the batch
    for part in sorted(parts, key=lambda p: (order.index(p) if p in order else len(order),
                                             p.startswith("target-"))):
        try:
            case = _transform(case, part, run_seed)
        except NotApplicable:
            raise
        except Exception as error:  # noqa: BLE001 - the model does not run the variant
            raise NotApplicable(f"{part}: {type(error).__name__}: {str(error)[:200]}") from error
    if size:
        perturb(case.model, run_seed, 4 * size if "sharp" in parts else size)
    if isinstance(case.target, int) and "labels1" in parts:  # builders pick class 1
        case.target = 0
    try:
        scores = _scores(case)
    except Exception as error:  # noqa: BLE001 - a variant the model does not run is not built
        raise NotApplicable(f"the model does not run it: {type(error).__name__}: "
                            f"{str(error)[:200]}") from error
    if scores.dim() != 2 or not bool(torch.isfinite(scores).all()):
        raise NotApplicable(f"scores of shape {tuple(scores.shape)} or not finite")
    case.notes.append(f"variant {variant}, seed {seed}")
    return case


def explained_types() -> list[str]:
    r"""The types the last sweep explained (``results.json``)."""
    results = json.loads((HERE / "results.json").read_text())
    return sorted(r["type"] for r in results if r["outcome"] == "explained")


#: the groups a composed variant draws one part from (at most one part per group)
GROUPS = (tuple(CONFIG) + ("window",), ("pad-left", "pad-right", "holes", "embeds", "batch3"),
          ("target-tuple", "target-list"), ("bool-mask", "float-mask"),
          ("eager", "output-attentions", "double"), ("sharp",))


def combo(draw: random.Random) -> str:
    r"""A composed variant: three of :data:`GROUPS`, one part of each."""
    groups = draw.sample(GROUPS, 3)
    return "+".join(draw.choice(group) for group in groups)


def plan(types: list[str], variants: list[str], per_type: int, seed: int,
         combos: int = 0) -> list[str]:
    r"""``TYPE@VARIANT`` runs: ``per_type`` variants per type drawn with ``seed`` (all of
    ``variants`` when ``per_type`` is 0), then ``combos`` composed ones (:func:`combo`)."""
    draw = random.Random(seed)
    runs = []
    for model_type in types:
        chosen = variants if not per_type else draw.sample(variants, min(per_type,
                                                                          len(variants)))
        chosen = [*chosen, *(combo(draw) for _ in range(combos))]
        runs += [f"{model_type}@{variant}" for variant in chosen]
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", default="", help="comma-separated types")
    parser.add_argument("--sample", type=int, default=0,
                        help="this many of the sweep's explained types, drawn with --seed")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--per-type", type=int, default=0, help="variants drawn per type")
    parser.add_argument("--combos", type=int, default=0, help="composed variants per type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=float, default=1.0, help="weight perturbation (0: none)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", default="", help="append each result to this JSONL file")
    parser.add_argument("--runs", default="", help="a file of TYPE@VARIANT lines to run")
    parser.add_argument("--one", default="", help="TYPE@VARIANT here, traceback shown")
    args = parser.parse_args(argv)
    from .sweep import _preload, _short, counts

    _preload()
    from functools import partial

    from .run import run_many, run_type

    build = partial(make, seed=args.seed, size=args.size)
    if args.one:
        print(json.dumps(run_type(args.one, lambda s: print("stage:", s if isinstance(
            s, str) else "explained", flush=True), build), indent=1, default=str))
        return 0
    types = [t for t in args.types.split(",") if t]
    if args.sample:
        types = sorted(random.Random(args.seed).sample(explained_types(), args.sample))
    runs = plan(types, [v for v in args.variants.split(",") if v], args.per_type, args.seed,
                args.combos)
    if args.runs:
        runs = [line.strip() for line in Path(args.runs).read_text().splitlines() if line.strip()]
    print(f"{len(runs)} runs over {len(types)} types, seed {args.seed}", flush=True)
    done: list[dict[str, Any]] = []

    def finished(result: dict[str, Any]) -> None:
        done.append(result)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(result, default=str) + "\n")
        print(f"[{len(done)}/{len(runs)}] {result['type']}: {result['outcome']} "
              f"({result.get('seconds')} s) {_short(result.get('reason', ''), 240)}", flush=True)

    run_many(runs, args.workers, args.timeout, finished, 60.0, build)
    print(json.dumps(counts(done)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
