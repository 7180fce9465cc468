# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run   - create .venv if needed, install, make a demo landing zone if none, run an incremental load
#   make test  - create .venv if needed, install, run the whole test suite (real services included)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= configs/local.yaml

.PHONY: run test test-fast soak lint bench clean-data chromium airflow-env lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The exact versions the suite passed with, each file checked against its hash (requirements.lock; `make
# lock` refreshes it). Then the project itself, with nothing more: `pip check` fails if pyproject.toml
# asks for something the lock lacks. Compat mode puts the project folder on sys.path: Ray workers then
# import our `state` package even when started from a folder that holds an unrelated `state/` directory.
$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@$(BIN)/python -m pip check || (echo "pyproject.toml and requirements.lock disagree: run \`make lock\`" >&2; exit 1)
	touch $(STAMP)

# Refresh the locks (requirements.lock, deploy/image.lock, tests/airflow_env/requirements.txt) after
# changing pyproject.toml's dependencies or requirements.in: pins already in a lock are
# kept where they still fit; `make lock UPGRADE=1` moves every pin to the newest release allowed. Run
# `make test` before committing the new lock.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
		$(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" --quiet -o requirements.lock
	# the image's (deploy/Dockerfile): the loader with the extras a deployment needs, at the same versions
	$(BIN)/uv pip compile pyproject.toml --extra postgres --extra snowflake --universal --python-version 3.11 \
		--generate-hashes -c requirements.lock --custom-compile-command "make lock" --quiet -o deploy/image.lock
	# Airflow's, for the DAG's test (.venv-airflow: its dependencies do not mix with ours)
	$(BIN)/uv pip compile tests/airflow_env/requirements.in --universal --python-version 3.11 --generate-hashes \
		$(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" --quiet -o tests/airflow_env/requirements.txt

run: $(STAMP)
	$(BIN)/loader --config $(CONFIG) demo-data init --if-missing --scale 0.1
	$(BIN)/loader --config $(CONFIG) run --incremental

# The HTML report's test renders it in Debian's headless Chromium (installed here if missing; root needed).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) || echo "could not install chromium: the report's browser test will be skipped"

# Airflow 3 in its own venv, for tests/integration/test_airflow_dag.py (a no-op while up to date)
airflow-env:
	PYTHON=$(PYTHON) bash tests/airflow_env/build.sh

test: $(STAMP) chromium airflow-env
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
