# Developer and CI entry points. `make test` is what .ci/run calls.
PYTHON ?= python3
VENV ?= .venv
PIP_FLAGS ?= --progress-bar off --disable-pip-version-check
PYTEST_ARGS ?=
UP_ARGS ?=
# Reinstalls only when pyproject.toml changes; torch then comes from pip's cache.
INSTALL_STAMP := $(VENV)/.ccd-install-stamp

.PHONY: install up test services lint format sample

install: $(INSTALL_STAMP)

$(INSTALL_STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

# The embedded default: trainer and server on one machine, nothing else needed.
up: install
	$(VENV)/bin/ccd up $(UP_ARGS)

# Regenerates examples/synthetic-interactions.csv (the README's `--data` example) from the
# project's synthetic generator.
sample: install
	$(VENV)/bin/python scripts/make_sample.py

# The whole suite against a real Kafka broker and redis-server started (and stopped) for it.
test: install
	$(VENV)/bin/python scripts/test_services.py -- $(PYTEST_ARGS)

# Real Kafka and Redis for running tests by hand; prints the CCD_TEST_* exports, Ctrl-C stops.
services: install
	$(VENV)/bin/python scripts/test_services.py --hold

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
