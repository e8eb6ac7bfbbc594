# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint install install-dev install-bench bench s3-server clean

$(BIN)/python:
	@echo "Creating a virtual environment in $(VENV) and updating pip..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files: reinstall only when a requirements file changes. pip is quiet for minutes on a
# first install: say what is happening first.
$(VENV)/.installed: requirements.txt | $(BIN)/python
	@echo "Installing the service's packages (requirements.txt) into $(VENV); the first time takes a few minutes..."
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	@echo "Installing the service's packages and the test tools (requirements-dev.txt) into $(VENV); the first time takes a few minutes..."
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

# Optional: what the benchmarks in bench/ need (photo sets, pHash).
install-bench: $(VENV)/.installed-dev
	@echo "Installing what the benchmarks need (requirements-bench.txt) into $(VENV)..."
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt

install-dev: $(VENV)/.installed-dev

# The server is make's own child (no shell between them), so a SIGTERM to make reaches it.
# Ctrl-C reaches make and the server alike; the server's status after it is 0, which make does
# not report with a "make: *** ... Error 130" line, and make then ends as interrupted.
run: install
	@$(BIN)/python -m app serve --ctrl-c-status 0

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
