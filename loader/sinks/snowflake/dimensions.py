"""Dimension tables in Snowflake: the stored rows a load compares with (`dimension_rows`), and a load's
changes applied (`apply_dimension`): prepare, PUT and COPY of the opens and closes, one transaction
applying them, cleanup; each step retried on its own and idempotent, as a fact table's."""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loader import failpoints
from loader.errors import SinkRejected, SinkUnavailable
from loader.sinks.snowflake.config import SnowflakeSinkConfig
from loader.sinks.snowflake.connection import (
    ConnectionPool,
    Session,
    drop_unless_refused,
    run_step,
    schema_name,
    temp_folder,
    transaction,
)
from loader.sinks.snowflake.facts import put, stored_columns
from loader.sinks.snowflake.schema import ColumnType, columns_to_add, create_table_sql, ident
from loader.sinks.snowflake.sql import dimension_sql, dimension_staging
from loader.storage import short_error
from loader.transform.dimension_changes import IS_CURRENT, TIME, VALID_FROM, DimensionChanges, DimensionSpec

log = logging.getLogger(__name__)


def dimension_rows(pool: ConnectionPool, settings: SnowflakeSinkConfig, spec: DimensionSpec,
                   columns: Sequence[str] | None = None) -> pa.Table | None:
    """`columns` (all when None) of the rows of dimension `spec.table` (scd2: the current versions),
    names lower-cased, in the stored order and types (history.stored_schema of the landing schema);
    None if there is no table."""
    session = Session(pool)
    try:
        return run_step(settings, spec.table, "read", session,
                        lambda cur: _dimension_rows(cur, settings, spec, columns))
    finally:
        session.done()


