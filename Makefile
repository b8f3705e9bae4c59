# Set-up and checks. `make test` is what CI runs (.ci/run) and what the README tells users to run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch pinned (an unpinned torch may pull a newer, multi-GB CUDA build); on Linux, PyPI serves
# the CUDA build: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make install for CPU
TORCH_PIN ?= torch==2.13.0

.PHONY: install browser test lint demo docs dist sweep clean

$(VENV)/.installed: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .

# headless Chromium for the browser tests of the views (tests/_browser.py); Debian packages,
# installed only when missing (CI runs as root; elsewhere through sudo)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null)

# the suite in PYTEST_WORKERS processes (pytest-xdist), a file to a worker, so that a file's
# module fixtures are built once, in the order tests/conftest.py gives (the slow files first, not
# xdist's most-tests-first); PYTEST_WORKERS=0 runs it in this one process
PYTEST_WORKERS ?= 2
test: install browser
	$(VENV)/bin/ruff check .
	$(PY) tools/house_report.py  # room sizes: a warning-only report
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# the main job: explain and evaluate the bundled VQA model, write ./hetattn-report/
demo: install
	$(VENV)/bin/captum-hetattn demo

# the API reference and the tutorials (rendered from their saved outputs, not executed), offline,
# warnings as errors -> docs/_build/html/index.html (tests/test_docs.py builds the same)
docs: install
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# the sdist and the wheel built from it -> dist/ (tests/test_wheel.py installs them in a fresh venv)
dist: install
	$(PY) -m build --no-isolation --outdir dist .

# every transformers model type built tiny, explained with every default and checked
# (tests/model_types/): writes tests/model_types/results.{md,json} and the README's table
sweep: install
	OMP_NUM_THREADS=1 PYTHONPATH=$(CURDIR):$(CURDIR)/tests nice -n 10 $(PY) -m model_types.sweep --workers 2

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache hetattn-report docs/_build docs/tutorials
