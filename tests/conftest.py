"""Shared fixtures only; the helpers the tests share live in tests/support/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import write_config


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
