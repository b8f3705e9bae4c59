r"""Tiny trained models on synthetic tasks whose evidence is known.

No model hub is reachable here, so the zoo trains its own small models (minutes on 2 CPU cores)
and ships their weights as safetensors beside this file, together with the code that retrains
them: ``python -m captum_hetattn.zoo.train NAME``.

``load(name)`` returns a :class:`ZooModel`:

- ``model`` (the ``nn.Module``), ``forward_func`` (inputs → logits ``(B, C)`` or per-token logits),
  ``graph`` (:class:`~captum_hetattn.graph.LayerGraph`), ``input_mappings``;
- ``make_examples(n, seed)`` → a list of :class:`Example` (batch of one each);
- ``collate(examples)`` → one :class:`Batch`;
- ``remove(batch, stream, keep)`` → the batch with the tokens of ``stream`` where ``keep`` is
  False removed (masked out), for perturbation tests;
- ``accuracy(n, seed)`` → held-out accuracy.
"""

from __future__ import annotations

import importlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captum_hetattn.graph import LayerGraph
from captum_hetattn.mapping import InputMapping

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# name -> module (in this package) that defines `build()` returning the ZooModel
REGISTRY: dict[str, str] = {
    "shapes_vqa": "captum_hetattn.zoo.shapes_vqa",
    "shapes_vit": "captum_hetattn.zoo.shapes_vit",
    "reverse_seq2seq": "captum_hetattn.zoo.reverse_seq2seq",
    "minilm": "captum_hetattn.zoo.minilm",
    "shapes_detr": "captum_hetattn.zoo.shapes_detr",
}


@dataclass
class Example:
    r"""One example (batch of one).

    Attributes:
        inputs: the first arguments of ``forward_func`` (a tensor or a tuple of tensors).
        additional_forward_args: further arguments (tuple) or ``None``.
        label: the correct class.
        target: the Captum target to explain (defaults to ``label``); per-token models use a
            tuple such as ``(position, token_id)``.
        evidence: per stream, a ``(n_tokens,)`` boolean tensor marking the tokens that carry
            the answer (the ground truth for localisation).
        image: the rendered input picture ``(H, W, 3)`` uint8, for reports (or ``None``).
        tokens: display strings per stream (or empty).
        description: a line for humans ("is there a red circle? → yes").
    """

    inputs: Tensor | tuple[Tensor, ...]
    additional_forward_args: tuple[Any, ...] | None
    label: int
    evidence: dict[str, Tensor]
    target: Any = None
    image: np.ndarray | None = None
    tokens: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if self.target is None:
            self.target = self.label


@dataclass
class Batch:
    """Several examples stacked along the batch dimension."""

    inputs: Tensor | tuple[Tensor, ...]
    additional_forward_args: tuple[Any, ...] | None
    labels: Tensor
    targets: list[Any]
    evidence: dict[str, Tensor]  # stream -> (B, n_tokens) bool

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _stack(items: Sequence[Any]) -> Any:
    first = items[0]
    if isinstance(first, Tensor):
        return torch.cat(list(items), dim=0)
    if isinstance(first, tuple):
        return tuple(_stack([item[i] for item in items]) for i in range(len(first)))
    if first is None:
        return None
    raise TypeError(f"cannot stack {type(first).__name__}")


class ZooModel(ABC):
    """A trained zoo model and its synthetic task."""

    name: str
    model: nn.Module
    graph: LayerGraph
    input_mappings: tuple[InputMapping, ...] | None = None
    #: streams whose tokens `remove` can take out, for perturbation tests
    removable_streams: tuple[str, ...] = ()
    #: tokens of each stream that a perturbation test always keeps ([CLS], [SEP], ...)
    protected_tokens: dict[str, tuple[int, ...]] = {}

    @abstractmethod
    def forward_func(self, *inputs: Any) -> Tensor:
        """Inputs (and additional args) → logits."""

    @abstractmethod
    def make_examples(self, n: int, seed: int) -> list[Example]:
        """``n`` held-out examples drawn with ``seed``."""

    def collate(self, examples: Sequence[Example]) -> Batch:
        """Stack examples (all zoo tasks have fixed lengths)."""
        if not examples:
            raise ValueError("collate needs at least one example")
        streams = examples[0].evidence.keys()
        return Batch(
            inputs=_stack([e.inputs for e in examples]),
            additional_forward_args=_stack([e.additional_forward_args for e in examples]),
            labels=torch.tensor([e.label for e in examples]),
            targets=[e.target for e in examples],
            evidence={s: torch.stack([e.evidence[s] for e in examples]) for s in streams},
        )

    def stream_sizes(self, batch: Batch) -> dict[str, int]:
        """Tokens per stream (every zoo task gives evidence for each of its streams)."""
        return {stream: int(mask.shape[1]) for stream, mask in batch.evidence.items()}

    def token_mask(self, batch: Batch, stream: str) -> Tensor:
        """``(B, n)`` True for real tokens that a test may rank or remove (not padding or
        protected tokens)."""
        mask = torch.ones_like(batch.evidence[stream], dtype=torch.bool)
        for index in self.protected_tokens.get(stream, ()):
            mask[:, index] = False
        return mask

    def remove(self, batch: Batch, stream: str, keep: Tensor) -> Batch:
        """The batch with the tokens of ``stream`` where ``keep`` is False taken out."""
        raise ValueError(f"{self.name}: tokens of stream '{stream}' cannot be removed")

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        """Predicted class per example."""
        logits = self.forward_func(*_as_tuple(batch.inputs), *(batch.additional_forward_args or ()))
        return logits.argmax(dim=-1)

    def score(self, batch: Batch) -> Tensor:
        """Per-example score a perturbation test tracks: 1.0 where the prediction is right."""
        return (self.predict(batch) == batch.labels).float()

    def accuracy(self, n: int = 500, seed: int = 12345) -> float:
        """Held-out accuracy on ``n`` examples drawn with ``seed``."""
        batch = self.collate(self.make_examples(n, seed))
        return float((self.predict(batch) == batch.labels).float().mean())

    def with_targets(self, batch: Batch, targets: list[Any]) -> Batch:
        return replace(batch, targets=targets)


