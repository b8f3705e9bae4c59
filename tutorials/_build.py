r"""Execute the tutorial notebooks and save them with their outputs.

    .venv/bin/python tutorials/_build.py            # every tutorials/*.ipynb
    .venv/bin/python tutorials/_build.py 02 05      # the notebooks whose names start so

Each notebook runs top to bottom in a fresh kernel of *this* interpreter (the venv's python,
whatever kernels Jupyter has installed), in a scratch working directory; it is written back with
its outputs, without timing metadata, and the seconds it took are printed. ``tests/
test_notebooks.py`` runs the notebooks the same way (:func:`execute`) and fails on any error.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
KERNEL_NAME = "captum-hetattn-tutorials"
#: what the saved notebooks say to Jupyter: the ordinary Python 3 kernel
SAVED_KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                    "language": "python"}


def notebooks(prefixes: list[str] | None = None) -> list[Path]:
    """The tutorial notebooks, by name; with ``prefixes``, those whose names start with one."""
    paths = sorted(HERE.glob("[0-9]*.ipynb"))
    if prefixes:
        paths = [p for p in paths if any(p.name.startswith(x) for x in prefixes)]
    return paths


#: the kernel's environment: tqdm (imported by Captum) warns once when ipywidgets is missing,
#: which ``import captum_hetattn`` silences; the filter keeps it out of notebooks that import
#: Captum or transformers first
KERNEL_ENV = {"PYDEVD_DISABLE_FILE_VALIDATION": "1", "PYTHONWARNINGS": "ignore:IProgress"}


def _kernel_manager(spec_dir: Path, env: dict[str, str] | None = None) -> KernelManager:
    """A kernel manager whose only kernel runs ``sys.executable -m ipykernel_launcher``."""
    kernel = spec_dir / KERNEL_NAME
    kernel.mkdir(parents=True, exist_ok=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher",
                 "-f", "{connection_file}"],
        "display_name": "Python (captum_hetattn tutorials)",
        "language": "python",
        "env": KERNEL_ENV if env is None else env,
    }))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir)], ensure_native_kernel=False)
    # ipc: local sockets (files beside the spec), not TCP ports
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs, transport="ipc",
                         ip=str(spec_dir / "kernel"))


def execute(
    notebook: nbformat.NotebookNode, workdir: Path, timeout: int = 120,
    env: dict[str, str] | None = None,
) -> nbformat.NotebookNode:
    r"""Run every cell of ``notebook`` (in place) in a fresh kernel of this interpreter.

    Args:
        notebook: an ``nbformat`` v4 notebook.
        workdir: the kernel's working directory (files the notebook writes land there).
        timeout: seconds allowed per cell.
        env: the kernel's environment variables (default :data:`KERNEL_ENV`).

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised (the message shows the cell and
            the traceback).
    """
    with tempfile.TemporaryDirectory(prefix="kernelspec-") as spec_dir:
        manager = _kernel_manager(Path(spec_dir), env)
        client = NotebookClient(
            notebook, timeout=timeout, kernel_name=KERNEL_NAME, km=manager,
            resources={"metadata": {"path": str(workdir)}}, record_timing=False,
            coalesce_streams=True,  # one stdout block per cell, however the kernel flushed it
        )
        try:
            client.execute()
        finally:  # nbclient leaves a kernel manager it was given running
            if manager.has_kernel:
                manager.shutdown_kernel(now=True)
    return notebook


def _clean(notebook: nbformat.NotebookNode) -> None:
    """Keep what a reader needs: outputs and execution counts; no timing, no local kernel name."""
    notebook.metadata["kernelspec"] = dict(SAVED_KERNELSPEC)
    language = notebook.metadata.get("language_info", {})
    notebook.metadata["language_info"] = {"name": "python", **{
        key: language[key] for key in ("file_extension", "mimetype", "pygments_lexer")
        if key in language}}
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)


def build(path: Path) -> float:
    """Execute ``path``, write it back with outputs; the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tutorial-") as workdir:
        execute(notebook, Path(workdir))
    seconds = time.perf_counter() - start
    _clean(notebook)
    nbformat.write(notebook, path)
    return seconds


def main(argv: list[str]) -> None:
    for path in notebooks(argv or None):
        print(f"{path.name}: {build(path):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
