# Two commands on a fresh machine: `make run` and `make test`.
# Each creates .venv when missing, installs the project with its test extras, then runs.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Reinstall whenever pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: run test lint bench bench-deps manifests system-deps clean install

run: $(STAMP)
	$(BIN)/broker dev

test: lint system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

LINT_DIRS := $(wildcard broker tests bench k8s/render.py)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/mypy

# The benchmark table of issue #10 (bench/README.md). BENCH_ARGS="--quick" for a smoke run.
# py-spy (for `python -m bench.profile`) is a bench-only tool: installed here, not in the extras.
BENCH_ARGS ?=

bench: $(STAMP) bench-deps
	@test -x $(BIN)/py-spy || $(BIN)/pip install --quiet py-spy
	$(BIN)/python -m bench $(BENCH_ARGS)

# wrk drives the HTTPS bearer rows (apt, like redis-server for the tests).
bench-deps:
	@command -v wrk >/dev/null 2>&1 || { echo "installing wrk (apt)"; $(call APT_INSTALL,wrk); }

manifests: $(STAMP)
	$(BIN)/python k8s/render.py

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	rm -f $(VENV)/.installed-*
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# What the tests run for real: redis-server and PostgreSQL (started as processes by the
# tests), jq (third-party audit verification). Installed with apt when missing.
APT_INSTALL = $(SUDO) apt-get install -y -qq $(1) >/dev/null 2>&1 || \
	{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(1); }

system-deps:
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server (apt)"; $(call APT_INSTALL,redis-server); }
	@command -v jq >/dev/null 2>&1 || { echo "installing jq (apt)"; $(call APT_INSTALL,jq); }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "installing postgresql (apt)"; $(call APT_INSTALL,postgresql); }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
