r"""The machine a benchmark runs on: CPU, cores, memory, load, GPU, versions, date and commit."""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch


def cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib(key: str = "MemTotal") -> float:
    """A ``/proc/meminfo`` entry in GiB (NaN where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return math.nan


def load_average() -> float:
    """The 1-minute load average (NaN where there is none)."""
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
        "cpu": cpu_model(),
        "cores": cores(),
        "memory_gib": round(memory_gib(), 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "captum": captum.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
    }


def torch_threads(count: int):
    """Torch threads set to ``count`` inside the block (the evaluation runner's helper)."""
    from captum_hetattn.evaluation.distributed import torch_threads as threads

    return threads(count)


__all__ = ["cores", "cpu_model", "load_average", "machine", "memory_gib", "torch_threads"]
