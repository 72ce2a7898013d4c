# ocpd: the front door. Every target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv run test lint typecheck check bench vectors clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# All components in one process with the built-in defaults (loopback, plaintext).
run: $(STAMP)
	OCP_LOG_FORMAT=$${OCP_LOG_FORMAT:-text} $(BIN)/ocpd run --component all

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench conformance
	$(BIN)/ruff format --check src tests bench conformance

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench.core --out bench/results/core.json

# Regenerate the published conformance vectors (the tests check they still match).
vectors: $(STAMP)
	$(BIN)/python -m conformance.generate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
