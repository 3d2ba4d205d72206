# c3dfeat developer commands. `make install` then `make test` is the whole set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REF_VENV ?= .venv-ref
ARGS ?=

.PHONY: install test test-slow test-parity lint bench check-import clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build.
install: $(BIN)/python
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[test,ray,lint]"

test:
	$(BIN)/python -m pytest -m "not parity and not slow" $(ARGS)

test-slow:
	$(BIN)/python -m pytest -m "slow" $(ARGS)

# Parity with torchvision / pytorchvideo: they need torch 2.14.1 (PyPI's torchvision does not import beside 2.13.0).
$(REF_VENV)/bin/python:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install --quiet --upgrade pip

test-parity: $(REF_VENV)/bin/python
	$(REF_VENV)/bin/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(REF_VENV)/bin/pip install -e ".[test]" "pytorchvideo==0.1.5"
	# Only the parity module: the others (e.g. the Ray tests, whose extra this venv lacks) would be
	# reported as skipped, and a parity run shows no skip (a missing reference fails).
	$(REF_VENV)/bin/python -m pytest -m parity tests/test_parity.py $(ARGS)

# ruff and mypy settings live in pyproject.toml.
lint:
	$(BIN)/ruff check c3dfeat scripts tests
	$(BIN)/mypy c3dfeat

check-import:
	$(BIN)/python -c "import c3dfeat; print(len(c3dfeat.list_models()), 'models')"

bench:
	$(BIN)/python scripts/bench_models.py
	$(BIN)/python scripts/bench_extract.py
	$(BIN)/python scripts/bench_eval.py
	$(BIN)/python scripts/bench_cli.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
