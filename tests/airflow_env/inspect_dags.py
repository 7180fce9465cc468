"""Run with .venv-airflow/bin/python (tests/integration/test_airflow_dag.py does): loads a DAG folder with
Airflow's own DagBag, round-trips each DAG through Airflow's serializer (what the scheduler sees), runs each
PythonOperator's callable against a stand-in loader once per exit code, and writes one JSON report.

    python inspect_dags.py DAG_FOLDER STUB_LOADER OUT_JSON

The stand-in (STUB_LOADER, also the DAG's LOADER_BIN) exits with $STUB_EXIT (or kills itself with -9 when
it is "kill") and appends its arguments, one JSON line per call, to $STUB_ARGS. Nothing here asserts: the
test does, in its own interpreter.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from datetime import timedelta
from typing import Any

EXIT_CASES = {"0": 0, "1": 1, "2": 2, "3": 3, "kill": -9, "42": 42}


def _seconds(value: Any) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def _outcome_of_callable(task: Any, stub_args: str) -> dict[str, Any]:
    """Call the task's python_callable once per loader exit code and classify what it raises the way
    Airflow 3's task runner does (airflow.sdk.execution_time.task_runner catches the Task SDK's exceptions in
    this order: skipped, failed without retry, anything else up for retry)."""
    from airflow.sdk import exceptions as sdk

    results: dict[str, Any] = {}
    for label, code in EXIT_CASES.items():
        os.environ["STUB_EXIT"] = label
        open(stub_args, "w").close()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # e.g. a deprecated import the callable makes when it runs
            try:
                task.python_callable(*task.op_args, **task.op_kwargs)
                outcome, raised = "success", None
            except sdk.AirflowSkipException as e:
                outcome, raised = "skip", e
            except sdk.AirflowFailException as e:
                outcome, raised = "fail", e
            except Exception as e:  # sdk.AirflowException included
                outcome, raised = "retry", e
        with open(stub_args) as f:
            argv = [json.loads(line) for line in f if line.strip()]
        results[str(code)] = {
            "outcome": outcome,
            "exception": None if raised is None else f"{type(raised).__module__}.{type(raised).__qualname__}",
            "loader_argv": argv,
            "warnings": sorted({f"{w.filename}:{w.lineno}: {w.message}" for w in caught}),
        }
    return results


def _task(task: Any, serialized: Any, stub_args: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "operator": f"{type(task).__module__}.{type(task).__qualname__}",
        "operator_name": type(task).__name__,
        "upstream": sorted(task.upstream_task_ids),
        "downstream": sorted(task.downstream_task_ids),
        # as the scheduler sees them, after Airflow's serializer
        "retries": serialized.retries,
        "retry_delay_s": _seconds(serialized.retry_delay),
        "retry_exponential_backoff": _jsonable(serialized.retry_exponential_backoff),
        "execution_timeout_s": _seconds(serialized.execution_timeout),
    }
    for attr in ("bash_command", "cmds", "arguments", "image", "skip_on_exit_code", "op_args", "op_kwargs"):
        if hasattr(task, attr):
            info[attr] = _jsonable(getattr(task, attr))
    callable_ = getattr(task, "python_callable", None)
    if callable_ is not None:
        module_globals = callable_.__globals__
        info["python_callable"] = callable_.__name__
        info["loader_bin"] = module_globals.get("LOADER")
        info["declared_outcomes"] = {str(k): v for k, v in module_globals.get("OUTCOMES", {}).items()}
        info["callable_outcomes"] = _outcome_of_callable(task, stub_args)
    return info


def main(dag_folder: str, stub: str, out: str) -> None:
    os.environ["LOADER_BIN"] = stub  # read by the DAG file when DagBag imports it
    stub_args = os.environ["STUB_ARGS"]
    from airflow import __version__
    from airflow.dag_processing.dagbag import DagBag  # Airflow 3 (airflow.models.dagbag.DagBag in 2.x)
    from airflow.serialization.serialized_objects import DagSerialization

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=dag_folder)  # with the scheduler's own discovery rules (safe mode)
    report: dict[str, Any] = {
        "airflow_version": __version__,
        "import_errors": dict(bag.import_errors),
        "warnings": sorted({str(w) for ws in bag.captured_warnings.values() for w in ws}
                           | {f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                              if dag_folder in str(w.filename)}),
        "files": sorted(os.path.relpath(f, dag_folder) for f in bag.file_last_changed),
        "dags": {},
    }
    for dag_id, dag in sorted(bag.dags.items()):
        as_json = json.loads(json.dumps(DagSerialization.to_dict(dag)))
        serialized = DagSerialization.from_dict(as_json)
        report["dags"][dag_id] = {
            "fileloc": os.path.relpath(dag.fileloc, dag_folder),
            "schedule": _jsonable(_seconds(dag.schedule) or dag.schedule),
            # e.g. {"__type": "...DeltaTriggerTimetable", "__var": {"delta": 900.0}}
            "timetable": as_json["dag"]["timetable"],
            "timetable_summary": serialized.timetable.summary,
            "catchup": serialized.catchup,
            "max_active_runs": serialized.max_active_runs,
            "start_date": dag.start_date.isoformat() if dag.start_date else None,
            "tags": sorted(dag.tags),
            "tasks": {t.task_id: _task(t, serialized.get_task(t.task_id), stub_args) for t in dag.tasks},
        }
    with open(out, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
