# Two commands set everything up on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make run    start the registry on 127.0.0.1:5000 with data in ./data
#   make test   install what the tests need, lint (ruff, mypy) and run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LISTEN ?= 127.0.0.1:5000
DATA   ?= ./data
# Debian packages the real-client tests drive (installed only when running as root and missing).
TEST_APT_PACKAGES := skopeo docker-registry docker.io debootstrap podman amazon-ecr-credential-helper curl iproute2 postgresql nginx-light chromium chromium-driver valgrind
PYTEST_ARGS ?=

.PHONY: install install-test system-deps run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

system-deps:
	@missing=""; \
	for p in $(TEST_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "not root: tests that need$$missing will skip"; \
	fi

run: install
	$(BIN)/moorage serve --listen $(LISTEN) --data-dir $(DATA)

# Two processes (pytest-xdist), each running whole test files: the suite mostly waits on servers and clients, so
# this halves its time on two cores. A line per test as it finishes (-v). TEST_JOBS=0 runs it in one process.
# The lint runs first; if it fails, no test runs.
TEST_JOBS ?= 2
test: lint system-deps
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile -v) $(PYTEST_ARGS)

# ruff (lint and format) and mypy (its settings, and which modules are strict, are in pyproject.toml).
lint: install-test
	$(BIN)/ruff check registry storage tests bench
	$(BIN)/ruff format --check registry storage tests bench
	$(BIN)/mypy

bench: install-test
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
