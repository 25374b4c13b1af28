# The two commands of the README: `make demo` and `make test`. Both create .venv and install on first use.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# On the project's CPU machines torch==2.13.0 is a fast local wheel; GPU users override this with their CUDA build
# (make TORCH=torch ...) or install torch in the venv first.
TORCH ?= torch==2.13.0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browser demo test test-fast lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The browser of tests/integration/test_app_end_to_end.py: Debian's chromium and its driver, only when missing (apt needs root, as CI is).
# Without apt (another distribution, no root) this says so and the browser test is skipped with that reason.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  chromium chromium-driver >/dev/null; } || echo "note: chromium and chromium-driver could not be installed \
	(apt-get install chromium chromium-driver); the browser test will be skipped"

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# ruff (configured in pyproject.toml) first: a lint error fails in a second, before minutes of tests.
lint: install
	$(VENV)/bin/ruff check .

# Two pytest-xdist workers, a file's tests on one worker (its fixtures built once): the suite in about half the time
# on two cores. `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 2

test: lint browser
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PYTHON) -m pytest \
	  -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The quick loop while editing: tests/unit (pure rules and small objects in this process: no subprocess, no
# training run; about a minute). tests/integration runs the entry points, training runs and subprocesses.
test-fast: lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

bench: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash bench/run_all.sh

clean-venv:
	rm -rf $(VENV)
