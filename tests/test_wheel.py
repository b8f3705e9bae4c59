"""The sdist and the wheel built from it (``python -m build``, as ``make dist``) install into a
fresh venv, where the package, its data and its CLI work and the README's example runs.

Offline and fast: the build runs without isolation (this environment's setuptools), the fresh
venv gets the wheel alone (``--no-deps``), and a ``.pth`` line lends it this environment's
site-packages for torch, transformers and captum. Everything runs from a folder outside the
repository with ``PYTHONPATH`` unset, and the test checks that ``captum_hetattn`` is the fresh
venv's copy (this environment's own editable install is a finder a plain ``.pth`` line does not
run).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "captum_hetattn"
#: package data the code loads at run time, as globs under the package
DATA = ["graph/presets/*.json", "zoo/weights/*", "visualization/views/static/*", "py.typed"]
#: not sources: left out of the copy the build runs on (as a clean checkout would)
IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "_build",
    "hetattn-report",
    ".ipynb_checkpoints",
)


def _data_files() -> list[str]:
    return sorted(
        str(path.relative_to(PACKAGE)) for pattern in DATA for path in PACKAGE.glob(pattern)
    )


def _clean_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list, cwd: Path, timeout: int = 600) -> str:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` on a copy of the sources: the sdist, and the wheel built from it."""
    work = tmp_path_factory.mktemp("dist")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    shutil.rmtree(source / "docs" / "tutorials", ignore_errors=True)  # conf.py's copies
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", work / "dist", source],
        cwd=work,
    )
    return work / "dist"


def test_sdist_holds_what_a_checkout_needs(dist):
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in [
        "README.md",
        "setup.cfg",
        "pyproject.toml",
        "Makefile",
        "MANIFEST.in",
        "CONTRIBUTING.md",
        "docs/conf.py",
        "docs/architecture.md",
        "tests/test_wheel.py",
        "tools/house_report.py",
    ]:
        assert needed in names, f"{needed} is not in the sdist"
    for path in _data_files():
        assert f"captum_hetattn/{path}" in names, f"package data {path} is not in the sdist"
    notebooks = {f"tutorials/{p.name}" for p in (ROOT / "tutorials").glob("*.ipynb")}
    assert notebooks and notebooks <= names
    assert not [name for name in names if "__pycache__" in name or name.startswith("docs/_build")]


def test_wheel_holds_the_package_and_its_data(dist):
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for path in _data_files():
        assert f"captum_hetattn/{path}" in names, f"package data {path} is not in the wheel"
    sources = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert sources <= names, f"modules missing from the wheel: {sorted(sources - names)[:5]}"
    assert not [name for name in names if name.startswith(("tests/", "docs/", "tutorials/"))]
    (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
    assert "captum-hetattn = captum_hetattn.cli:main" in archive_text(wheel, entry_points)


def archive_text(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(name).decode()


def _readme_example() -> str:
    """The first Python example under the README's "## Explain a model"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Explain a model\n", 1)
    assert len(section) == 2, "the README has no '## Explain a model' section"
    return section[1].split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def fresh(dist, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed and nothing else of its own."""
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    python = venv / "bin" / "python"
    (wheel,) = dist.glob("*.whl")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            wheel,
        ],
        cwd=venv.parent,
    )
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=venv.parent,
        ).strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv


def test_installed_package_has_its_data_and_runs_the_readme_example(fresh, tmp_path):
    check = textwrap.dedent(
        f"""
        import json, sys
        from importlib import resources
        from pathlib import Path
        import captum_hetattn
        home = Path(captum_hetattn.__file__).resolve().parent
        assert home.is_relative_to(Path({str(fresh)!r}).resolve()), home
        data = sorted(str(p.relative_to(home)) for g in {DATA!r} for p in home.glob(g))
        assert data == {_data_files()!r}, data
        from captum_hetattn.graph.presets import known_presets
        print(json.dumps({{"home": str(home), "presets": len(known_presets())}}))
        """
    )
    # one interpreter (imports are the slow part): the checks, then the README's example
    script = tmp_path / "readme_example.py"
    script.write_text(check + "\n# the README's example\n" + _readme_example())
    out = _run([fresh / "bin" / "python", script], cwd=tmp_path)
    assert json.loads(out.strip().splitlines()[0])["presets"] >= 20
    assert "torch.Size([1, 7])" in out, out


def test_installed_cli_runs(fresh, tmp_path):
    """The entry point (``--help`` runs in tests/test_readme.py); the zoo weights load (their
    sha256 is checked) and a figure is drawn."""
    cli = fresh / "bin" / "captum-hetattn"
    assert cli.exists()
    out = _run(
        [cli, "explain", "--model", "shapes_vit", "--index", "0", "--out", "figures"], cwd=tmp_path
    )
    assert out.strip()
    assert list((tmp_path / "figures").glob("*.png")), "explain --out drew no figure"
