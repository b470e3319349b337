# Two entry points for a fresh clone (see README): `make run` and `make test`.
# Both build .venv on first use; torch is pinned to its CPU build so pip never pulls CUDA.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
# The official OFA assets; CI and this workplace keep them beside the repo.
export OFA2_EDGE_ASSETS ?= $(abspath ../shared/ofa_assets)

.PHONY: run test lint system-deps clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-deps: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q "$(TORCH)" -e .
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q "$(TORCH)" -e ".[test,tflite]"
	touch $@

run: $(VENV)/.run-deps
	$(BIN)/ofa2-edge run

system-deps:
	bash scripts/install-system-deps

test: system-deps $(VENV)/.test-deps
	$(BIN)/python -m pytest

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
