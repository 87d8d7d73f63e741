# Blacktop developer commands. `make help` lists them; README.md explains the two that matter: run, test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Installed-state stamp: the venv is rebuilt when the dependencies change.
VENV_STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml
	@echo "==> Python environment ($(VENV)): installing blacktop and its dev dependencies"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## Create the Python virtualenv with blacktop installed (editable)

.PHONY: tools
tools: ## Build/install the pinned external tools (cached outside the repo; slow once, instant after)
	@bash hack/tools/install.sh

.PHONY: setup
setup: venv tools ## Everything `run` and `test` need

.PHONY: run
run: setup ## Start a local control plane, install Blacktop's CRDs and catalog, run the operator
	@$(VENV)/bin/blacktop run --local --install

.PHONY: test
test: setup lint ## Lint, then run the whole test suite (unit, integration, e2e) against a real local control plane
	@$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ## Only the fast, pure unit tests
	@$(PY) -m pytest -m unit $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff, mypy --strict and the import layering contracts
	@echo "==> lint: ruff, mypy --strict, import layering contracts"
	@$(VENV)/bin/ruff check operator tests bench hack
	@$(VENV)/bin/ruff format --check operator tests bench hack
	@$(VENV)/bin/mypy
	@$(VENV)/bin/lint-imports

.PHONY: crds
crds: venv ## Regenerate crds/ (and the Helm chart's copies) from the pydantic models
	@$(PY) -m blacktop.crdgen write

.PHONY: crds-check
crds-check: venv ## Fail if crds/ or the chart's copies are stale
	@$(PY) -m blacktop.crdgen check

.PHONY: image
image: setup ## Build the operator image and the node's pause image (OCI archives for `ctr images import`; cached)
	@$(VENV)/bin/blacktop image build
	@$(VENV)/bin/blacktop image pause

# uv resolves for any platform (--universal) so the Dockerfile can build other architectures from the
# same lock; UPGRADE=1 moves every pin to the newest allowed version, otherwise pins stay where valid.
IMAGE_LOCK := $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes $(if $(UPGRADE),--upgrade)

.PHONY: image-lock
image-lock: venv ## Re-resolve the image's hashed lock files (hack/image/*.lock) from PyPI; UPGRADE=1 to bump all
	@$(IMAGE_LOCK) pyproject.toml -o hack/image/requirements.lock
	@$(IMAGE_LOCK) hack/image/build-requirements.in -o hack/image/build-requirements.lock
	@echo "==> hack/image/requirements.lock and build-requirements.lock written; make image rebuilds what changed"

.PHONY: cluster-up
cluster-up: setup ## Start a detached local control plane (prints the KUBECONFIG export line)
	@$(VENV)/bin/blacktop cluster up

.PHONY: cluster-down
cluster-down: venv ## Stop the detached local control plane
	@$(VENV)/bin/blacktop cluster down

.PHONY: clean
clean: ## Remove the virtualenv and caches inside the repo (the tool cache stays)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
