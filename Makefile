# One-command set-up: every target creates the virtual environment it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run test test-all lint bench clean

$(STAMP): pyproject.toml
	@echo "make: creating $(VENV) (first time only: about 2 minutes)"
	python3 -m venv $(VENV)
	@echo "make: installing torch 2.13.0, CPU build (about a minute)"
	# torch pinned to the CPU build for this project's machines (the package itself accepts >=2.2).
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	@echo "make: installing esper-es with its dev and bench extras (about a minute)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,bench]"
	touch $(STAMP)
	@echo "make: $(VENV) is ready"

venv: $(STAMP)

## The main job on the built-in default: train the example CNN on scikit-learn's digits
## with seed layers and the heuristic controller, then verify the run's log. Each run gets
## its own file (earlier runs are kept: `esper-es runs` lists them).
run: $(STAMP)
	@db=runs/$$(date +%Y%m%d-%H%M%S)-make-run.db; \
	$(VENV)/bin/esper-es train --db $$db && $(VENV)/bin/esper-es verify $$db

## Lint, types and the fast test suite (what CI runs), then docs/tutorial.md run literally on a
## fresh copy of the checkout with its own venv (slow-marked, so plain `pytest` skips it).
test: $(STAMP)
	$(PY) -m ruff check esper_es tests bench
	$(PY) -m ruff format --check esper_es tests bench
	$(PY) -m mypy
	$(PY) -m pytest -q -n 2
	$(PY) -m pytest -q -m slow tests/docs/test_tutorial.py

## Everything, slow checks included.
test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "slow or not slow"

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
