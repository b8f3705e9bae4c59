r"""Room sizes of the package: modules over 700 lines, classes over 350 code lines, functions over
60 code lines (the limits of the contributors' guide).

Code lines are the non-blank lines of a class or function that are neither comments nor
docstrings; a module counts all its lines. Only Python files count (``views/static`` JS does not).

Run: ``python tools/house_report.py [package dir] [--strict]``. ``make test`` runs it as a
warning-only report; ``--strict`` exits 1 when anything is over its limit.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

MODULE_LINES = 700
CLASS_CODE_LINES = 350
FUNCTION_CODE_LINES = 60


@dataclass(frozen=True)
class Oversize:
    """One room over its limit."""

    path: str
    line: int
    what: str  # "module", "class" or "function"
    name: str
    size: int
    limit: int

    def __str__(self) -> str:
        where = self.path if self.what == "module" else f"{self.path}:{self.line}"
        unit = "lines" if self.what == "module" else "code lines"
        return f"{where} {self.what} {self.name}: {self.size} {unit} (limit {self.limit})"


def _docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers covered by docstrings (module, class and function bodies)."""
    covered: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
            continue
        body = node.body
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            covered.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    return covered


def _code_lines(lines: list[str], first: int, last: int, docs: set[int]) -> int:
    count = 0
    for number in range(first, last + 1):
        text = lines[number - 1].strip()
        if text and not text.startswith("#") and number not in docs:
            count += 1
    return count


def measure(path: Path, root: Path) -> list[Oversize]:
    """The rooms of one file over their limits."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    name = str(path.relative_to(root))
    found: list[Oversize] = []
    if len(lines) > MODULE_LINES:
        found.append(Oversize(name, 1, "module", path.stem, len(lines), MODULE_LINES))
    tree = ast.parse(source)
    docs = _docstring_lines(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            limit, what = CLASS_CODE_LINES, "class"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            limit, what = FUNCTION_CODE_LINES, "function"
        else:
            continue
        size = _code_lines(lines, node.lineno, node.end_lineno or node.lineno, docs)
        if size > limit:
            found.append(Oversize(name, node.lineno, what, node.name, size, limit))
    return found


def report(package: Path) -> list[Oversize]:
    """Every room of ``package`` over its limit, by file."""
    root = package.parent
    found: list[Oversize] = []
    for path in sorted(package.rglob("*.py")):
        found += measure(path, root)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", nargs="?", default=str(Path(__file__).parents[1] /
                                                          "captum_hetattn"))
    parser.add_argument("--strict", action="store_true", help="exit 1 when a room is too big")
    args = parser.parse_args(argv)
    found = report(Path(args.package).resolve())
    if not found:
        print("house report: every module, class and function is within its limit")
        return 0
    print(f"house report: {len(found)} room(s) over their limits (warning only)")
    for oversize in found:
        print(f"  - {oversize}")
    return 1 if args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
