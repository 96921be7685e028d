# credential-broker: one entry point for every developer and CI task.
#   make run    install into .venv and start the broker wired to a local control-plane emulator
#   make test   install, check generated code and lint, and run the whole test suite
#   make bench  print throughput figures (broker vs. an echo server on the same stack)
#   make lock   re-resolve requirements/*.txt (UPGRADE=1 for the newest releases)
#   make test-latest  lint + fast suite in a throw-away venv with the newest releases (not CI)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTO_SRC := $(shell find proto -name '*.proto')
PROTO_OUT := broker/_proto
PYTEST_ARGS ?=

.PHONY: help install lock run test test-fast test-latest lint lint-checks proto check-generated bench \
	redis-server clean

help:
	@echo "make run | make test | make lint | make proto | make bench | make lock | make test-latest | make clean"

# The install resolves nothing: it takes the committed lock (requirements/dev.txt, every package
# pinned with its hashes), then the broker, the Python client and the control-plane emulator (a
# development package: emulator/) as editable installs built with the locked setuptools.
# `make lock` rewrites the lock; `make test-latest` tries the newest releases.
LOCK := requirements/dev.txt
UV_COMPILE = $(BIN)/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet

$(STAMP): pyproject.toml clients/python/pyproject.toml emulator/pyproject.toml $(LOCK)
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  echo "python venv support is missing; installing python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . -e clients/python -e emulator
	$(BIN)/python -m pip check
	@touch $@

install: $(STAMP)

# `credential-broker dev` imports the emulator (installed above) and runs it beside the broker.
run: $(STAMP)
	$(BIN)/credential-broker dev

# The suite starts its own throw-away redis-server processes on free loopback ports (or uses
# REDIS_URL when set); the binary is installed here when the machine lacks it, and so is h2load
# (nghttp2-client), the load generator of the benchmark and its smoke test.
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1 && [ -z "$${REDIS_URL:-}" ]; then \
	  echo "redis-server not found; installing it with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq redis-server; \
	  systemctl disable --now redis-server >/dev/null 2>&1 || true; \
	fi
	@if ! command -v h2load >/dev/null 2>&1; then \
	  echo "h2load not found; installing nghttp2-client with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq nghttp2-client; \
	fi

proto: $(STAMP)
	./scripts/gen-proto $(PROTO_OUT)

