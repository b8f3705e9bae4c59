"""The README's examples and commands run as written (keeps the README true).

- Every ```python block runs (a new block is picked up by itself). A block that downloads from
  a hub (``from_pretrained`` / ``pipeline(...)`` in its code, not in a comment) fails unless
  :data:`NEEDS_HUB` lists it with the reason.
- Every command of a ```bash block runs here: ``captum-hetattn`` commands with their arguments
  as shown, except that example counts (``--n``) are cut to :data:`FEW` (the README's numbers
  are measured with the counts shown; the code path is the same); ``make`` targets are checked
  with ``make -n`` (``make test`` is what CI runs, ``make install`` builds a venv).
- Every command the README mentions inline (in backticks) is in :data:`INLINE`, which says how
  it is checked: run here, or the test that covers it, or why it is not run. A new inline
  command that is not listed fails.
"""

import contextlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
#: example count for commands that score or draw held-out examples (``--n``)
FEW = "3"


def _blocks(language: str) -> list[tuple[int, str]]:
    """``(line number, body)`` of every fenced block in ``language``."""
    found, lines = [], TEXT.splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == f"```{language}":
            start = number
        elif start is not None and line.strip() == "```":
            found.append((start, "\n".join(lines[start : number - 1])))
            start = None
    return found


PYTHON_BLOCKS = _blocks("python")
SHELL_BLOCKS = [block for lang in ("bash", "sh", "shell", "console") for block in _blocks(lang)]

HUB_CALL = re.compile(r"\.from_pretrained\(|\bpipeline\(")
#: python blocks that need a model hub, by their first line of code: why they cannot run here
NEEDS_HUB: dict[str, str] = {}


def _hub_lines(code: str) -> list[str]:
    return [line for line in code.splitlines() if HUB_CALL.search(line.split("#", 1)[0])]


def _first_code_line(code: str) -> str:
    return next(line for line in code.splitlines() if line.strip() and not line.startswith("#"))


@pytest.mark.parametrize("line", [line for line, _ in PYTHON_BLOCKS], ids=lambda n: f"line{n}")
def test_readme_example_runs(line, tmp_path, monkeypatch):
    code = dict(PYTHON_BLOCKS)[line]
    hub = _hub_lines(code)
    if hub:
        reason = NEEDS_HUB.get(_first_code_line(code))
        assert reason, (
            f"README.md:{line}: this example downloads from a hub ({hub}); build the model from "
            "a config as the other examples do (hub paths go in comments), or list the block "
            "in tests/test_readme.py NEEDS_HUB with the reason"
        )
        pytest.skip(f"README.md:{line} needs a model hub: {reason}")
    monkeypatch.chdir(tmp_path)  # files an example writes land here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def test_needs_hub_lists_only_hub_examples():
    hub_blocks = {_first_code_line(code) for _, code in PYTHON_BLOCKS if _hub_lines(code)}
    assert set(NEEDS_HUB) <= hub_blocks, "NEEDS_HUB lists a block that no longer needs the hub"


# ---- shell commands ---------------------------------------------------------------------------


def _commands() -> list[tuple[int, list[str]]]:
    """``(line number, argv)`` of each command of the README's shell blocks (comments off,
    ``\\`` continuations joined)."""
    found = []
    for start, body in SHELL_BLOCKS:
        pending, first = "", None
        for offset, line in enumerate(body.splitlines(), 1):
            first = first or start + offset
            pending += line.rstrip("\\") + " " if line.rstrip().endswith("\\") else line
            if line.rstrip().endswith("\\"):
                continue
            argv = shlex.split(pending, comments=True)
            if argv:
                found.append((first, argv))
            pending, first = "", None
    return found


COMMANDS = _commands()


def _few(argv: list[str]) -> list[str]:
    """The command with every ``--n`` cut to :data:`FEW`; ``evaluate`` and ``demo`` without
    ``--n`` get one (their defaults are 200 and 300 examples, 60 scenes for the DETR demo,
    whose logical inspection :func:`_few_detr` cuts)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--n":
            out[i + 1] = FEW
    detr_demo = out[:1] == ["demo"] and "shapes_detr" in out
    if out[:1] in (["demo"], ["evaluate"]) and "--n" not in out:
        out += ["--n", FEW]
    if out[:1] == ["demo"] and not detr_demo:
        out += ["--show", "1"]
    return out


@pytest.fixture(autouse=True)
def _few_detr(monkeypatch):
    """``demo --model shapes_detr``'s logical inspection (120 VQA questions, no flag): cut too."""
    from captum_hetattn.evaluation import segmentation

    whole = segmentation.run_detection_demo
    monkeypatch.setattr(
        segmentation,
        "run_detection_demo",
        lambda out_dir, n=60, seed=12345: whole(out_dir, n=n, seed=seed, n_vqa=int(FEW)),
    )


