"""The state store's tables at the current SCHEMA_VERSION.

Timestamps and cursors are ISO-8601 UTC strings (see `state.models.to_iso`) and JSON is plain text, so
the same SQL runs on SQLite and PostgreSQL and a broken value can be reported instead of crashing a driver.
There are no CHECK constraints on mode/status: the store validates on read and names the broken row.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table, Text

SCHEMA_VERSION = 3

TIMESTAMP = String(40)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", TIMESTAMP, nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("pipeline", String(200), primary_key=True),
    Column("source", String(200), primary_key=True),
    Column("cursor", TIMESTAMP, nullable=False),
    Column("run_number", Integer, nullable=False),
    Column("updated_at", TIMESTAMP, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("pipeline", String(200), primary_key=True),
    Column("run_number", Integer, primary_key=True, autoincrement=False),
    Column("mode", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("windows", Text, nullable=False),
    Column("base_checkpoints", Text, nullable=False),
    Column("started_at", TIMESTAMP, nullable=False),
    Column("finished_at", TIMESTAMP, nullable=True),
    Column("metrics", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    # v2: the exact input of the run (files with size, row groups), recorded before any write so that
    # a replay reads that and nothing else. NULL for runs recorded before v2 (replayed by window).
    Column("inputs", Text, nullable=True),
)

leases = Table(
    "leases",
    metadata,
    Column("pipeline", String(200), primary_key=True),
    Column("holder", String(300), nullable=False),
    Column("acquired_at", TIMESTAMP, nullable=False),
    Column("expires_at", TIMESTAMP, nullable=False),
)

# v3: the last load of each dimension table to the sinks: the files' fingerprint (a load of the same
# files is skipped without reading them), the newest change cursor loaded, what it changed.
dimension_loads = Table(
    "dimension_loads",
    metadata,
    Column("pipeline", String(200), primary_key=True),
    Column("dimension", String(200), primary_key=True),
    Column("fingerprint", String(128), nullable=False),
    Column("cursor", TIMESTAMP, nullable=True),
    Column("loaded_at", TIMESTAMP, nullable=False),
    Column("changes", Text, nullable=False),
)
