# `make demo` and `make test` create .venv and install the package on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The demo needs the core only; the tests also run the optional integrations (transformers, lm-eval,
# the server).
$(BIN)/lrt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e .
	touch $@

$(VENV)/.test-extras: $(BIN)/lrt
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test,hf,eval,serve]"
	touch $@

.PHONY: demo test
demo: $(BIN)/lrt
	$(BIN)/lrt demo

test: $(VENV)/.test-extras
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest
