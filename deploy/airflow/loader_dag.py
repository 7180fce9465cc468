"""Airflow DAG: one incremental run of the loader every 15 minutes, its exit code mapped to Airflow's
outcomes (copy this file into the DAGs folder of an Airflow 2.7+ or 3.x deployment whose workers have
the loader installed, and on Airflow 3 apache-airflow-providers-standard for the PythonOperator; or swap
the PythonOperator for a KubernetesPodOperator on the loader image).

    exit 0  success
    exit 1  the run failed, its checkpoint did not move      -> retry (the retry replays the same run)
    exit 2  configuration or usage error                     -> fail now, no retries: fix the config
    exit 3  another run holds the pipeline's lease           -> skipped: that run is doing the work

The mapping (`outcome`) imports nothing from Airflow, so it is tested without it
(tests/unit/test_deploy.py checks it against the loader's own exit codes);
tests/integration/test_airflow_dag.py loads this file with Airflow's own DagBag (Airflow 3, from
tests/airflow_env/requirements.txt) and runs the task's callable against a stand-in loader for each
exit code.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from datetime import datetime, timedelta

LOADER = os.environ.get("LOADER_BIN", "loader")
OUTCOMES = {0: "success", 1: "retry", 2: "fail", 3: "skip"}


def outcome(exit_code: int) -> str:
    """What Airflow does with the loader's exit code; anything unknown (a kill, a crash) is retried."""
    return OUTCOMES.get(exit_code, "retry")


def run_loader(*args: str) -> None:
    """Run the loader and turn its exit code into the task's outcome."""
    try:  # Airflow 3: the task runner catches the Task SDK's (airflow.exceptions' are deprecated aliases)
        from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
    except ImportError:  # Airflow 2
        from airflow.exceptions import AirflowException, AirflowFailException, AirflowSkipException

    done = subprocess.run([LOADER, *args], capture_output=True, text=True, check=False)
    print(done.stderr[-20_000:])  # the loader logs to stderr; the task log keeps the tail
    decision = outcome(done.returncode)
    if decision == "skip":
        raise AirflowSkipException(f"loader exit 3: another run holds the lease\n{done.stderr[-2000:]}")
    if decision == "fail":
        raise AirflowFailException(f"loader exit 2: configuration error, not retried\n{done.stderr[-2000:]}")
    if decision == "retry":
        raise AirflowException(
            f"loader exit {done.returncode}: failed, will be retried\n{done.stderr[-2000:]}")


# Only a missing Airflow is tolerated (the unit tests import this file for `outcome`): any other import error
# must surface in Airflow as this file's import error, not as a DAG that silently vanished.
if importlib.util.find_spec("airflow") is None:
    DAG = None
else:
    try:  # Airflow 3: the DAG comes from the Task SDK, PythonOperator from the standard provider
        from airflow.providers.standard.operators.python import PythonOperator
        from airflow.sdk import DAG
    except ImportError:  # Airflow 2.7+
        from airflow import DAG
        from airflow.operators.python import PythonOperator

if DAG is not None:
    with DAG(
        dag_id="loader_incremental",
        schedule=timedelta(minutes=15),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # like concurrencyPolicy: Forbid; the lease guards the rest
        default_args={"retries": 3, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
        tags=["loader"],
    ) as dag:
        PythonOperator(task_id="incremental", python_callable=run_loader, op_args=["run", "--incremental"],
                       execution_timeout=timedelta(hours=1))