def _cli(argv: list[str], cwd: Path) -> str:
    """``captum-hetattn ARGV`` run in-process in ``cwd``; its printed output."""
    from captum_hetattn.cli import main

    printed, here = io.StringIO(), Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(printed):
            code = main(argv)
    except SystemExit as stop:  # --help
        code = stop.code
    finally:
        os.chdir(here)
    assert code == 0, f"captum-hetattn {shlex.join(argv)} exited {code}:\n{printed.getvalue()}"
    return printed.getvalue()


#: what the recipe of each target the README names must run (``make -n``)
RECIPES = {
    "install": "pip install",
    "test": "pytest",
    "lint": "ruff check",
    "demo": "captum-hetattn demo",
    "docs": "sphinx-build -W --keep-going",
    "dist": "-m build",
    "sweep": "-m model_types.sweep",
}


def _make_dry_run(argv: list[str]) -> str:
    """``make -n ARGS`` with the venv pointed at a folder that does not exist, so the whole
    recipe is printed (an installed ``.venv`` would make ``install`` a no-op); checked against
    :data:`RECIPES`."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        [make, "-n", *argv[1:], "VENV=/nonexistent/venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"`{shlex.join(argv)}`: {done.stderr}"
    targets = [arg for arg in argv[1:] if "=" not in arg] or ["install"]  # the first target
    for target in targets:
        assert RECIPES.get(target, "") in done.stdout, f"`make {target}` does not run it"
    return done.stdout


def _check_outputs(argv: list[str], cwd: Path, printed: str) -> None:
    """What the command says it writes is there."""
    for flag in ("--json", "--out"):
        if flag in argv:
            path = cwd / argv[argv.index(flag) + 1]
            assert path.exists(), f"{shlex.join(argv)} did not write {path.name}"
            if path.is_dir():
                assert any(path.iterdir()), f"{shlex.join(argv)} wrote nothing into {path}"
    assert printed.strip(), f"{shlex.join(argv)} printed nothing"


@pytest.mark.parametrize("line,argv", COMMANDS, ids=[f"line{n}" for n, _ in COMMANDS])
def test_readme_command_runs(line, argv, tmp_path):
    if argv[0] == "make":
        recipe = _make_dry_run(argv)
        assert recipe.strip(), f"README.md:{line}: `{shlex.join(argv)}` does nothing"
        return
    assert argv[0] == "captum-hetattn", f"README.md:{line}: no rule to check `{shlex.join(argv)}`"
    printed = _cli(_few(argv[1:]), tmp_path)
    _check_outputs(argv[1:], tmp_path, printed)


# ---- commands mentioned inline ----------------------------------------------------------------

INLINE_COMMAND = re.compile(
    r"`((?:captum-hetattn|python|make|torchrun|pip install|\.venv/bin/python)\b[^`]*)`"
)
RUN, DRY = "run", "dry"
#: every command the README names in backticks, and how it is checked. ``(RUN, [argv, ...])``:
#: ``captum-hetattn`` argvs run here (``python X`` ones in a subprocess); ``(DRY,)``: ``make -n``;
#: ``("covered", test file, text in it)``: that test runs it (with 2 processes: its
#: ``nproc=2`` runs; ``--out-dir`` from the command line); ``("same", other)``: the other entry
#: with its defaults; ``("not run", why)``.
INLINE: dict[str, tuple] = {
    "make": ("not run", "the tool's name, not a command"),
    "make install": (DRY,),
    "make install TORCH_PIN=torch==2.5.1": (DRY,),
    "pip install -e .": (
        "not run",
        "installs into the environment running the tests; "
        "`make install` runs the same `pip install -e` into its own venv",
    ),
    "make demo": (DRY,),
    "captum-hetattn demo --out DIR": (RUN, [["demo", "--out", "report"]]),
    "python -m captum_hetattn.zoo.train NAME": (
        RUN,
        [["python", "-m", "captum_hetattn.zoo.train", "--help"]],
        "training takes minutes and rewrites the shipped weights: only its command line is run",
    ),
    "captum-hetattn evaluate --model NAME --n 300 --methods ...": (
        RUN,
        [
            ["evaluate", "--model", name, "--n", "300"]
            for name in ("minilm", "reverse_seq2seq", "shapes_vit", "shapes_vqa")
        ],
    ),
    "captum-hetattn demo": ("same", "captum-hetattn demo --out DIR"),
    "captum-hetattn evaluate": (RUN, [["evaluate"]]),
    "captum-hetattn COMMAND --help": (
        RUN,
        [[command, "--help"] for command in ("demo", "evaluate", "bench", "explain")],
    ),
    "captum-hetattn evaluate --model shapes_vqa --task logical": (
        RUN,
        [["evaluate", "--model", "shapes_vqa", "--task", "logical", "--n", "300"]],
    ),
    "make test": (DRY,),
    "make dist": ("covered", "tests/test_wheel.py", '"build", "--no-isolation"'),
    "pip install dist/*.whl": ("covered", "tests/test_wheel.py", '"--no-deps"'),
    ".venv/bin/python tutorials/_build.py": (
        "covered",
        "tests/test_notebooks.py",
        "build.execute(notebook",
    ),
    "captum-hetattn bench": ("covered", "tests/test_bench.py", '"bench", "--quick"'),
    "captum-hetattn bench --readme README.md": (
        "covered", "tests/test_bench.py", "test_headline_goes_between_the_readme_markers"),
    "make sweep": (DRY,),
    "python -m captum_hetattn.bench": (
        RUN,
        [["python", "-m", "captum_hetattn.bench", "--help"]],
        "the full run takes an hour; `--quick` runs in tests/test_bench.py",
    ),
    "captum-hetattn evaluate --nproc 2 --out-dir DIR": (
        "covered",
        "tests/test_distributed.py",
        '"--out-dir", str(tmp_path / "cli")',
    ),
    "torchrun --nproc-per-node N -m\ncaptum_hetattn.evaluation.distributed --num-examples N "
    "--out DIR ...": ("covered", "tests/test_distributed.py", "captum_hetattn.evaluation"),
    "python tools/house_report.py": (RUN, [["python", "tools/house_report.py"]]),
}


def _inline() -> list[str]:
    prose = re.sub(r"^```.*?^```", "", TEXT, flags=re.S | re.M)  # fenced blocks are above
    return list(dict.fromkeys(INLINE_COMMAND.findall(prose)))


def test_every_inline_command_is_checked():
    unknown = [command for command in _inline() if command not in INLINE]
    assert not unknown, f"README commands with no check in tests/test_readme.py INLINE: {unknown}"
    stale = [command for command in INLINE if command not in _inline()]
    assert not stale, f"INLINE lists commands the README no longer shows: {stale}"


def _python(argv: list[str], cwd: Path, monkeypatch) -> str:
    """``python -m MODULE ...`` / ``python SCRIPT ...`` run in-process (as ``__main__``)."""
    monkeypatch.chdir(cwd)
    module = argv[2] if argv[1] == "-m" else None
    rest = argv[3:] if module else argv[2:]
    monkeypatch.setattr(sys, "argv", [module or argv[1], *rest])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as stop:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[1], run_name="__main__")
    assert stop.value.code in (0, None), f"`{shlex.join(argv)}`:\n{printed.getvalue()}"
    return printed.getvalue()


@pytest.mark.parametrize("command", list(INLINE))
def test_readme_inline_command(command, tmp_path, monkeypatch):
    if command not in _inline():
        pytest.skip("no longer in the README (test_every_inline_command_is_checked fails)")
    how = INLINE[command]
    if how[0] == DRY:
        assert _make_dry_run(shlex.split(command)).strip()
    elif how[0] == "same":
        assert how[1] in INLINE and INLINE[how[1]][0] == RUN
    elif how[0] == "covered":
        assert how[2] in (ROOT / how[1]).read_text(), f"{how[1]} no longer runs `{command}`"
    elif how[0] == RUN:
        for argv in how[1]:
            if argv[0] == "python":
                cwd = ROOT if "tools/" in argv[1] else tmp_path
                assert _python(argv, cwd, monkeypatch).strip()
                continue
            printed = _cli(_few(argv), tmp_path)
            if "--help" in argv:
                assert "--" in printed and "default" in printed, printed
            else:
                _check_outputs(argv, tmp_path, printed)


def test_torch_pin_reaches_pip():
    """`make install TORCH_PIN=...` installs that torch (the README's override)."""
    recipe = _make_dry_run(["make", "install", "TORCH_PIN=torch==2.5.1"])
    assert "torch==2.5.1" in recipe