check-generated: $(STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	./scripts/gen-proto "$$tmp/out"; \
	if ! diff -r -q "$$tmp/out" $(PROTO_OUT) >/dev/null; then \
	  diff -r "$$tmp/out" $(PROTO_OUT) | head -40; \
	  echo "generated code is stale: run 'make proto' and commit the result"; exit 1; \
	fi; echo "generated code is current"

lint: $(STAMP) lint-checks

# The checks alone, with whichever venv VENV names (test-latest runs them in its own).
lint-checks:
	$(BIN)/ruff format --check broker emulator tests bench scripts
	$(BIN)/ruff check broker emulator tests bench scripts
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code proto
	$(BIN)/python -m broker.catalog --check
	$(BIN)/python -m broker.config --check
	$(BIN)/kubernetes-validate --strict -k 1.30.0 deploy/kubernetes/*.yaml
	$(BIN)/yamllint -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}" deploy
	$(BIN)/hadolint --failure-threshold warning deploy/Dockerfile

test: $(STAMP) redis-server check-generated lint clients-check clients-lint
	$(BIN)/pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory clients-test

# Re-resolve the lock after a change to a pyproject.toml, keeping every pin that still fits;
# `make lock UPGRADE=1` moves every package to its newest allowed release instead. The dev lock holds
# the broker's extras, the client's and the emulator's dependencies (the broker itself, which the
# emulator requires, is installed from this tree: not pinned); the image's lock holds only what the
# broker needs at run time (no extras, no emulator).
lock: $(STAMP)
	$(UV_COMPILE) $(if $(UPGRADE),--upgrade) --extra dev --extra dashboard \
	  --no-emit-package credential-broker -o $(LOCK) \
	  pyproject.toml clients/python/pyproject.toml emulator/pyproject.toml requirements/build.in
	$(UV_COMPILE) -c $(LOCK) -o requirements/broker.txt pyproject.toml requirements/build.in
	@echo "lock written: $(LOCK) (development and CI), requirements/broker.txt (the image)"

# Not part of `make test` or CI: a throw-away venv with the newest releases that pyproject allows,
# then the drift from the lock, lint and the fast suite, so a new release is met on a day of our
# choosing. A failure here is a reason to fix and then `make lock UPGRADE=1`, not a broken main.
LATEST := .venv-latest
test-latest: redis-server
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade -e '.[dev,dashboard]' -e 'clients/python[dev]' \
	  -e emulator
	$(LATEST)/bin/python scripts/lock_drift.py $(LOCK) $(LATEST)/bin/python
	$(MAKE) --no-print-directory VENV=$(LATEST) lint-checks
	$(LATEST)/bin/pytest -m 'not slow' $(PYTEST_ARGS)

# Everything except the slow load/fault/topology tests.
test-fast: $(STAMP) redis-server
	$(BIN)/pytest -m 'not slow' $(PYTEST_ARGS)

# redis-server (above) also installs h2load, the load generator.
bench: $(STAMP) redis-server
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.watch_streams --streams 10000
	$(BIN)/python -m bench.workers
	$(BIN)/python -m bench.cold_fleet

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# ---- Clients: clients/python, clients/node, clients/go (each tested against a real broker) ------
#   make clients        regenerate every client's stubs from proto/
#   make clients-check  regenerate into a temp dir; fail if the committed stubs are stale
#   make clients-lint   ruff + mypy --strict + pyright --verifytypes; tsc --noEmit; gofmt + go vet
#   make clients-test   install what the clients need (apt, npm ci, pip), then run their tests
# Go builds offline from Debian's packaged sources (clients/go/scripts/go-offline; no module proxy).
# golang-github-golang-protobuf-1-5-dev is installed after the rest on purpose: it replaces the 1.3
# version golang-google-grpc-dev pulls in, with which the Go client panics on the first response.
CLIENTS_APT := golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc \
	golang-google-grpc-dev golang-google-protobuf-dev
CLIENTS_APT_AFTER := golang-github-golang-protobuf-1-5-dev
CLIENTS_PY_STAMP := $(VENV)/.clients-python-stamp
CLIENTS_NODE := clients/node
CLIENTS_NODE_STAMP := $(CLIENTS_NODE)/node_modules/.package-lock.json
CLIENTS_BROKER_BIN := $(CURDIR)/$(BIN)/credential-broker
CLIENTS_PYTEST_ARGS ?=

.PHONY: clients clients-check clients-lint clients-test clients-tools clients-clean

clients-tools:
	@missing=$$(for p in $(CLIENTS_APT) $(CLIENTS_APT_AFTER); do \
	  dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q ' installed$$' || echo "$$p"; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "client toolchains missing ($$(echo $$missing)); installing them with apt-get"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CLIENTS_APT) >/dev/null; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CLIENTS_APT_AFTER) >/dev/null; \
	fi

$(CLIENTS_NODE_STAMP): $(CLIENTS_NODE)/package.json $(CLIENTS_NODE)/package-lock.json
	cd $(CLIENTS_NODE) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The main install already holds the client (editable) and its locked development tools.
$(CLIENTS_PY_STAMP): $(STAMP)
	@touch $@

clients: $(STAMP) clients-tools $(CLIENTS_NODE_STAMP)
	clients/python/scripts/gen-proto
	clients/node/scripts/gen-proto
	clients/go/scripts/gen-proto

clients-check: $(STAMP) clients-tools $(CLIENTS_NODE_STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	clients/python/scripts/gen-proto "$$tmp/python"; \
	clients/node/scripts/gen-proto "$$tmp/node"; \
	clients/go/scripts/gen-proto "$$tmp/go"; \
	stale=""; \
	for pair in "python clients/python/src/credential_broker_client/_proto" \
	            "node clients/node/src/gen" "go/credentialbrokerv1 clients/go/credentialbrokerv1"; do \
	  set -- $$pair; \
	  if ! diff -r -x __pycache__ "$$tmp/$$1" "$$2" >"$$tmp/diff"; then \
	    head -40 "$$tmp/diff"; stale="$$stale $$2"; \
	  fi; \
	done; \
	if [ -n "$$stale" ]; then \
	  echo "client stubs are stale:$$stale; run 'make clients' and commit the result"; exit 1; \
	fi; echo "client stubs are current"

clients-lint: $(CLIENTS_PY_STAMP) clients-tools $(CLIENTS_NODE_STAMP)
	$(BIN)/ruff format --check clients/python
	$(BIN)/ruff check clients/python
	cd clients/python && ../../$(BIN)/mypy --strict
	cd clients/python && PATH="$(CURDIR)/$(BIN):$$PATH" pyright --verifytypes credential_broker_client --ignoreexternal >/dev/null
	cd $(CLIENTS_NODE) && npm run --silent lint
	@unformatted=$$(gofmt -l clients/go); \
	if [ -n "$$unformatted" ]; then echo "gofmt: $$unformatted"; exit 1; fi
	clients/go/scripts/go-offline vet ./...

clients-test: $(CLIENTS_PY_STAMP) clients-tools $(CLIENTS_NODE_STAMP)
	cd clients/python && PYTHONPATH=$(CURDIR)/tests ../../$(BIN)/pytest -p skip_guard $(CLIENTS_PYTEST_ARGS)
	cd $(CLIENTS_NODE) && CREDENTIAL_BROKER_BIN=$(CLIENTS_BROKER_BIN) npm test --silent
	CREDENTIAL_BROKER_BIN=$(CLIENTS_BROKER_BIN) clients/go/scripts/go-offline test -count=1 ./...

clients-clean:
	rm -rf $(CLIENTS_NODE)/node_modules $(CLIENTS_NODE)/dist $(CLIENTS_PY_STAMP)
