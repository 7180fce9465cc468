"""The suite's own judgement (tests/conftest.py), tried on a small pytest session of its own: it judges
only what it made (its temp folder, TMPDIR for every process it starts), so another process's files in
the machine's temp folder do not fail it, while a loader run that leaves debris does; and under CI a skip
the test did not declare (`may_skip`) fails it, with every skip and its reason in the summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT

pytestmark = pytest.mark.integration

# The variables the outer session set for itself; the inner session makes its own.
_OUTER = ("LOADER_TESTS_TEMP_ROOT", "PYTEST_DEBUG_TEMPROOT", "XDG_RUNTIME_DIR", "PYTEST_XDIST_WORKER",
          "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST", "CI")

INNER = ('''
import os, subprocess, sys
from pathlib import Path
import pytest
from tests.support.cli import run_cli, write_config

def test_another_process_writes_in_the_machines_temp_folder():
    (Path(os.environ["MACHINE_TMP"]) / "pip-build-env-1234").mkdir()  # not the suite's: not judged
    (Path(os.environ["MACHINE_TMP"]) / "loader-{uid}").mkdir()  # another loader, still running:
    (Path(os.environ["MACHINE_TMP"]) / "loader-{uid}" / str(os.getppid())).mkdir()  # its process lives

def test_undeclared():
    pytest.skip("Chromium is not installed")

@pytest.mark.may_skip
def test_declared():
    pytest.skip("no GPU here")

def test_killed_loader_run(tmp_path):
    if os.environ.get("KILL_A_RUN") != "1":
        return
    config = write_config(tmp_path / "project")
    run_cli(config, "demo-data", "init", "--scale", "0.002", "--days", "1", '''
'''"--now", "2024-01-02T00:00:00+00:00")
    killed = run_cli(config, "run", "--incremental", check=False, '''
'''env={{"LOADER_FAILPOINTS": "plan.recorded=crash"}})
    assert killed.returncode == -9, killed.stderr
''')


def _inner_session(tmp_path: Path, **env: str) -> tuple[int, str]:
    machine_tmp = tmp_path / "machine-tmp"  # the inner session's "system temp folder"
    machine_tmp.mkdir(exist_ok=True)
    (tmp_path / "inner").mkdir(exist_ok=True)
    test_file = tmp_path / "inner" / "test_inner.py"
    test_file.write_text(INNER.format(uid=os.getuid()))
    full_env = {k: v for k, v in os.environ.items() if k not in _OUTER}
    full_env.update(TMPDIR=str(machine_tmp), MACHINE_TMP=str(machine_tmp), PYTHONPATH=str(ROOT), **env)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(test_file.parent), str(test_file)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_other_processes_temp_files_do_not_fail_the_suite_and_every_skip_is_listed(tmp_path: Path) -> None:
    code, out = _inner_session(tmp_path)
    assert code == 0, out
    assert "2 passed, 2 skipped" in out, out
    assert "skipped 2, 1 of them not declared by the test (marker may_skip):" in out, out
    assert "UNDECLARED x1: Chromium is not installed\n      test_inner.py::test_undeclared\n" in out, out
    assert "declared x1: no GPU here\n      test_inner.py::test_declared\n" in out, out
    assert "left" not in out, out
    assert not [p for p in (tmp_path / "machine-tmp").iterdir() if p.name.startswith("lt")], (
        "the session's folder stays")


def test_under_ci_an_undeclared_skip_fails_the_suite(tmp_path: Path) -> None:
    code, out = _inner_session(tmp_path, CI="true")
    assert code == 1, out
    assert "under CI an undeclared skip fails the suite" in out and "test_undeclared" in out, out


def test_a_loader_run_that_leaves_debris_fails_the_suite_naming_it(tmp_path: Path) -> None:
    """A run killed with SIGKILL cannot remove its scratch folder (`loader-<uid>/<pid>` in the temp
    folder): the session names it and fails."""
    code, out = _inner_session(tmp_path, KILL_A_RUN="1")
    assert code == 1, out
    assert "2 passed, 2 skipped" in out, out  # the tests themselves passed: the check failed the session
    assert "the test session left 1 entries behind:" in out, out
    assert f"/loader-{os.getuid()}" in out.split("left 1 entries behind:")[1], out
