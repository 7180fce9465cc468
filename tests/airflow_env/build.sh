#!/usr/bin/env bash
# Creates .venv-airflow at the repository root: a virtual environment of its own holding Apache Airflow
# (3.x) and the providers deploy/airflow/loader_dag.py needs, installed only from the pinned, hashed
# tests/airflow_env/requirements.txt. tests/integration/test_airflow_dag.py imports the DAG with it.
# Does nothing when the environment is there and newer than the requirements file (a stamp file);
# otherwise builds it from scratch, so it never keeps packages a previous requirements file had.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=.venv-airflow
REQ=tests/airflow_env/requirements.txt
INSTALLER=deploy/installer.lock
STAMP=$VENV/.installed-stamp
HINT="it downloads from PyPI: check the network (or PIP_INDEX_URL / a proxy) and run it again"

if [[ -f $STAMP && ! $REQ -nt $STAMP && ! $INSTALLER -nt $STAMP ]] && "$VENV/bin/python" -c "" 2>/dev/null; then
    exit 0
fi
echo "building $VENV from $REQ (half a minute or so)" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# The pinned installer first: the pip the interpreter bundles (23.2.1 in 3.11.7) refuses this lock in hash
# mode (it does not match the extra `uvicorn[standard]` to the pinned uvicorn); pip 26 does.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$INSTALLER" \
    || { echo "build.sh: installing the pinned installer ($INSTALLER) into $VENV failed; $HINT" >&2; exit 1; }
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$REQ" \
    || { echo "build.sh: installing $REQ into $VENV failed; $HINT" >&2; exit 1; }
touch "$STAMP"