def apply_dimension(pool: ConnectionPool, settings: SnowflakeSinkConfig, spec: DimensionSpec,
                    changes: DimensionChanges) -> None:
    """Prepare (stage and table), PUT and COPY the opens and closes, apply them in one transaction,
    clean up: each step retried on its own and idempotent (see the module docstring)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.pipeline):
        raise SinkRejected(f"Snowflake: pipeline name {spec.pipeline!r} cannot name a stage folder")
    ident(spec.table)  # checked before it names a folder
    schema = (changes.opens if changes.opens.num_rows else changes.closes).schema
    sides = {"opens": changes.opens}
    if spec.mode != "replace":
        sides["closes"] = changes.closes
    staged = {side: rows for side, rows in sides.items() if rows.num_rows}
    prefix = (f"@{ident(settings.stage)}/{spec.pipeline}/dimensions/{spec.table}/"
              f"{uuid.uuid4().hex[:12]}/")
    session = Session(pool)
    folder = temp_folder()
    try:
        run_step(settings, spec.table, "prepare", session,
                 lambda cur: _prepare_dimension(cur, settings, spec, schema))
        files: dict[str, Path] = {}
        for side, rows in staged.items():
            (folder / side).mkdir()
            files[side] = folder / side / f"{side}.parquet"
            pq.write_table(rows, files[side])

        def put_sides(cur: Any) -> None:  # one folder per side, for one COPY each
            for side, path in files.items():
                put(cur, f"{prefix}{side}/", [path])

        run_step(settings, spec.table, "stage", session, put_sides)
        counts = {side: rows.num_rows for side, rows in staged.items()}
        run_step(settings, spec.table, "copy", session,
                 lambda cur: _copy_dimension(cur, spec, prefix, counts))
        run_step(settings, spec.table, "apply", session,
                 lambda cur: _apply_dimension(cur, session.conn, spec, list(schema.names), set(staged)))
        _cleanup_dimension(session, spec, prefix if staged else None)
    finally:
        session.done()
        shutil.rmtree(folder, ignore_errors=True)


def _dimension_rows(cur: Any, settings: SnowflakeSinkConfig, spec: DimensionSpec,
                    wanted: Sequence[str] | None) -> pa.Table | None:
    columns = stored_columns(cur, settings, spec.table)
    if not columns:
        return None
    if wanted is not None:
        columns = {name: kind for name, kind in columns.items() if name.lower() in set(wanted)}
    schema = pa.schema([pa.field(name.lower(), _arrow_type(spec.table, name, kind))
                        for name, kind in columns.items()])
    # NULL timestamps read with IS NULL too: the emulator returns a NULL TIMESTAMP_TZ over Arrow as the
    # epoch
    times = [i for i, f in enumerate(schema) if pa.types.is_timestamp(f.type)]
    names = list(columns)
    selected = [ident(n) for n in names] + [f"{ident(names[i])} IS NULL" for i in times]
    where = f" WHERE {ident(IS_CURRENT)}" if spec.mode == "scd2" else ""
    cur.execute(f"SELECT {', '.join(selected)} FROM {ident(spec.table)}{where}")
    data = cur.fetch_arrow_all()
    if data is None:  # the connector's answer to no rows
        return schema.empty_table()
    arrays = [data.column(i).cast(f.type) for i, f in enumerate(schema)]
    for flag, i in enumerate(times, start=len(names)):
        arrays[i] = pc.if_else(data.column(flag), pa.scalar(None, schema.field(i).type), arrays[i])
    return pa.Table.from_arrays(arrays, schema=schema)


def _arrow_type(table: str, column: str, kind: ColumnType) -> pa.DataType:
    """The Arrow type a dimension column was created from (snowflake_schema.column_type, reversed):
    whole numbers as int64, timestamps in microseconds (with a time zone: UTC)."""
    if kind.family == "NUMBER":
        return pa.int64() if not kind.scale else pa.decimal128(kind.precision or 38, kind.scale)
    simple = {"TEXT": pa.string(), "FLOAT": pa.float64(), "BOOLEAN": pa.bool_(), "DATE": pa.date32(),
              "TIMESTAMP_TZ": TIME, "TIMESTAMP_LTZ": TIME, "TIMESTAMP_NTZ": pa.timestamp("us")}
    if kind.family not in simple:
        raise SinkRejected(f"Snowflake: dimension column {table.upper()}.{column} is {kind}, which the "
                           f"loader never creates: drop the table to let the loader recreate it, then "
                           f"run again")
    return simple[kind.family]


def _prepare_dimension(cur: Any, settings: SnowflakeSinkConfig, spec: DimensionSpec,
                       schema: pa.Schema) -> None:
    cur.execute(f"CREATE STAGE IF NOT EXISTS {ident(settings.stage)}")
    key = (*spec.key, VALID_FROM) if spec.mode == "scd2" else spec.key  # scd2: versions per key
    cur.execute(create_table_sql(spec.table, schema, key, cluster_by=None))
    for statement in columns_to_add(spec.table, schema, stored_columns(cur, settings, spec.table),
                                    schema_name(settings)):
        log.info("%s -> snowflake: new dimension column: %s", spec.table, statement)
        cur.execute(statement)


def _copy_dimension(cur: Any, spec: DimensionSpec, prefix: str, counts: dict[str, int]) -> None:
    for side, rows in counts.items():
        staging = dimension_staging(spec, side)
        cur.execute(f"CREATE OR REPLACE TRANSIENT TABLE {staging} LIKE {ident(spec.table)}")
        cur.execute(f"COPY INTO {staging} FROM {prefix}{side}/ FILE_FORMAT=(TYPE=PARQUET) "
                    f"MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE FORCE=TRUE")
        cur.execute(f"SELECT COUNT(*) FROM {staging}")
        staged = cur.fetchone()[0]
        if staged != rows:
            raise SinkUnavailable(
                f"Snowflake: {staging} holds {staged:,} rows after COPY, {rows:,} were staged: "
                "copying again")


def _apply_dimension(cur: Any, conn: Any, spec: DimensionSpec, columns: list[str], staged: set[str]) -> None:
    """The changes in one transaction: all of them or none (a retry repeats the whole of it)."""
    with transaction(conn):
        for statement in dimension_sql(spec, columns, staged):
            cur.execute(statement)
        failpoints.hit("snowflake.dimension", spec.table)
        conn.commit()


def _cleanup_dimension(session: Session, spec: DimensionSpec, prefix: str | None) -> None:
    """Applied already: a failure here is logged (the next load replaces the staging tables; staged
    files left behind cost storage only)."""
    statements = [f"DROP TABLE IF EXISTS {dimension_staging(spec, side)}"
                  for side in ("opens", "closes")]
    for statement in [*statements, *([f"REMOVE {prefix}"] if prefix else [])]:
        try:
            session.cursor().execute(statement)
        except Exception as error:
            log.info("%s -> snowflake: %s failed (%s)", spec.table, statement.split(" ")[0],
                     short_error(error))
            drop_unless_refused(session, error)


__all__ = ["apply_dimension", "dimension_rows"]
