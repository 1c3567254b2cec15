# One-command set-up: every target creates the virtual environment it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run test test-all lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch pinned to the CPU build for this project's machines (the package itself accepts >=2.2).
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

venv: $(STAMP)

## The main job on the built-in default: train the example CNN on scikit-learn's digits
## with seed layers and the heuristic controller, then verify the run's log.
run: $(STAMP)
	rm -f runs/default.db runs/default.db.*
	$(VENV)/bin/esper-es train --db runs/default.db
	$(VENV)/bin/esper-es verify runs/default.db

## Lint, types and the fast test suite (what CI runs).
test: $(STAMP)
	$(PY) -m ruff check esper_es tests bench
	$(PY) -m ruff format --check esper_es tests bench
	$(PY) -m mypy
	$(PY) -m pytest -q -n 2

## Everything, slow checks included.
test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "slow or not slow"

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
