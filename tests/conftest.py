"""Shared fixtures only; the helpers the tests share live in tests/support/."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import write_config

SYSTEM_TEMP = Path(tempfile.gettempdir())
_TEMP_BEFORE = pytest.StashKey[set[str]]()
_TEMP_ROOT = pytest.StashKey[str]()


def _controller(config: pytest.Config) -> bool:
    """The process that runs the session (xdist's workers have `workerinput`)."""
    return not hasattr(config, "workerinput")


_SESSION_ENV = "LOADER_TESTS_TEMP_ROOT"  # set by the outermost session: a test's own pytest run checks nothing


def pytest_configure(config: pytest.Config) -> None:
    """Remember what the system temp folder held, and put pytest's own tmp_path folders in a folder of
    the suite (removed at its end) rather than /tmp/pytest-of-<user>; the same for the runtime folder
    that libraries (platformdirs) otherwise make in /tmp when XDG_RUNTIME_DIR is unset."""
    if not _controller(config) or _SESSION_ENV in os.environ:
        return
    config.stash[_TEMP_BEFORE] = set(os.listdir(SYSTEM_TEMP))
    root = tempfile.mkdtemp(prefix="loader-tests-")
    config.stash[_TEMP_ROOT] = os.environ[_SESSION_ENV] = root  # children (workers, CLI runs) inherit these
    if not config.option.basetemp and "PYTEST_DEBUG_TEMPROOT" not in os.environ:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = root  # read when the first tmp_path is made, workers' included
    if "XDG_RUNTIME_DIR" not in os.environ:
        os.makedirs(os.path.join(root, "runtime"), mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = os.path.join(root, "runtime")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite leaves the system temp folder as it found it: anything new there fails the session,
    listed (a test's service, a library or the loader leaving files behind)."""
    config = session.config
    if not _controller(config) or _TEMP_BEFORE not in config.stash:
        return
    shutil.rmtree(config.stash[_TEMP_ROOT], ignore_errors=True)
    left = sorted(set(os.listdir(SYSTEM_TEMP)) - config.stash[_TEMP_BEFORE])
    if not left:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"the test session left {len(left)} new entries in {SYSTEM_TEMP}:", *(f"  {name}" for name in left)]
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
