# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run   - create .venv if needed, install, make a demo landing zone if none, run an incremental load
#   make test  - create .venv if needed, install, run the whole test suite (real services included)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= configs/local.yaml

.PHONY: run test test-fast soak lint bench clean-data chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	# compat mode puts the project folder on sys.path: Ray workers then import our `state` package
	# even when started from a folder that holds an unrelated `state/` directory.
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/loader --config $(CONFIG) demo-data init --if-missing --scale 0.1
	$(BIN)/loader --config $(CONFIG) run --incremental

# The HTML report's test renders it in Debian's headless Chromium (installed here if missing; root needed).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) || echo "could not install chromium: the report's browser test will be skipped"

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadgroup  # two workers (most tests wait on subprocesses and lease expiry); xdist_group keeps a module on one

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

soak: $(STAMP)
	SOAK_KILLS=24 $(BIN)/python -m pytest -q tests/integration/test_soak.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py

clean-data:
	rm -rf data
