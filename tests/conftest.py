"""Shared fixtures: a config in a temp folder (landing zone, state and warehouse beside it) and a way
to run the real `loader` CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = ROOT / "configs" / "local.yaml"


def write_config(folder: Path, **overrides: Any) -> Path:
    """configs/local.yaml with its paths inside `folder`; `overrides` replace top-level keys."""
    raw = yaml.safe_load(LOCAL_CONFIG.read_text())
    raw["landing_zone"] = "landing"
    raw["warehouse"] = "warehouse"
    raw["state"]["url"] = "sqlite:///state/loader.db"
    for key, value in overrides.items():
        raw[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "loader.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_cli(config: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The real command line in a child process."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "loader.cli", "--config", str(config), *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"loader {' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_json(config: Path, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    result = run_cli(config, *args, "--json", env=env, cwd=cwd)
    return json.loads(result.stdout)


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


def pg_database(pg_url: str, *, template: str | None = None) -> str:
    """A new empty database (or a copy of `template`'s database) on the test server; its URL."""
    from sqlalchemy import create_engine, make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        suffix = f' TEMPLATE "{make_url(template).database}"' if template else ""
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"{suffix}')
    engine.dispose()
    return make_url(pg_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def snowflake_server() -> Iterator[dict[str, Any]]:
    """fakesnow's server on loopback for the whole session (see tests/snowflake_emulator.py)."""
    from tests.snowflake_emulator import emulator

    with emulator() as server:
        yield server