def _as_tuple(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


@contextmanager
def single_thread() -> Iterator[None]:
    r"""Train on one thread: on a busy shared 2-core machine two OpenMP threads per process spin
    against other jobs and make a step several times slower; one thread also makes the float
    reductions, hence the trained weights, independent of the core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[], Tensor],
    check: Callable[[], float],
    *,
    steps: int,
    warmup: int,
    check_every: int,
    clip: float | None = None,
    stop_at: float | None = None,
    log: Callable[[str], None] = print,
) -> None:
    r"""The zoo's training loop: warm-up + cosine schedule, optional gradient clipping, a
    held-apart check every ``check_every`` steps (and at the end), early stop at ``stop_at``.

    Args:
        model: trained in place.
        optimizer: over ``model``'s parameters.
        batch_loss: draws a fresh batch and returns its loss (model in train mode).
        check: a score on the model's own check data (model in eval mode, no grad).
    """
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, steps)
    )
    start = time.perf_counter()
    for step in range(1, steps + 1):
        model.train()
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
        if step % check_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                score = check()
            log(f"step {step}/{steps}  loss {loss.item():.3f}  check {score:.3f}  "
                f"{time.perf_counter() - start:.0f} s")
            if stop_at is not None and score >= stop_at:
                break
    model.eval()


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


CHECKSUMS = "SHA256SUMS"  # `sha256sum`'s format, beside the weight files


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(directory: Path) -> dict[str, str]:
    manifest = directory / CHECKSUMS
    if not manifest.exists():
        return {}
    pairs = (line.split() for line in manifest.read_text().splitlines() if line.strip())
    return {name.lstrip("*"): digest for digest, name in pairs}


def _record_checksum(path: Path) -> None:
    sums = _checksums(path.parent)
    sums[path.name] = _sha256(path)
    lines = [f"{digest}  {name}\n" for name, digest in sorted(sums.items())]
    (path.parent / CHECKSUMS).write_text("".join(lines))


def load_weights(model: nn.Module, name: str) -> nn.Module:
    r"""Load ``weights/<name>.safetensors`` into ``model`` (safetensors only, strict).

    Raises:
        FileNotFoundError / ValueError: missing or unreadable file, or one whose sha256 is
            not the one ``weights/SHA256SUMS`` lists (written by :func:`save_weights`), with
            the command that retrains it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = weights_path(name)
    retrain = f"retrain it with: python -m captum_hetattn.zoo.train {name}"
    if not path.exists():
        raise FileNotFoundError(f"zoo weights {path} are missing; {retrain}")
    expected = _checksums(path.parent).get(path.name)
    if expected is None:
        raise ValueError(f"zoo weights {path} have no checksum in {CHECKSUMS}; {retrain}")
    actual = _sha256(path)
    if actual != expected:  # flipped bytes load fine and silently cost accuracy
        raise ValueError(
            f"zoo weights {path} are corrupted: sha256 {actual[:12]}… does not match "
            f"{expected[:12]}… in {CHECKSUMS}; {retrain}"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"zoo weights {path} are corrupted ({err}); {retrain}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"zoo weights {path} do not fit the {name} model ({str(err)[:200]}); {retrain}"
        ) from None
    return model.eval()


def save_weights(model: nn.Module, name: str) -> Path:
    """Write the model's state dict to ``weights/<name>.safetensors`` (contiguous tensors)."""
    from safetensors.torch import save_file

    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = weights_path(name)
    save_file(state, str(path))
    path.chmod(0o644)  # safetensors writes 0600; the file ships with the package
    _record_checksum(path)
    return path


def load(name: str) -> ZooModel:
    r"""The trained zoo model ``name`` (one of :data:`REGISTRY`).

    Examples::

        >>> vqa = load("shapes_vqa")
        >>> batch = vqa.collate(vqa.make_examples(8, seed=0))
    """
    if name not in REGISTRY:
        raise ValueError(f"Unknown zoo model '{name}'; known: {sorted(REGISTRY)}")
    module = importlib.import_module(REGISTRY[name])
    build: Callable[..., ZooModel] = module.build
    return build(trained=True)


__all__ = [
    "REGISTRY",
    "Batch",
    "Example",
    "ZooModel",
    "load",
    "fit",
    "load_weights",
    "save_weights",
    "single_thread",
    "warmup_cosine",
    "weights_path",
]
