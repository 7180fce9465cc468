"""deploy/airflow/loader_dag.py imported by Airflow itself, not only parsed: Airflow 3's DagBag loads the DAG
folder in .venv-airflow (its own virtual environment, pinned with hashes in
tests/airflow_env/requirements.txt, built by tests/airflow_env/build.sh), and
tests/airflow_env/inspect_dags.py reports, as JSON, what Airflow sees: the DAGs, their tasks, operators,
dependencies, schedule and retry options (after Airflow's serializer, as the scheduler sees them), and what
the task's callable raises for each loader exit code, against a stand-in loader. One subprocess for everything
(importing Airflow takes a second or two); every assertion is made here. AIRFLOW_HOME, HOME and TMPDIR point
into the test's tmp_path: nothing goes to ~/airflow or /tmp.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import click
import pytest

from loader import errors
from loader.cli import cli

# one xdist worker for the module: its fixture (the one Airflow subprocess) then runs once
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("airflow_dag")]

ROOT = Path(__file__).resolve().parents[2]
DAG_FOLDER = ROOT / "deploy" / "airflow"
AIRFLOW_VENV = ROOT / ".venv-airflow"
AIRFLOW_PYTHON = AIRFLOW_VENV / "bin" / "python"
REQUIREMENTS = ROOT / "tests" / "airflow_env" / "requirements.txt"
STAMP = AIRFLOW_VENV / ".installed-stamp"
INSPECT = ROOT / "tests" / "airflow_env" / "inspect_dags.py"

DAG_ID = "loader_incremental"
TASK_ID = "incremental"
# What Airflow must do with each of the loader's exit codes (README "Exit codes", loader/errors.py)
EXPECTED_OUTCOMES = {
    errors.EXIT_OK: "success",
    errors.EXIT_FAILED: "retry",  # the checkpoint did not move: the retry replays the same run
    errors.EXIT_USAGE: "fail",  # configuration error: fail now, retrying cannot help
    errors.EXIT_LEASE_HELD: "skip",  # another run holds the lease and is doing the work
}
UNKNOWN_EXIT_CODES = (-9, 42)  # killed, crashed: retried

# The stand-in for the `loader` command: exits with $STUB_EXIT ("kill": SIGKILL), records its arguments.
STUB = """#!{python}
import json, os, signal, sys
with open(os.environ["STUB_ARGS"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print("stand-in loader: exiting with", os.environ["STUB_EXIT"], file=sys.stderr)
if os.environ["STUB_EXIT"] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(os.environ["STUB_EXIT"]))
"""


def _airflow_venv_or_skip() -> None:
    build = "run `bash tests/airflow_env/build.sh` (`make test` builds it)"
    if not AIRFLOW_PYTHON.exists() or not STAMP.exists():
        pytest.skip(f"no Airflow environment at {AIRFLOW_VENV.name}/: {build}")
    if REQUIREMENTS.stat().st_mtime > STAMP.stat().st_mtime:
        pytest.skip(f"{AIRFLOW_VENV.name}/ is older than {REQUIREMENTS.relative_to(ROOT)}: {build}")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What Airflow sees in deploy/airflow, from one run of inspect_dags.py in .venv-airflow."""
    _airflow_venv_or_skip()
    work = tmp_path_factory.mktemp("airflow")
    for folder in ("airflow_home", "home", "tmp"):
        (work / folder).mkdir()
    stub = work / "loader-stub"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(work / "home"),  # nothing under the real ~ (no ~/airflow, no caches)
        "TMPDIR": str(work / "tmp"),  # nothing in /tmp
        "AIRFLOW_HOME": str(work / "airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # not AIRFLOW__CORE__UNIT_TEST_MODE: it swaps in Airflow's unit-test config, whose defaults (the
        # timetable a timedelta schedule becomes, for one) are not those of a real deployment
        "STUB_ARGS": str(work / "stub-args.jsonl"),
    }
    out = work / "report.json"
    system_tmp = Path(tempfile.gettempdir())
    tmp_before = set(os.listdir(system_tmp))
    home_airflow_existed = (Path.home() / "airflow").exists()
    done = subprocess.run([str(AIRFLOW_PYTHON), str(INSPECT), str(DAG_FOLDER), str(stub), str(out)],
                          env=env, cwd=work, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and out.exists(), f"inspect_dags.py failed:\n{done.stdout}\n{done.stderr}"
    new_in_tmp = {name for name in set(os.listdir(system_tmp)) - tmp_before if "airflow" in name.lower()}
    assert not new_in_tmp, f"Airflow wrote to {system_tmp}: {new_in_tmp}"
    assert home_airflow_existed or not (Path.home() / "airflow").exists(), "Airflow created ~/airflow"
    result: dict[str, Any] = json.loads(out.read_text())
    result["_stub"] = str(stub)
    print(json.dumps(result, indent=2))  # shown with -s, and on failure
    return result


def _task(report: dict[str, Any]) -> dict[str, Any]:
    return report["dags"][DAG_ID]["tasks"][TASK_ID]


def _parse_loader_command(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse argv as `loader` would (its click group, then the subcommand) without running anything: an
    unknown subcommand or option, or a missing required one, raises click.UsageError."""
    with cli.make_context("loader", list(argv)) as ctx:
        with warnings.catch_warnings():
            # Click 8.2+: protected_args folds into args in 9.0
            warnings.simplefilter("ignore", DeprecationWarning)
            tokens = [*getattr(ctx, "protected_args", []), *ctx.args]
        name, command, rest = cli.resolve_command(ctx, tokens)
        assert name is not None and command is not None
        with command.make_context(name, rest, parent=ctx) as sub:
            return name, dict(sub.params)


def test_airflow_imports_the_dag_folder_without_errors_or_warnings(report: dict[str, Any]) -> None:
    assert report["airflow_version"].startswith("3."), report["airflow_version"]
    assert report["import_errors"] == {}
    assert report["files"] == ["loader_dag.py"]
    # e.g. an import Airflow 3 deprecated: it breaks in the next major version
    assert report["warnings"] == []
    assert list(report["dags"]) == [DAG_ID]


def test_the_dag_runs_every_15_minutes_one_run_at_a_time(report: dict[str, Any]) -> None:
    dag = report["dags"][DAG_ID]
    assert dag["schedule"] == 15 * 60
    assert dag["timetable"]["__var"]["delta"] == 15 * 60  # as serialized for the scheduler
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert dag["tags"] == ["loader"]


def test_one_python_task_that_retries_with_backoff(report: dict[str, Any]) -> None:
    tasks = report["dags"][DAG_ID]["tasks"]
    assert list(tasks) == [TASK_ID]
    task = tasks[TASK_ID]
    assert task["operator"] == "airflow.providers.standard.operators.python.PythonOperator"
    assert task["upstream"] == [] and task["downstream"] == []
    assert task["python_callable"] == "run_loader"
    assert task["retries"] >= 1 and task["retry_delay_s"] == 120
    # Airflow 3 reads retry_exponential_backoff as a multiplier: 1 would be a constant delay
    assert task["retry_exponential_backoff"] > 1
    assert task["execution_timeout_s"] == 3600


def test_the_task_runs_a_valid_loader_command(report: dict[str, Any]) -> None:
    task = _task(report)
    assert task["loader_bin"] == report["_stub"]  # LOADER_BIN overrides the command, as the DAG documents
    name, params = _parse_loader_command(task["op_args"])
    assert name == "run" and params["incremental"] is True
    for case in task["callable_outcomes"].values():  # what the callable actually ran, once per case
        assert case["loader_argv"] == [task["op_args"]]


def test_without_loader_bin_the_dag_runs_the_loader_console_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOADER_BIN", raising=False)
    spec = importlib.util.spec_from_file_location("loader_dag_default", DAG_FOLDER / "loader_dag.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.LOADER == "loader"
    assert (Path(sys.executable).parent / "loader").exists()  # [project.scripts] installs it under that name


def test_the_declared_exit_code_mapping_is_the_loaders(report: dict[str, Any]) -> None:
    declared = {int(code): outcome for code, outcome in _task(report)["declared_outcomes"].items()}
    assert declared == EXPECTED_OUTCOMES


@pytest.mark.parametrize("code", [*EXPECTED_OUTCOMES, *UNKNOWN_EXIT_CODES])
def test_each_exit_code_becomes_the_right_airflow_outcome(report: dict[str, Any], code: int) -> None:
    """What the callable raises, classified as Airflow 3's task runner does: AirflowSkipException skips,
    AirflowFailException fails without retry, any other exception is retried (retries permitting)."""
    case = _task(report)["callable_outcomes"][str(code)]
    assert case["outcome"] == EXPECTED_OUTCOMES.get(code, "retry"), case
    assert case["warnings"] == [], case  # e.g. Airflow 3's deprecated airflow.exceptions aliases
    if case["exception"] is not None:
        assert case["exception"].startswith("airflow.sdk.exceptions."), case  # the classes the runner catches


def test_the_loader_cli_parser_rejects_what_airflow_must_not_run() -> None:
    """The command check above is a real parse: it tells valid from invalid loader commands."""
    for bad in (["run", "--limit", "3"], ["runs-incremental"], ["run", "--incremental", "--no-such-option"]):
        with pytest.raises(click.UsageError):
            _parse_loader_command(bad)
