"""Databases on the session's PostgreSQL server (the `pg_url` fixture in tests/conftest.py)."""

from __future__ import annotations

import uuid


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
