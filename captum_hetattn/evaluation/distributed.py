r"""The evaluation runner over several processes (``torch.distributed``), resumable.

The ``n`` held-out examples (drawn once, with ``seed``, exactly as :func:`evaluate` draws them)
are cut into shards of ``shard_size`` consecutive examples. Rank 0 reads the output directory and
tells every rank which shards are still missing; they share those shards round-robin, score each
one (:func:`~captum_hetattn.evaluation.runner.score_examples`: per-example scores, not means)
and write it to ``out_dir/shard-00003.json`` as soon as it is done. Rank 0 gathers the new shards
(``gather_object``), reads the finished ones and computes the table once over all examples
(:func:`~captum_hetattn.evaluation.runner.aggregate`), so the table is the one a single process
gives for the same seed — up to the float summation order of attribution batches of another size.
Seconds per example are attribution process-seconds summed over shards, divided by ``n``.

``out_dir`` holds:

- ``manifest.json``: model, methods, ``n``, ``seed``, shard size, batch size, perturbation — a
  rerun with other settings is refused (``ValueError``) rather than mixing results;
- ``shard-NNNNN.json``: the per-example arrays of one shard (JSON numbers, exact), with the
  settings, the rank that computed it, when and in how many seconds;
- ``runs.jsonl``: one line per run: world size, shards computed and shards reused, wall seconds;
- ``result.json``: the last run's :class:`~captum_hetattn.evaluation.runner.EvaluationResult`.

A rerun (with any number of processes) computes only the shards that are missing.

Launch::

    # N worker processes started for you (torch.multiprocessing, gloo on CPU)
    python -m captum_hetattn.evaluation.distributed --model shapes_vqa --n 2000 --nproc 2 \
        --out eval-shapes
    # or under torchrun (one node or several; nccl when every rank has its own GPU)
    torchrun --nproc-per-node 2 -m captum_hetattn.evaluation.distributed --model shapes_vqa \
        --num-examples 2000 --out eval-shapes

From Python: :func:`evaluate_distributed`. Each rank uses ``max(1, cores // local ranks)``
threads. The zoo models run on the CPU; the process group only carries the gathered results.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from captum_hetattn.evaluation.runner import (
    EvaluationResult,
    ExampleScores,
    aggregate,
    score_examples,
)

FORMAT = 1
MANIFEST = "manifest.json"
LOG = "runs.jsonl"
RESULT = "result.json"
DEFAULT_SHARD_SIZE = 50


@dataclass(frozen=True)
class Settings:
    """What makes the shards of one evaluation interchangeable (stored in the manifest)."""

    model: str
    methods: tuple[str, ...]
    n: int
    seed: int
    shard_size: int
    batch_size: int
    perturbation: bool

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n / self.shard_size)

    def shard_range(self, index: int) -> tuple[int, int]:
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.n)

    def manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data["methods"] = list(self.methods)
        return {"format": FORMAT, **data, "n_shards": self.n_shards}

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> Settings:
        return cls(data["model"], tuple(data["methods"]), data["n"], data["seed"],
                   data["shard_size"], data["batch_size"], data["perturbation"])


def make_settings(
    zoo_name: str,
    method_names: Sequence[str],
    *,
    n: int,
    seed: int,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 100,
    perturbation: bool = True,
) -> Settings:
    """Checked settings: a known zoo model and known method names, positive counts."""
    from captum_hetattn.evaluation.methods import check_method_names
    from captum_hetattn.zoo import REGISTRY

    for key, value, low in (("n", n, 1), ("seed", seed, 0), ("shard_size", shard_size, 1),
                            ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{key} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{key} must be ≥ {low}, got {value}")
    if zoo_name not in REGISTRY:
        raise ValueError(f"unknown zoo model '{zoo_name}'; known: {sorted(REGISTRY)}")
    if isinstance(method_names, str):
        method_names = [method_names]
    if not method_names:
        raise ValueError("no method to evaluate")
    problem = check_method_names(method_names)
    if problem:
        raise ValueError(problem)
    if len(set(method_names)) != len(method_names):
        raise ValueError(f"a method is named twice in {list(method_names)}")
    return Settings(zoo_name, tuple(method_names), n, seed, shard_size, batch_size,
                    bool(perturbation))


# ---------------------------------------------------------------------------------------------
# the output directory


def shard_path(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / f"shard-{index:05d}.json"


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader (or a rerun after a crash) never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def prepare_out_dir(out_dir: str | Path, settings: Settings) -> None:
    r"""Create ``out_dir`` with the manifest of ``settings``, or check the one it holds.

    Raises:
        ValueError: ``out_dir`` is a file, or holds an evaluation with other settings (each
            difference named), or an unreadable manifest.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MANIFEST
    wanted = settings.manifest()
    if not path.exists():
        stray = sorted(p.name for p in out_dir.glob("shard-*.json"))
        if stray:
            raise ValueError(
                f"out_dir {out_dir} holds shard files ({stray[0]}, ...) but no {MANIFEST}: "
                "their settings are unknown; use another out_dir or delete them"
            )
        _write_json(path, wanted)
        return
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read ({err}); use another out_dir") from None
    if not isinstance(found, dict):
        raise ValueError(f"{path} is not a manifest; use another out_dir")
    differences = [
        f"{key}={found.get(key)!r} there, {value!r} here"
        for key, value in wanted.items()
        if found.get(key) != value
    ]
    if differences:
        raise ValueError(
            f"out_dir {out_dir} holds results of another evaluation ({'; '.join(differences)}); "
            "refusing to mix them: use another out_dir, or delete it to start over"
        )


