"""Versioned schema migrations: `migrate(engine)` brings any older state database to SCHEMA_VERSION.

Each step runs in the same transaction as the row it adds to `schema_version`, so a crash leaves the
database at the old version or the new one, never in between. A database newer than this code is refused
rather than half-understood. Released steps are frozen: change the schema by appending a step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    literal,
    select,
    text,
)

from state import schema
from state.errors import StateCorrupt
from state.models import to_iso, utc_now

Step = Callable[[Connection], None]

# Any constant works; it only has to be the same in every loader process (PostgreSQL advisory lock).
_PG_MIGRATION_LOCK = 0x10ADE5


def _v1_initial(conn: Connection) -> None:
    """Checkpoints, run ledger, leases, as they were in version 1 (frozen here)."""
    frozen = MetaData()
    runs_v1 = Table(
        "runs", frozen,
        Column("pipeline", String(200), primary_key=True),
        Column("run_number", Integer, primary_key=True, autoincrement=False),
        Column("mode", String(20), nullable=False),
        Column("status", String(20), nullable=False),
        Column("windows", Text, nullable=False),
        Column("base_checkpoints", Text, nullable=False),
        Column("started_at", schema.TIMESTAMP, nullable=False),
        Column("finished_at", schema.TIMESTAMP, nullable=True),
        Column("metrics", Text, nullable=False),
        Column("error", Text, nullable=True),
        Column("attempts", Integer, nullable=False),
    )
    schema.metadata.create_all(conn, tables=[schema.checkpoints, schema.leases])
    frozen.create_all(conn, tables=[runs_v1])


def _v2_run_inputs(conn: Connection) -> None:
    """Each run's exact input (files, sizes, row groups): a replay reads exactly what the run planned."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN inputs TEXT"))


def _v3_dimension_loads(conn: Connection) -> None:
    """The last load of each dimension table (fingerprint, cursor, changes)."""
    frozen = MetaData()
    Table(
        "dimension_loads", frozen,
        Column("pipeline", String(200), primary_key=True),
        Column("dimension", String(200), primary_key=True),
        Column("fingerprint", String(128), nullable=False),
        Column("cursor", schema.TIMESTAMP, nullable=True),
        Column("loaded_at", schema.TIMESTAMP, nullable=False),
        Column("changes", Text, nullable=False),
    ).create(conn)


def _v4_lookup_versions(conn: Connection) -> None:
    """The region lookups per version of the dimension files (verify's region of each fact row)."""
    frozen = MetaData()
    Table(
        "lookup_versions", frozen,
        Column("pipeline", String(200), primary_key=True),
        Column("fingerprint", String(128), primary_key=True),
        Column("created_at", schema.TIMESTAMP, nullable=False),
        Column("regions", LargeBinary, nullable=False),
        Column("prepared", LargeBinary, nullable=True),
    ).create(conn)


def _v5_per_sink(conn: Connection) -> None:
    """Dimension loads per sink (a sink enabled later is loaded on its first run), and the facts a sink
    enabled later lacks. The loads recorded so far went to the sinks enabled then, unknown here: they
    keep sink '*' (a sink holding the table counts as loaded by them). SQLite cannot change a primary
    key in place: the table is copied into a new one, which takes the old name."""
    frozen = MetaData()
    old = Table(
        "dimension_loads", frozen,
        Column("pipeline", String(200), primary_key=True),
        Column("dimension", String(200), primary_key=True),
        Column("fingerprint", String(128), nullable=False),
        Column("cursor", schema.TIMESTAMP, nullable=True),
        Column("loaded_at", schema.TIMESTAMP, nullable=False),
        Column("changes", Text, nullable=False),
    )
    new = Table(
        "dimension_loads_v5", frozen,
        Column("pipeline", String(200), primary_key=True),
        Column("dimension", String(200), primary_key=True),
        Column("sink", String(200), primary_key=True),
        Column("fingerprint", String(128), nullable=False),
        Column("cursor", schema.TIMESTAMP, nullable=True),
        Column("loaded_at", schema.TIMESTAMP, nullable=False),
        Column("changes", Text, nullable=False),
    )
    new.create(conn)
    kept = ["pipeline", "dimension", "fingerprint", "cursor", "loaded_at", "changes"]
    conn.execute(insert(new).from_select(
        [*kept, "sink"], select(*(old.c[name] for name in kept), literal("*", String(200)))))
    old.drop(conn)
    conn.execute(text("ALTER TABLE dimension_loads_v5 RENAME TO dimension_loads"))
    Table(
        "fact_gaps", frozen,
        Column("pipeline", String(200), primary_key=True),
        Column("sink", String(200), primary_key=True),
        Column("source", String(200), primary_key=True),
        Column("window_start", schema.TIMESTAMP, nullable=False),
        Column("window_end", schema.TIMESTAMP, nullable=False),
        Column("first_run", Integer, nullable=False),
        Column("last_run", Integer, nullable=False),
        Column("detected_at", schema.TIMESTAMP, nullable=False),
    ).create(conn)


def _v6_lookup_deltas(conn: Connection) -> None:
    """Each dimension version's prepared lookups as changes from a base version (`loader verify --deep`).
    Versions recorded before keep what they had: the one whose prepared lookups are still kept becomes
    the first base; the others' rows are left unchecked by --deep (it says how many)."""
    conn.execute(text("ALTER TABLE lookup_versions ADD COLUMN base VARCHAR(128)"))
    conn.execute(text(f"ALTER TABLE lookup_versions ADD COLUMN delta {_blob(conn)}"))


def _blob(conn: Connection) -> str:
    return "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"


MIGRATIONS: dict[int, Step] = {
    1: _v1_initial, 2: _v2_run_inputs, 3: _v3_dimension_loads, 4: _v4_lookup_versions, 5: _v5_per_sink,
    6: _v6_lookup_deltas,
}


def current_version(conn: Connection) -> int:
    """0 for an empty database."""
    if not conn.dialect.has_table(conn, schema.schema_version.name):
        return 0
    return int(conn.execute(select(func.coalesce(func.max(schema.schema_version.c.version), 0))).scalar_one())


def migrate(
    engine: Engine, *, steps: Mapping[int, Step] = MIGRATIONS, target: int = schema.SCHEMA_VERSION
) -> int:
    """Apply the missing steps up to `target` and return the version found before. Safe to run from many
    processes at once: SQLite serializes on BEGIN IMMEDIATE (see the store's engine), PostgreSQL on an
    advisory lock."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        found = current_version(conn)
        if found > target:
            url = engine.url.render_as_string(hide_password=True)
            raise StateCorrupt(
                f"the state database {url} is at schema version {found}, but this loader only knows "
                f"versions up to {target}: a newer loader has used it. Upgrade the loader to that newer "
                "version (do not edit or downgrade the state database by hand)."
            )
        if found < target:
            schema.schema_version.create(conn, checkfirst=True)
        for version in range(found + 1, target + 1):
            steps[version](conn)
            conn.execute(insert(schema.schema_version).values(version=version, applied_at=to_iso(utc_now())))
        return found
