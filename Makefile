# ocpd: the front door. Every target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv run test lint typecheck check bench conformance vectors clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# All components in one process with the built-in defaults (loopback, plaintext).
run: $(STAMP)
	OCP_LOG_FORMAT=$${OCP_LOG_FORMAT:-text} OCP_CUSTODIAN_DEV_MODE=$${OCP_CUSTODIAN_DEV_MODE:-true} \
		$(BIN)/ocpd run --component all

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
	$(BIN)/python -m bench.framework --out bench/results/framework.json
	$(BIN)/python -m bench.registry --out bench/results/registry.json
	$(BIN)/python -m bench.federation --out bench/results/federation.json
	$(BIN)/python -m bench.node --out bench/results/node.json
	$(BIN)/python -m bench.net --out bench/results/net.json
	$(BIN)/python -m bench.pvl --out bench/results/pvl.json
	$(BIN)/python -m bench.consensus --out bench/results/consensus.json

# The black-box suite against a throwaway local ocpd (TLS from a temporary CA, ports 0).
# Exits with the suite's status: non-zero while required checks are not implemented.
CONFORMANCE_LEVEL ?= core
conformance: $(STAMP)
	@status=0; $(BIN)/python -m conformance.local --level $(CONFORMANCE_LEVEL) \
		--out conformance/results || status=$$?; \
	echo "conformance reports: conformance/results/report.json conformance/results/junit.xml"; \
	exit $$status

# Regenerate the published conformance vectors (the tests check they still match).
vectors: $(STAMP)
	$(BIN)/python -m conformance.generate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Container image (contrib/docker/Dockerfile), built offline from wheels of ocpd
# and its pinned dependencies. `make containers` also runs the image and the
# systemd units for real (.ci/containers.sh: root, podman, mmdebstrap).
.PHONY: wheels image containers

wheels: $(STAMP)
	rm -rf build/wheels
	$(BIN)/pip wheel --quiet --disable-pip-version-check --wheel-dir build/wheels .

image:
	bash .ci/containers.sh image

containers:
	bash .ci/containers.sh