def _read_shard(out_dir: Path, settings: Settings, index: int) -> ExampleScores | None:
    """A finished shard, or ``None`` when missing; a damaged one is reported and recomputed."""
    path = shard_path(out_dir, index)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("settings") != settings.manifest() or data.get("shard") != index:
            raise ValueError("it was written for other settings or another shard")
        part = ExampleScores.from_dict(data["scores"])
        if (part.start, part.start + len(part)) != settings.shard_range(index):
            raise ValueError(f"it covers examples from {part.start}, {len(part)} of them")
        if list(part.methods) != list(settings.methods):
            raise ValueError(f"it holds the methods {list(part.methods)}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as err:
        warnings.warn(f"{path} is not a usable shard ({err}); computing it again", stacklevel=2)
        return None
    return part


def _write_shard(
    out_dir: Path, settings: Settings, index: int, part: ExampleScores, rank: int, seconds: float
) -> None:
    _write_json(shard_path(out_dir, index), {
        "shard": index,
        "settings": settings.manifest(),
        "rank": rank,
        "computed_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "seconds": seconds,
        "scores": part.to_dict(),
    })


def read_log(out_dir: str | Path) -> list[dict[str, Any]]:
    """The runs recorded in ``out_dir/runs.jsonl`` (oldest first)."""
    path = Path(out_dir) / LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# one rank's work


def threads_per_rank(local_world: int) -> int:
    """``max(1, cores // local_world)``: the cores this process may use, shared out."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_world))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``count`` inside the block (restored after it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_rank(
    settings: Settings,
    out_dir: str | Path,
    rank: int,
    world: int,
    *,
    progress: bool = False,
) -> EvaluationResult | None:
    r"""One rank's part of the evaluation; the process group (if ``world > 1``) is initialised.

    Returns the table on rank 0 and ``None`` on the others.

    Raises:
        ValueError: on every rank, when rank 0 refuses ``out_dir`` (see :func:`prepare_out_dir`).
    """
    out_dir = Path(out_dir)
    began = time.perf_counter()
    done: dict[int, ExampleScores] = {}
    todo = _shards_to_do(settings, out_dir, rank, world, done)
    computed = _compute_shards(settings, out_dir, todo[rank::world], rank, progress)
    if world > 1:
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(computed, gathered, dst=0)
    else:
        gathered = [computed]
    if rank != 0:
        return None
    assert gathered is not None
    return _collect(settings, out_dir, gathered, done, world, began)


def _shards_to_do(settings: Settings, out_dir: Path, rank: int, world: int,
                  done: dict[int, ExampleScores]) -> list[int]:
    """Rank 0 checks ``out_dir`` and reads the shards already there into ``done``; every rank
    gets the shards still to compute (or rank 0's error, raised on every rank)."""
    message: dict[str, Any]
    if rank == 0:
        try:
            prepare_out_dir(out_dir, settings)
            for index in range(settings.n_shards):
                part = _read_shard(out_dir, settings, index)
                if part is not None:
                    done[index] = part
            message = {"todo": [i for i in range(settings.n_shards) if i not in done]}
        except ValueError as err:
            message = {"error": str(err)}
    else:
        message = {}
    if world > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if "error" in message:
        raise ValueError(message["error"])
    return message["todo"]


def _compute_shards(settings: Settings, out_dir: Path, mine: list[int], rank: int,
                    progress: bool) -> dict[int, dict]:
    """Score and write this rank's shards; their scores as dicts, by shard index."""
    computed: dict[int, dict] = {}
    if not mine:
        return computed
    from tqdm.auto import tqdm

    from captum_hetattn.evaluation.methods import select_methods

    zoo = _load_zoo(settings.model)
    methods = select_methods(settings.methods)
    examples = zoo.make_examples(settings.n, settings.seed)  # the examples evaluate() draws
    for index in tqdm(mine, desc=f"shards (rank {rank})", disable=not progress):
        start, stop = settings.shard_range(index)
        tic = time.perf_counter()
        part = score_examples(
            zoo, methods, zoo.collate(examples[start:stop]), start=start,
            batch_size=settings.batch_size, perturbation=settings.perturbation,
        )
        _write_shard(out_dir, settings, index, part, rank, time.perf_counter() - tic)
        computed[index] = part.to_dict()
    return computed


def _collect(settings: Settings, out_dir: Path, gathered: list[Any],
             done: dict[int, ExampleScores], world: int, began: float) -> EvaluationResult:
    """Rank 0: every shard (found or gathered) aggregated into the table, written with a line
    of the run log."""
    new: list[int] = []
    for payload in gathered:
        for index, data in payload.items():
            part = ExampleScores.from_dict(data)
            done[index] = part
            new.append(index)
            if not shard_path(out_dir, index).exists():  # computed on another node's disk
                _write_shard(out_dir, settings, index, part, -1, math.nan)
    missing = [i for i in range(settings.n_shards) if i not in done]
    if missing:
        raise RuntimeError(f"shards {missing} were neither found nor computed")
    result = aggregate(settings.model, settings.seed, [done[i] for i in sorted(done)])
    _write_json(out_dir / RESULT, result.to_dict())
    entry = {
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "world": world,
        "computed": sorted(new),
        "reused": sorted(set(done) - set(new)),
        "wall_seconds": time.perf_counter() - began,
    }
    with (out_dir / LOG).open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return result


@functools.lru_cache(maxsize=2)
def _load_zoo(name: str) -> Any:
    """The zoo model, loaded once per process (in-process reruns and ``nproc=1`` reuse it)."""
    from captum_hetattn.zoo import load

    return load(name)


def _backend(requested: str | None, local_world: int) -> str:
    """``nccl`` when every local rank can have a GPU of its own, else ``gloo``."""
    if requested:
        return requested
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        return "nccl"
    return "gloo"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def evaluate_distributed(
    zoo_name: str,
    method_names: Sequence[str],
    *,
    n: int = 200,
    seed: int = 12345,
    out_dir: str | Path,
    nproc: int = 2,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 100,
    perturbation: bool = True,
    backend: str | None = None,
    progress: bool = False,
) -> EvaluationResult:
    r"""The table of :func:`~captum_hetattn.evaluation.evaluate` over ``nproc`` processes,
    resumable from ``out_dir``.

    Args:
        zoo_name: a zoo model (:data:`captum_hetattn.zoo.REGISTRY`).
        method_names: names from :func:`~captum_hetattn.evaluation.standard_methods`.
        n, seed: the held-out examples (the same as ``evaluate(zoo, methods, n=n, seed=seed)``).
        out_dir: where shards, manifest, log and result are written; finished shards are reused.
        nproc: processes to start (``1``: run here, no process group).
        shard_size: consecutive examples per shard (the unit of work and of resuming).
        batch_size: examples per attribution call within a shard.
        perturbation: also run the perturbation tests.
        backend: ``"gloo"`` / ``"nccl"``; default: nccl when there is a GPU per process.
        progress: a progress bar over the shards (counted as their files appear).

    Returns:
        The :class:`~captum_hetattn.evaluation.runner.EvaluationResult` (also in
        ``out_dir/result.json``).

    Raises:
        ValueError: unknown model or method, bad counts, or an ``out_dir`` that holds another
            evaluation (refused before any process starts).
        RuntimeError: a worker process failed (the end of its error output is in the message;
            all of it in ``out_dir/logs/rank-N.log``); the others are stopped.

    The workers are fresh Python processes (``python -m captum_hetattn.evaluation.distributed``
    with torchrun's environment variables), so this works from scripts without a
    ``__main__`` guard, from notebooks and from tests; each pays the import of torch and
    transformers (a few seconds) once.

    Examples::

        >>> result = evaluate_distributed("shapes_vqa", ["ours (pos)", "rollout"], n=400,
        ...                               seed=12345, out_dir="eval-vqa", nproc=2)
        >>> print(result.table())
    """
    settings = make_settings(zoo_name, method_names, n=n, seed=seed, shard_size=shard_size,
                             batch_size=batch_size, perturbation=perturbation)
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValueError(f"nproc must be an int ≥ 1, got {nproc!r}")
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, settings)
    if nproc == 1:
        with torch_threads(threads_per_rank(1)):
            result = run_rank(settings, out_dir, 0, 1, progress=progress)
        assert result is not None
        return result
    (out_dir / RESULT).unlink(missing_ok=True)
    _launch(settings, out_dir, nproc, backend, progress)
    return EvaluationResult.from_dict(json.loads((out_dir / RESULT).read_text()))


def _worker_command(settings: Settings, out_dir: Path, backend: str | None) -> list[str]:
    command = [
        sys.executable, "-m", "captum_hetattn.evaluation.distributed", "--quiet",
        "--model", settings.model, "--methods", *settings.methods,
        "--num-examples", str(settings.n), "--seed", str(settings.seed),
        "--shard-size", str(settings.shard_size), "--batch-size", str(settings.batch_size),
        "--out", str(out_dir),
    ]
    if not settings.perturbation:
        command.append("--no-perturbation")
    if backend:
        command += ["--backend", backend]
    return command


def _launch(
    settings: Settings, out_dir: Path, nproc: int, backend: str | None, progress: bool
) -> None:
    """Start ``nproc`` workers with torchrun's environment, wait for all, stop all on a failure."""
    import subprocess

    from tqdm.auto import tqdm

    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    port = _free_port()
    command = _worker_command(settings, out_dir, backend)
    workers: list[tuple[subprocess.Popen, Path]] = []
    try:
        for rank in range(nproc):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                       LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads_per_rank(nproc)))
            log = logs / f"rank-{rank}.log"
            with log.open("w") as handle:
                workers.append((subprocess.Popen(
                    command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                ), log))
        bar = tqdm(total=settings.n_shards, desc=f"shards of {settings.model}",
                   disable=not progress)
        while True:
            codes = [process.poll() for process, _ in workers]
            bar.n = sum(shard_path(out_dir, i).exists() for i in range(settings.n_shards))
            bar.refresh()
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                tail = "".join(workers[rank][1].read_text().splitlines(True)[-15:])
                raise RuntimeError(
                    f"evaluation worker rank {rank} exited with status {code}; the end of "
                    f"{workers[rank][1]}:\n{tail}"
                )
            if all(code == 0 for code in codes):
                break
            time.sleep(0.2)
        bar.close()
    finally:
        for process, _ in workers:  # only after a failure (or an interrupt) are any alive
            if process.poll() is None:
                process.terminate()
        for process, _ in workers:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m captum_hetattn.evaluation.distributed",
        description="Evaluate attribution methods on a zoo model over several processes "
        "(resumable). Under torchrun, every rank runs this; otherwise --nproc processes start.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser, *, with_common: bool = True) -> None:
    """The options of a distributed evaluation (``with_common=False``: only those a plain
    ``evaluate`` command lacks: ``--nproc``, ``--out-dir``, ``--shard-size``, ``--backend``)."""
    from captum_hetattn.zoo import REGISTRY

    if with_common:
        parser.add_argument("--model", choices=sorted(REGISTRY), default="shapes_vqa")
        parser.add_argument("--methods", nargs="*", default=None,
                            help="method names (default: all but IntegratedGradients)")
        parser.add_argument("--n", "--num-examples", dest="n", type=int, default=200,
                            help="examples (under torchrun write --num-examples: torchrun takes "
                            "--n for an abbreviation of its own options)")
        parser.add_argument("--seed", type=int, default=12345)
        parser.add_argument("--batch-size", type=int, default=100)
        parser.add_argument("--no-perturbation", action="store_true")
        parser.add_argument("--json", type=Path, default=None, help="also write the table here")
        parser.add_argument("--out", "--out-dir", dest="out_dir", type=Path, required=True,
                            help="shards, manifest and log (a rerun resumes from here)")
        parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    else:
        parser.add_argument("--out-dir", type=Path, default=None,
                            help="with --nproc: shards, manifest and log (a rerun resumes)")
    parser.add_argument("--nproc", type=int, default=1 if not with_common else 2,
                        help="worker processes to start (ignored under torchrun)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help="examples per shard (the unit of work and of resuming)")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                        help="torch.distributed backend (default: nccl where every rank has a "
                             "GPU, else gloo)")


def wants_distributed(args: argparse.Namespace) -> bool:
    """Whether a parsed ``evaluate`` command line asks for :func:`evaluate_cli`."""
    return getattr(args, "nproc", 1) > 1 or getattr(args, "out_dir", None) is not None


def evaluate_cli(args: argparse.Namespace, method_names: Sequence[str]) -> EvaluationResult:
    r"""``captum-hetattn evaluate --nproc N [--out-dir DIR] [--shard-size S]``: the arguments of
    :func:`add_arguments` (``with_common=False``) plus the command's ``model``, ``n``, ``seed``,
    ``no_perturbation``. Without ``--out-dir`` the shards go to a temporary folder (no resume).
    """
    import tempfile

    options = dict(
        n=args.n, seed=args.seed, nproc=args.nproc, shard_size=args.shard_size,
        perturbation=not args.no_perturbation, backend=args.backend, progress=True,
    )
    if args.out_dir is not None:
        return evaluate_distributed(args.model, method_names, out_dir=args.out_dir, **options)
    with tempfile.TemporaryDirectory(prefix="hetattn-eval-") as scratch:
        return evaluate_distributed(args.model, method_names, out_dir=scratch, **options)


def _default_methods() -> list[str]:
    from captum_hetattn.evaluation.methods import standard_methods

    return list(standard_methods(include_integrated_gradients=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; every rank runs it under ``torchrun``."""
    args = _parser().parse_args(argv)
    name = "captum_hetattn.evaluation.distributed"
    try:
        settings = make_settings(
            args.model, args.methods or _default_methods(), n=args.n, seed=args.seed,
            shard_size=args.shard_size, batch_size=args.batch_size,
            perturbation=not args.no_perturbation,
        )
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            backend = _backend(args.backend, local_world)
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
            try:
                torch.set_num_threads(threads_per_rank(local_world))
                result = run_rank(settings, args.out_dir, rank, world,
                                  progress=rank == 0 and not args.quiet)
            finally:
                dist.destroy_process_group()
        else:
            result = evaluate_distributed(
                settings.model, settings.methods, n=settings.n, seed=settings.seed,
                out_dir=args.out_dir, nproc=args.nproc, shard_size=settings.shard_size,
                batch_size=settings.batch_size, perturbation=settings.perturbation,
                backend=args.backend, progress=True,
            )
    except (ValueError, TypeError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 1
    if result is not None and not args.quiet:
        print(result.table())
        if args.json:
            args.json.write_text(json.dumps(result.to_dict(), indent=1))
    return 0


__all__ = [
    "DEFAULT_SHARD_SIZE",
    "Settings",
    "add_arguments",
    "evaluate_cli",
    "evaluate_distributed",
    "main",
    "make_settings",
    "prepare_out_dir",
    "read_log",
    "run_rank",
    "shard_path",
    "threads_per_rank",
    "torch_threads",
    "wants_distributed",
]


if __name__ == "__main__":
    sys.exit(main())
