# make venv | make run | make test | make lint      (targets create .venv on first use)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv run test test-fast lint clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build first: a bare "torch" requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,nifti]"
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/python -m studies.prune_sweep

# Tests run in one pytest-xdist worker per core (one torch thread each, tests/conftest.py),
# a test file per worker at a time so module fixtures are built once. A crashed worker ends the
# run (xdist's restarted worker hung with --dist loadfile), and a test that runs longer than
# pyproject's `timeout` fails instead of holding CI. (The OpenVINO tests ran in a process of
# their own until the crash they caused was found: compress/sigstack.py.)
XDIST := -n auto --maxprocesses 4 --dist loadfile --max-worker-restart 0

test: venv
	$(BIN)/python -m pytest -q $(XDIST)

test-fast: venv
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

lint: venv
	$(BIN)/ruff check unet compress studies tests
	$(BIN)/ruff format --check unet compress studies tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
