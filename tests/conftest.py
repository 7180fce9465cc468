"""Shared fixtures only; the helpers the tests share live in tests/support/."""

from __future__ import annotations

import atexit
import getpass
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loader.scratch import alive
from tests.support.cli import write_config

SYSTEM_TEMP = Path(tempfile.gettempdir())  # the machine's, before the suite points TMPDIR at its own
_SYSTEM_BEFORE = pytest.StashKey[set[str]]()
_TEMP_ROOT = pytest.StashKey[str]()
_SKIPS: list[tuple[str, str, bool]] = []  # (test, reason, declared): the controller's are the session's
# set by the outermost session: a test's own pytest run checks nothing
_SESSION_ENV = "LOADER_TESTS_TEMP_ROOT"
# What the suite's own temp folder holds by design: pytest's tmp_path folders and the runtime folder.
_OURS_BY_DESIGN = {f"pytest-of-{getpass.getuser()}", "runtime"}


def _controller(config: pytest.Config) -> bool:
    """The process that runs the session (xdist's workers have `workerinput`)."""
    return not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """Give the suite a temp folder of its own and make it every process's temp folder: TMPDIR (tempfile,
    the loader's scratch root, Ray's session folders, the services'), pytest's tmp_path folders, the
    runtime folder that libraries (platformdirs) otherwise make in /tmp. xdist's workers and every CLI run
    inherit it. So the check at the end judges only what the suite made, whatever else uses /tmp."""
    config.addinivalue_line("markers", "may_skip: the test may skip for a fact of the machine (no GPU), "
                            "not for a missing environment: other skips fail the suite under CI (CI=true)")
    if not _controller(config) or _SESSION_ENV in os.environ:
        return
    config.stash[_SYSTEM_BEFORE] = set(os.listdir(SYSTEM_TEMP))
    # short: Ray's socket paths under it (loader-<uid>/ray/<pid>/session_.../sockets/...) hold 107 bytes
    root = tempfile.mkdtemp(prefix="lt", dir=SYSTEM_TEMP)
    config.stash[_TEMP_ROOT] = os.environ[_SESSION_ENV] = root
    # Removed again at exit, after every library's own exit handler (registered later, so run earlier):
    # pgserver's writes a lock file under XDG_RUNTIME_DIR after the session's check removed the folder.
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    os.environ["TMPDIR"] = root
    tempfile.tempdir = root
    if not config.option.basetemp and "PYTEST_DEBUG_TEMPROOT" not in os.environ:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = root  # read when the first tmp_path is made, workers' included
    if "XDG_RUNTIME_DIR" not in os.environ:
        os.makedirs(os.path.join(root, "runtime"), mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = os.path.join(root, "runtime")


def _escaped_loader_names(before: set[str]) -> list[str]:
    """Names only the loader makes that appeared in the machine's temp folder: a process of the suite
    that ignored TMPDIR. A folder of another loader's live process (another run on the machine) is not
    ours: under `loader-<uid>` only the folders of processes that are gone count."""
    found = []
    for name in sorted(set(os.listdir(SYSTEM_TEMP)) - before):
        path = SYSTEM_TEMP / name
        if name == f"loader-{os.getuid()}" and path.is_dir():
            found += [f"{name}/{p.name}" for p in sorted(path.iterdir())
                      if not (p.name.isdigit() and alive(int(p.name)))]
        elif name.startswith(("loader-cache", "loader-snowflake-")):
            found.append(name)
    return found


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Every skip, with its reason and whether the test declared it (marker `may_skip`); xdist hands the
    workers' reports to the controller, which keeps them."""
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        _SKIPS.append((report.nodeid, reason, "may_skip" in report.keywords))


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


def _debris(config: pytest.Config) -> list[str]:
    """Anything left in the suite's own temp folder but what it holds by design (a test's service, a
    library or a loader run leaving files behind), and loader names new in the machine's temp folder.
    The folder is removed either way."""
    root = Path(config.stash[_TEMP_ROOT])
    left = [f"{root}/{p.name}" for p in sorted(root.iterdir()) if p.name not in _OURS_BY_DESIGN]
    left += [f"{SYSTEM_TEMP}/{name}" for name in _escaped_loader_names(config.stash[_SYSTEM_BEFORE])]
    shutil.rmtree(root, ignore_errors=True)
    return ([f"the test session left {len(left)} entries behind:", *(f"  {name}" for name in left)]
            if left else [])


def _skip_lines() -> tuple[list[str], bool]:
    """The summary of every skip and its reason; under CI (CI=true) a skip the test did not declare with
    `may_skip` (a missing environment: Chromium, .venv-airflow) fails the session."""
    skips = _SKIPS
    unexpected = [(test, reason) for test, reason, expected in skips if not expected]
    lines = ([f"skipped {len(skips)}, {len(unexpected)} of them not declared by the test (marker may_skip):"]
             if skips else [])
    groups: dict[tuple[bool, str], list[str]] = {}
    for test, reason, declared in skips:
        groups.setdefault((declared, reason), []).append(test)
    for (declared, reason), tests in groups.items():
        lines.append(f"  {'declared' if declared else 'UNDECLARED'} x{len(tests)}: {reason}")
        shown = tests if not declared else tests[:2]
        lines += [f"      {test}" for test in shown] + ([f"      and {len(tests) - len(shown)} more"]
                                                        if tests[len(shown):] else [])
    failing = bool(unexpected) and _under_ci()
    if failing:
        lines.append("under CI an undeclared skip fails the suite: build what it names (`make test` does) "
                     "and run again")
    return lines, failing


_VERDICT = pytest.StashKey[tuple[list[str], bool]]()  # the lines to print, and whether they fail the session


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite judges only what it made, and runs what it can: debris it left, or (under CI) a test
    skipped for a missing environment, fails the session; pytest_terminal_summary lists them."""
    config = session.config
    if not _controller(config) or _TEMP_ROOT not in config.stash:
        return
    debris = _debris(config)
    skips, skip_fails = _skip_lines()
    config.stash[_VERDICT] = (skips + debris, bool(debris) or skip_fails)
    if debris or skip_fails:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines, failing = config.stash.get(_VERDICT, ([], False))
    if lines:
        terminalreporter.section("what the suite judged besides its tests", red=failing, bold=failing)
    for line in lines:
        terminalreporter.write_line(line, red=failing)


@pytest.fixture(scope="session", autouse=True)
def dimension_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Runs whose state is not a SQLite file keep prepared dimensions in $LOADER_CACHE_DIR: a folder
    of the session's (removed with it), not the system temp folder."""
    folder = tmp_path_factory.mktemp("dimension-cache")
    previous = os.environ.get("LOADER_CACHE_DIR")
    os.environ["LOADER_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("LOADER_CACHE_DIR", None)
    else:
        os.environ["LOADER_CACHE_DIR"] = previous


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "project")


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL 16 (the pgserver wheel, no system install), for the whole test session."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    server.cleanup()


@pytest.fixture(scope="session")
def snowflake_server() -> Iterator[dict[str, Any]]:
    """fakesnow's server on loopback for the whole session (see tests/support/snowflake_emulator.py)."""
    from tests.support.snowflake_emulator import emulator

    with emulator() as server:
        yield server
