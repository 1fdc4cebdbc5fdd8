# `make repro` runs the pipeline; `make test` runs the tests. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: repro test params

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -r requirements.txt
	touch $@

repro: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest

# Rewrite params.yaml as the default composition of conf/ (after editing a preset there).
params: $(VENV)/.installed
	$(BIN)/python -m stages.params --compose > /dev/null
