# credential-broker: one entry point for every developer and CI task.
#   make run    install into .venv and start the broker wired to a local control-plane emulator
#   make test   install, check generated code and lint, and run the whole test suite
#   make bench  print throughput figures (broker vs. an echo server on the same stack)

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

.PHONY: help install run test test-fast lint proto check-generated bench redis-server clean

help:
	@echo "make run | make test | make lint | make proto | make bench | make clean"

$(STAMP): pyproject.toml
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  echo "python venv support is missing; installing python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/credential-broker dev

# The suite starts its own throw-away redis-server processes on free loopback ports (or uses
# REDIS_URL when set); the binary is installed here when the machine lacks it.
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1 && [ -z "$${REDIS_URL:-}" ]; then \
	  echo "redis-server not found; installing it with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq redis-server; \
	  systemctl disable --now redis-server >/dev/null 2>&1 || true; \
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

lint: $(STAMP)
	$(BIN)/ruff format --check broker tests
	$(BIN)/ruff check broker tests
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code proto

test: $(STAMP) redis-server check-generated lint
	$(BIN)/pytest $(PYTEST_ARGS)

# Everything except the slow load/fault/topology tests.
test-fast: $(STAMP) redis-server
	$(BIN)/pytest -m 'not slow' $(PYTEST_ARGS)

bench: $(STAMP) redis-server
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
