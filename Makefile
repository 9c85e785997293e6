# The two commands a new user runs: `make demo` and `make test` (`make test-fast` while editing).
# Both build ./.venv from scratch when it is missing and refresh it when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UNAME  := $(shell uname -s)
# A pinned CPU build of torch: an open range would pull a multi-GB CUDA wheel on Linux.
ifeq ($(UNAME),Linux)
TORCH  ?= torch==2.13.0
else
TORCH  ?= torch
endif
PYTEST_ARGS ?=
# What `make lint` holds to `ruff format` (the whole tree since the reformat after the restructure).
FORMATTED ?= .
BENCH_ARGS ?=

.PHONY: demo test test-fast lint typecheck venv clean bench rules-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Runtime + torch (the demo builds its sample checkpoint with torch; the conversion itself never imports it).
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e . "$(TORCH)"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $@ $(VENV)/.dev-installed

venv: $(VENV)/.dev-installed

demo: $(VENV)/.demo-installed
	$(BIN)/python examples/demo.py

# Lint, then types, then the whole suite: the first failure fails the target.
test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tests only (no tests marked slow): under a minute.
test-fast: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check $(FORMATTED)

# What is checked, and what is not yet, is in pyproject.toml [tool.mypy].
typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

# The registered architectures' rules kept as data (torch2mlx/analysis/known_rules.json), from the analyzer.
rules-data: $(VENV)/.dev-installed
	$(BIN)/python -m torch2mlx.analysis.known_gen

# Benchmarks (bench/README.md): a few GB of checkpoints in bench/data, results in bench/results.md.
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
