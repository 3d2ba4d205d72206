# c3dfeat developer commands. `make install` then `make test` is the whole set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REF_VENV ?= .venv-ref
ARGS ?=

.PHONY: install test test-slow test-parity lint bench check-import clean device-wheels

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned first to the tested release (an unpinned one would pull the newest); which build
# comes is pip's choice: a local CPU wheel where pip has one, else PyPI's (CUDA 13.0 on Linux x86_64).
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

# For a GPU machine without network (scripts/device_gpu.sh): its own python3 has a CUDA torch;
# what it lacks (PyAV) goes there as wheels in .whl/, for its Python version, the same release as here.
DEVICE_PYTHON ?= 3.12
device-wheels:
	rm -rf .whl && $(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version $(DEVICE_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl "av==$$($(BIN)/python -c 'import av; print(av.__version__)')"
	ls -l .whl

clean:
	rm -rf build dist *.egg-info .pytest_cache
