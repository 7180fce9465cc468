"""The state store's tables at the current SCHEMA_VERSION.

Timestamps and cursors are ISO-8601 UTC strings (see `state.models.to_iso`) and JSON is plain text, so
the same SQL runs on SQLite and PostgreSQL and a broken value can be reported instead of crashing a driver.
There are no CHECK constraints on mode/status: the store validates on read and names the broken row.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, Text

SCHEMA_VERSION = 6

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
# v5: per sink (a sink enabled later gets every table on its first run). Rows of v3 have sink '*'
# (state.models.ALL_SINKS): loaded to the sinks enabled then, whichever those were.
dimension_loads = Table(
    "dimension_loads",
    metadata,
    Column("pipeline", String(200), primary_key=True),
    Column("dimension", String(200), primary_key=True),
    Column("sink", String(200), primary_key=True),
    Column("fingerprint", String(128), nullable=False),
    Column("cursor", TIMESTAMP, nullable=True),
    Column("loaded_at", TIMESTAMP, nullable=False),
    Column("changes", Text, nullable=False),
)

# v4: the region lookups each batch was enriched with, once per version of the dimension files (their
# fingerprint, recorded in the batch's inputs): `loader verify` gives every fact row the region of the
# dimension version it loaded with. `regions` is an Arrow IPC stream (zstd), written by loader/ code.
lookup_versions = Table(
    "lookup_versions",
    metadata,
    Column("pipeline", String(200), primary_key=True),
    Column("fingerprint", String(128), primary_key=True),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("regions", LargeBinary, nullable=False),
    # The prepared lookups themselves (loader/transform/lookup_cache.py `pack`), kept for the newest
    # version and for those unfinished runs recorded: a replay enriches from them wherever it runs.
    Column("prepared", LargeBinary, nullable=True),
    # v6: every version's prepared lookups stay recoverable (`loader verify --deep` enriches each fact row
    # as its batch did) as the changes (`delta`, loader/transform/lookup_versions.py) from the version
    # `base`, whose own lookups are recoverable likewise; a version without a base keeps `prepared` for good.
    Column("base", String(128), nullable=True),
    Column("delta", LargeBinary, nullable=True),
)

# v5: facts a sink lacks because it was enabled after incremental runs had committed them: per sink and
# source, the cursor window (start, end] of those runs (start: just before the earliest cursor when they
# began with the first run), found by the first run that writes to the sink. A committed backfill of the
# window into the sink fills it (the run ledger says so; the row is then removed).
fact_gaps = Table(
    "fact_gaps",
    metadata,
    Column("pipeline", String(200), primary_key=True),
    Column("sink", String(200), primary_key=True),
    Column("source", String(200), primary_key=True),
    Column("window_start", TIMESTAMP, nullable=False),
    Column("window_end", TIMESTAMP, nullable=False),
    Column("first_run", Integer, nullable=False),
    Column("last_run", Integer, nullable=False),
    Column("detected_at", TIMESTAMP, nullable=False),
)
