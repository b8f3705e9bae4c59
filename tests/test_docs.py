"""The documentation builds offline with warnings as errors (what ``make docs`` runs), documents
the whole public API, renders the saved tutorials, and its measured tables are the README's.

One build (about 10-30 s) serves every check: Sphinx runs in a subprocess into ``tmp_path``.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import captum_hetattn

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    """``sphinx-build -W --keep-going -b html docs OUT``: the built site's folder."""
    out = tmp_path_factory.mktemp("docs")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # the sources under test (conf.py puts them first too)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(out / "doctrees"),
            str(DOCS),
            str(out / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    log = f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    assert done.returncode == 0, f"sphinx-build failed:\n{log}"
    return out / "html"


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text()))


def test_every_public_name_is_documented(html):
    ids = set().union(*(_ids(page) for page in (html / "api").glob("*.html")))
    names = [name for name in captum_hetattn.__all__ if name != "__version__"]
    missing = [name for name in names if f"captum_hetattn.{name}" not in ids]
    assert not missing, f"public names with no entry in the API reference: {missing}"
    for cls in (
        "HeterogenousAttentionAttribution",
        "GenericAttentionExplainability",
        "AttentionRollout",
        "RawAttention",
    ):
        for method in ("attribute", "explain"):
            assert f"captum_hetattn.{cls}.{method}" in ids
    assert "captum_hetattn.zoo.load" in ids
    assert "captum_hetattn.evaluation.evaluate" in ids
    assert "captum_hetattn.visualization.text_html" in ids


def test_docstring_sections_are_rendered(html):
    """Args: / Returns: become field lists (napoleon), not literal text."""
    page = (html / "api" / "explainers.html").read_text()
    attribute = page[page.index('id="captum_hetattn.HeterogenousAttentionAttribution.attribute"') :]
    assert "Parameters" in attribute[:20000] and "Returns" in attribute[:40000]
    assert "Args:" not in page
    classes = re.split(r'<dl class="py class">', page)[1:]
    assert len(classes) == 4
    for section in classes:  # class docstring and __init__ both list Args: shown once
        assert section.count("forward_func</strong>") == 1


def test_hf_page_follows_the_subpackage(html):
    has_hf = importlib.util.find_spec("captum_hetattn.hf") is not None
    assert (html / "api" / "hf.html").exists() == has_hf
    if has_hf:
        assert "captum_hetattn.hf" in (html / "api" / "hf.html").read_text()


def test_cli_page_is_the_parsers_help(html):
    from captum_hetattn.cli import build_parser

    page = (html / "api" / "cli.html").read_text()
    _, commands = build_parser()
    for name, parser in commands.items():
        assert f"captum-hetattn {name}" in page
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in page, f"{name} {flag} is not on the CLI page"


def test_tutorials_are_rendered_from_their_saved_outputs(html):
    notebooks = sorted((ROOT / "tutorials").glob("*.ipynb"))
    assert notebooks
    for notebook in notebooks:
        page = html / "tutorials" / f"{notebook.stem}.html"
        assert page.exists(), f"{notebook.name} is not in the docs"
        text = page.read_text()
        cells = json.loads(notebook.read_text())["cells"]
        outputs = [out for cell in cells for out in cell.get("outputs", [])]
        pictures = sum("image/png" in out.get("data", {}) for out in outputs)
        assert text.count("<img") >= pictures, notebook.name
        streams = [
            line.strip()
            for out in outputs
            if out.get("output_type") == "stream"
            for line in "".join(out["text"]).splitlines()
            if len(line.strip()) > 12
        ]
        if streams:  # the saved output is shown (nothing was executed to get it)
            shown = re.sub(r"<[^>]+>", "", text)
            assert _unescape(streams[0]) in _unescape(shown), (notebook.name, streams[0])


def _unescape(text: str) -> str:
    import html as html_module

    return re.sub(r"\s+", " ", html_module.unescape(text))


def test_guide_links_resolve_inside_the_docs(html):
    page = (html / "guide.html").read_text()
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        assert f'href="tutorials/{notebook.stem}.html"' in page
    assert 'href="architecture.html"' in page
    assert 'href="contributing.html"' in page
    assert (html / "which_method.html").exists() and (html / "architecture.html").exists()


def _tables(text: str) -> list[list[str]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_which_method_tables_are_the_readmes():
    """Every measured table on the page (one whose header is a README table's) copies README
    rows verbatim: a re-measured README table makes this fail until the page follows."""
    readme_lines = set(README.read_text().splitlines())
    page = (DOCS / "which_method.md").read_text()
    measured = [table for table in _tables(page) if table[0] in readme_lines]
    assert len(measured) >= 6
    for table in measured:
        for row in table:
            assert row in readme_lines, f"docs/which_method.md row not in the README: {row}"
    for method in (
        "ours (pos)",
        "ours (abs)",
        "ours (full)",
        "GAE",
        "rollout",
        "raw attention",
        "IntegratedGradients",
        "include_own",
        'weighting="value"',
    ):
        assert method in page


def test_presets_page_lists_every_preset(html):
    from captum_hetattn.graph.presets import known_presets

    page = (html / "api" / "graphs.html").read_text()
    for name in known_presets():
        assert f'<span class="pre">{name}</span>' in page, f"preset {name} is not listed"
