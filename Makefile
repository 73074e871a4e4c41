# `make demo` and `make test` create .venv and install the package on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/lrt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test]"
	touch $@

.PHONY: demo test
demo: $(BIN)/lrt
	$(BIN)/lrt demo

test: $(BIN)/lrt
	$(BIN)/python -m pytest
