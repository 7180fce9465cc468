#!/usr/bin/env bash
# Regenerates tests/airflow_env/requirements.txt (pinned, with hashes, for every platform) from
# requirements.in, with uv installed into a throwaway virtual environment that is removed afterwards.
# Run it when requirements.in changes or to move to a newer Airflow; then `bash tests/airflow_env/build.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TOOL=$(mktemp -d)
trap 'rm -rf "$TOOL"' EXIT
"$PYTHON" -m venv "$TOOL/venv"
"$TOOL/venv/bin/python" -m pip install --quiet "uv==0.13.9"
UV_CACHE_DIR="$TOOL/cache" "$TOOL/venv/bin/uv" pip compile --quiet --generate-hashes --universal \
    --python-version 3.11 --custom-compile-command \
    "bash tests/airflow_env/compile.sh  # = uv pip compile --generate-hashes --universal --python-version 3.11 tests/airflow_env/requirements.in" \
    tests/airflow_env/requirements.in -o tests/airflow_env/requirements.txt
