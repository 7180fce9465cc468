# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run   - create .venv if needed, install, make a demo landing zone if none, run an incremental load
#   make test  - create .venv if needed, install, run the whole test suite (real services included)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= configs/local.yaml
# The installer every environment is built with, pinned (deploy/installer.lock, with hashes): the pip an
# interpreter bundles only installs this one, so no outcome depends on which 3.11.x built the venv.
INSTALLER := pip==26.3
INSTALLER_LOCK := deploy/installer.lock
NETWORK_HINT := it downloads from PyPI: check the network (or PIP_INDEX_URL / a proxy) and run make again

.PHONY: run test test-fast soak lint docs bench clean-data chromium airflow-env lock python-check

# Python 3.11 is what the locks were made for; anything else stops here with the way out.
python-check:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
		echo "make: this project needs Python 3.11; PYTHON='$(PYTHON)' is $$($(PYTHON) --version 2>/dev/null || echo "not there")." >&2; \
		echo "      Install it (pyenv install 3.11, apt-get install python3.11-venv, ...) and run make again," >&2; \
		echo "      or point make at one: make test PYTHON=/path/to/python3.11" >&2; exit 1; }

$(BIN)/python: | python-check
	$(PYTHON) -m venv $(VENV) || { echo "make: '$(PYTHON) -m venv' failed: install the venv module (Debian: apt-get install python3.11-venv)" >&2; rm -rf $(VENV); exit 1; }

# The exact versions the suite passed with, each file checked against its hash (requirements.lock; `make
# lock` refreshes it). Then the project itself, with nothing more: `pip check` fails if pyproject.toml
# asks for something the lock lacks. Compat mode puts the project folder on sys.path: Ray workers then
# import our `state` package even when started from a folder that holds an unrelated `state/` directory.
$(STAMP): pyproject.toml requirements.lock $(INSTALLER_LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r $(INSTALLER_LOCK) \
		|| { echo "make: installing the pinned installer ($(INSTALLER)) into $(VENV) failed; $(NETWORK_HINT)" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock \
		|| { echo "make: installing requirements.lock into $(VENV) failed; $(NETWORK_HINT)" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@$(BIN)/python -m pip check || (echo "pyproject.toml and requirements.lock disagree: run \`make lock\`" >&2; exit 1)
	touch $(STAMP)

# Refresh the locks (deploy/installer.lock, requirements.lock, deploy/image.lock, tests/airflow_env/requirements.txt) after
# changing pyproject.toml's dependencies or requirements.in: pins already in a lock are
# kept where they still fit; `make lock UPGRADE=1` moves every pin to the newest release allowed. Run
# `make test` before committing the new lock.
lock: $(STAMP)
	echo "$(INSTALLER)" | $(BIN)/uv pip compile - --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" --quiet -o $(INSTALLER_LOCK)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
		$(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" --quiet -o requirements.lock
	# the image's (deploy/Dockerfile): the loader with the extras a deployment needs, at the same versions
	$(BIN)/uv pip compile pyproject.toml --extra postgres --extra snowflake --extra iceberg --universal --python-version 3.11 \
		--generate-hashes -c requirements.lock --custom-compile-command "make lock" --quiet -o deploy/image.lock
	# Airflow's, for the DAG's test (.venv-airflow: its dependencies do not mix with ours)
	$(BIN)/uv pip compile tests/airflow_env/requirements.in --universal --python-version 3.11 --generate-hashes \
		$(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" --quiet -o tests/airflow_env/requirements.txt

run: $(STAMP)
	$(BIN)/loader --config $(CONFIG) demo-data init --if-missing --scale 0.1
	$(BIN)/loader --config $(CONFIG) run --incremental

# The HTML report's test renders it in Debian's headless Chromium (installed here if missing; root needed).
# Without it (no apt, not root) the browser test is skipped and named in the summary; under CI=true that
# skip fails the suite, so CI stops here instead, saying why.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) || { \
		if [ "$$CI" = true ]; then echo "make: could not install Debian's chromium (apt-get, as root), which CI's browser test needs" >&2; exit 1; fi; \
		echo "make: could not install chromium: the report's browser test will be skipped (install Debian's chromium to run it)" >&2; }

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
	@# the docs build without a warning (--strict), into a temp folder removed after
	@site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $$site; status=$$?; rm -rf $$site; exit $$status

# The documentation site (docs/, mkdocs.yml) in site/: open site/index.html, or `$(BIN)/mkdocs serve`.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py

clean-data:
	rm -rf data
