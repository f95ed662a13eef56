# Two commands do all the set-up on a fresh machine:
#   make demo   install into .venv, run the quickstart sweep, print the comparison table
#   make test   install into .venv (with the dev extra), lint, run the test suite
# and, for the paper studies' claims at CI size (minutes; CI runs both):
#   make studies
#
# TORCH pins the torch build the venv starts from. 2.13.0 is the CPU wheel on the
# development machines' disk (pip takes it from there in seconds); elsewhere pip
# fetches the same release for your platform (CUDA on Linux). Override freely:
#   make demo TORCH='torch==2.5.1'      or      make demo TORCH=torch
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test studies bench clean

$(BIN)/gradlab: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/gradlab
	$(BIN)/gradlab run configs/quickstart.yaml

test: $(BIN)/gradlab
	$(BIN)/ruff check gradlab tests
	$(BIN)/pytest -m "not study"

studies: $(BIN)/gradlab
	$(BIN)/pytest -m study

bench: $(BIN)/gradlab
	$(BIN)/gradlab bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
