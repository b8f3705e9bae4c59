"""Sphinx configuration: the API reference from the docstrings, the README's guides, the design
notes and the tutorials (rendered from their saved outputs, never executed here).

Build offline with warnings as errors: ``make docs``
(``sphinx-build -W --keep-going -b html docs docs/_build/html``).
"""

import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the sources beside this file, not an installed copy
os.environ.setdefault("MPLBACKEND", "Agg")

import captum_hetattn  # noqa: E402

project = "captum_hetattn"
author = "captum_hetattn contributors"
copyright = "captum_hetattn contributors"
release = version = captum_hetattn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Args: / Returns: / Examples:: as Captum writes them
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "myst_nb",  # Markdown pages (MyST) and the tutorials' notebooks
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# the optional subpackage for HuggingFace models: its page is built only where it imports
# (its helper lands on another branch; without it the build stays free of warnings)
try:
    HAS_HF = importlib.util.find_spec("captum_hetattn.hf") is not None
    if HAS_HF:
        importlib.import_module("captum_hetattn.hf")
except Exception:  # an import error inside it is a failure of its own tests, not of the docs
    HAS_HF = False
if not HAS_HF:
    exclude_patterns.append("api/hf.rst")

# the tutorials live in ../tutorials (where they run and are saved executed); Sphinx reads only
# its source folder, so they are copied to tutorials/ here (git-ignored), rewritten only when
# changed so that incremental builds stay incremental
TUTORIALS = ROOT / "tutorials"
HERE = Path(__file__).resolve().parent


def _copy_tutorials() -> None:
    into = HERE / "tutorials"
    into.mkdir(exist_ok=True)
    wanted = {path.name: path.read_bytes() for path in sorted(TUTORIALS.glob("*.ipynb"))}
    for stale in into.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for name, data in wanted.items():
        target = into / name
        if not target.exists() or target.read_bytes() != data:
            part = target.with_suffix(f".{os.getpid()}.part")  # two builds at once stay whole
            part.write_bytes(data)
            os.replace(part, target)


_copy_tutorials()

# tutorials are saved executed (tests/test_notebooks.py checks it): show those outputs
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autoclass_content = "both"  # the class docstring and __init__'s Args:
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: no second description of dataclass fields

html_theme = "furo"
html_title = f"captum_hetattn {release}"
html_static_path: list[str] = []


def _cli_help_directive():
    """``.. cli-help::``: the CLI's ``--help`` text, from the parser itself (never stale)."""
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    class CliHelp(SphinxDirective):
        def run(self):
            from captum_hetattn.cli import build_parser

            os.environ["COLUMNS"] = "92"  # argparse wraps to the terminal; fix the width
            parser, commands = build_parser()
            out = [nodes.literal_block(text=parser.format_help(), language="text")]
            for name, sub in commands.items():
                section = nodes.section(ids=[f"cli-{name}"])
                section += nodes.title(text=f"captum-hetattn {name}")
                section += nodes.literal_block(text=sub.format_help(), language="text")
                out.append(section)
            return out

    return CliHelp


#: the README's links, written for GitHub (from the repository root), as the docs hold them
README_LINKS = {
    "](docs/": "](/",
    "](tutorials/": "](/tutorials/",
    "](CONTRIBUTING.md)": "](/contributing.md)",
}


def _readme_links(app, relative_path, parent_docname, content):
    """The README, included into the guide, links to pages of these docs (tutorials/ is a
    link to ../tutorials beside this file)."""
    if Path(relative_path).name == "README.md":
        for old, new in README_LINKS.items():
            content[0] = content[0].replace(old, new)


def _undocumented_top_level() -> list[str]:
    """Names of ``captum_hetattn.__all__`` that no API page documents by name (a name added
    to the package without a page still gets its entry, in the API index)."""
    pages = "\n".join(path.read_text() for path in (HERE / "api").glob("*.rst"))
    named = set(re.findall(r"^\.\. auto\w+:: (?:captum_hetattn\.)?(\w+)\s*$", pages, re.M))
    return [name for name in captum_hetattn.__all__ if name not in named | {"__version__"}]


def _api_index(app, docname, source):
    """List the HuggingFace page in the API index only where ``captum_hetattn.hf`` imports,
    and document there any top-level name that has no page yet."""
    if docname != "api/index":
        return
    if HAS_HF:
        source[0] = source[0].replace("   cli\n", "   cli\n   hf\n")
    missing = _undocumented_top_level()
    if missing:
        entries = []
        for name in missing:
            kind = "class" if inspect.isclass(getattr(captum_hetattn, name)) else "function"
            if not callable(getattr(captum_hetattn, name)):
                kind = "data"
            entries.append(f".. auto{kind}:: captum_hetattn.{name}\n")
        source[0] += "\nMore of ``captum_hetattn``\n--------------------------\n\n" + "\n".join(
            entries
        )


def _presets_directive():
    """``.. presets-table::``: every bundled preset, from the registry (never stale)."""
    from sphinx.util.docutils import SphinxDirective

    class PresetsTable(SphinxDirective):
        def run(self):
            from captum_hetattn.graph.presets import known_presets

            rows = [".. list-table::", "   :header-rows: 1", "",
                    "   * - preset", "     - streams", "     - matches (model types, classes)"]
            for name, found in sorted(known_presets().items()):
                streams = ", ".join(f"``{stream.name}``" for stream in found.graph.streams)
                matches = ", ".join(f"``{m}``" for m in (*found.model_types, *found.architectures))
                rows += [f"   * - ``{name}``", f"     - {streams}", f"     - {matches or '—'}"]
            self.state_machine.insert_input(rows, "presets-table")
            return []

    return PresetsTable


FIELD = re.compile(r"^:(param|type) \w+:")


def _init_args_win(app, what, name, obj, options, lines):
    """``autoclass_content = "both"``: a class whose class docstring and ``__init__`` both
    list Args would show them twice; the class docstring's short list is dropped."""
    if what != "class" or not lines:
        return
    init_doc = inspect.getdoc(getattr(obj, "__init__", None)) or ""
    class_doc = inspect.getdoc(obj) or ""
    if "Args:" not in init_doc or not class_doc or lines[0] != class_doc.splitlines()[0]:
        return
    kept, in_field = [], False
    for line in lines:
        if FIELD.match(line):
            in_field = True
        elif in_field and not line.startswith(" "):
            in_field = False
        if not in_field:
            kept.append(line)
    lines[:] = kept


def setup(app):
    app.add_directive("cli-help", _cli_help_directive())
    app.add_directive("presets-table", _presets_directive())
    app.connect("autodoc-process-docstring", _init_args_win)
    app.connect("source-read", _api_index)
    app.connect("include-read", _readme_links)
    return {"parallel_read_safe": True}
