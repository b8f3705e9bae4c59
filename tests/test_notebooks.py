"""Every tutorial notebook runs top to bottom in a fresh kernel, and is committed executed.

The kernel is this interpreter (the venv's python), whatever kernels Jupyter has installed: the
notebooks run through ``tutorials/_build.py``'s ``execute``, which writes a throwaway kernelspec
pointing at ``sys.executable``. Rebuild the saved outputs with ``python tutorials/_build.py``.
"""

import importlib.util
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
_spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "_build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

NOTEBOOKS = build.notebooks()
IDS = [path.name for path in NOTEBOOKS]
MAX_SAVED_BYTES = 400_000  # outputs stay small: a few low-dpi figures per notebook


def _errors(notebook: nbformat.NotebookNode) -> list[str]:
    return [
        f"{output.ename}: {output.evalue}"
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]


def test_tutorials_are_notebooks():
    assert len(NOTEBOOKS) >= 6
    scripts = [p.name for p in TUTORIALS.glob("*.py") if not p.name.startswith("_")]
    assert not scripts, f"tutorials are notebooks now; left-over scripts: {scripts}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    build.execute(notebook, tmp_path, timeout=120)  # a cell that raises fails here
    assert not _errors(notebook)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_saved_executed(path):
    """Readers on GitHub see the outputs: every code cell ran, in order, without error."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        f"{path.name} is not saved executed top to bottom: run python tutorials/_build.py"
    )
    assert not _errors(notebook)
    assert any(cell.outputs for cell in code)
    assert path.stat().st_size < MAX_SAVED_BYTES


def test_no_iprogress_warning_in_a_notebook_without_ipywidgets(tmp_path):
    """tqdm.auto, imported by Captum and transformers, warns "IProgress not found" in a
    notebook kernel without ipywidgets; ``import captum_hetattn`` first keeps it out. The
    kernels here run without the tutorials' warning filter."""
    if importlib.util.find_spec("ipywidgets") is not None:
        pytest.skip("ipywidgets is installed: tqdm has its widgets, nothing to warn about")
    env = {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}

    def printed(source: str) -> str:
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        build.execute(notebook, tmp_path, timeout=120, env=env)
        return "".join(o.get("text", "") for o in notebook.cells[0].outputs)

    assert "IProgress not found" in printed("import tqdm.auto")  # the kernel shows it
    assert "IProgress not found" not in printed(
        "import captum_hetattn\nimport captum.attr\nimport transformers\nimport tqdm.auto")
