# Set-up and checks. `make test` is what CI runs (.ci/run) and what the README tells users to run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install browser test lint demo clean sweep

$(VENV)/.installed: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test]"
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

test: install browser
	$(VENV)/bin/ruff check .
	$(PY) tools/house_report.py  # room sizes: a warning-only report
	$(PY) -m pytest -q

# the main job: explain and evaluate the bundled VQA model, write ./hetattn-report/
demo: install
	$(VENV)/bin/captum-hetattn demo

# every transformers model type built tiny, explained with every default and checked
# (tests/model_types/): writes tests/model_types/results.{md,json} and the README's table
sweep: install
	OMP_NUM_THREADS=1 PYTHONPATH=$(CURDIR):$(CURDIR)/tests nice -n 10 $(PY) -m model_types.sweep --workers 2

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache hetattn-report
