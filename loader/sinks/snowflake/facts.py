"""A fact table's write steps, each taking a cursor: prepare (stage, ledger, target: created and
widened; the landed check), the region files PUT to the attempt's stage folder, the COPY into the
staging table, the one MERGE transaction with the ledger row, and the cleanup after it. The sink
(sink.py) runs each as a step of its own, retried (connection.py: `run_step`)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from loader import failpoints
from loader.errors import SinkUnavailable
from loader.sinks.base import DELETED, TableBatch
from loader.sinks.names import file_part
from loader.sinks.snowflake.config import SnowflakeSinkConfig
from loader.sinks.snowflake.connection import Session, drop_unless_refused, schema_name, transaction
from loader.sinks.snowflake.schema import ColumnType, columns_to_add, create_table_sql, ident
from loader.sinks.snowflake.sql import (
    create_ledger_sql,
    landed_sql,
    marked_sql,
    merge_sql,
    record_run_sql,
    remember_tombstones_sql,
    staging_table,
    target_schema,
    tombstones_schema,
    tombstones_table,
)
from loader.storage import short_error

log = logging.getLogger(__name__)

def stored_columns(cur: Any, settings: SnowflakeSinkConfig, table: str) -> dict[str, ColumnType]:
    """`table`'s columns in their order (upper-case names); empty if there is no such table."""
    cur.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE FROM INFORMATION_SCHEMA.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (settings.schema_.upper(), table.upper()),
    )
    return {name: ColumnType(kind, precision, scale) for name, kind, precision, scale in cur.fetchall()}


def prepare(cur: Any, settings: SnowflakeSinkConfig, batch: TableBatch) -> bool:
    """Create what is missing and widen the target; True if this run already landed here."""
    s = settings
    cur.execute(f"CREATE STAGE IF NOT EXISTS {ident(s.stage)}")
    cur.execute(create_ledger_sql(s.ledger_table))
    if landed(cur, s.ledger_table, batch):
        return True
    cluster = "region" if s.cluster_by_region else None
    target = target_schema(batch)
    cur.execute(create_table_sql(batch.table, target, batch.key, cluster_by=cluster))
    if batch.deletes == "hard":
        cur.execute(create_table_sql(tombstones_table(batch), tombstones_schema(batch), batch.key,
                                     cluster_by=None))
    cur.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE FROM INFORMATION_SCHEMA.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (s.schema_.upper(), batch.table.upper()),
    )
    existing = {name: ColumnType(kind, precision, scale)
                for name, kind, precision, scale in cur.fetchall()}
    for statement in columns_to_add(batch.table, target, existing, schema_name(s)):
        log.info("%s -> snowflake: new source column: %s", batch.table, statement)
        cur.execute(statement)
    return False


def landed(cur: Any, ledger_table: str, batch: TableBatch) -> bool:
    cur.execute(landed_sql(ledger_table), (batch.pipeline, batch.table, batch.run_number))
    return bool(cur.fetchone()[0])


def region_files(batch: TableBatch, folder: Path, part: int) -> list[Path]:
    """One Parquet file per region, named by run, part and region (a retry re-uploads the same names),
    written in parallel threads (Parquet encoding releases the GIL)."""
    data = batch.data
    regions = sorted(data["region"].unique().to_pylist(), key=str)

    def write(region: Any) -> Path:
        rows = data.filter(pc.is_null(data["region"]) if region is None else pc.equal(data["region"], region))
        path = folder / f"run-{batch.run_number}-{part}-{file_part(region)}.parquet"  # one name a region
        pq.write_table(rows, path)
        return path

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(regions)))) as pool:
        return list(pool.map(write, regions))


def put(cur: Any, prefix: str, files: list[Path]) -> None:
    # One PUT for the part's region files (the folder is this part's own), uploaded in parallel;
    # OVERWRITE: a retry uploads the same names again.
    pattern = (files[0].parent / "*.parquet").as_posix()
    cur.execute(f"PUT 'file://{pattern}' {prefix} OVERWRITE=TRUE AUTO_COMPRESS=FALSE PARALLEL=4")


def copy(cur: Any, batch: TableBatch, prefix: str, rows: int) -> None:
    staging = staging_table(batch)
    cur.execute(f"CREATE OR REPLACE TRANSIENT TABLE {staging} LIKE {ident(batch.table)}")
    if batch.deletes is not None:  # the tombstone flag: staged, never a column of the target
        cur.execute(f"ALTER TABLE {staging} ADD COLUMN {ident(DELETED)} BOOLEAN")
    # FORCE: the staging table is new, load every file of this attempt's folder, again on a retry
    # (no PURGE: a retried COPY whose first try purged the files would find none).
    cur.execute(
        f"COPY INTO {staging} FROM {prefix} FILE_FORMAT=(TYPE=PARQUET) "
        f"MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE FORCE=TRUE"
    )
    cur.execute(f"SELECT COUNT(*) FROM {staging}")
    staged = cur.fetchone()[0]
    if staged != rows:
        raise SinkUnavailable(
            f"Snowflake: {staging} holds {staged:,} rows after COPY, the run's parts staged {rows:,}: "
            "copying again"
        )


def merge(cur: Any, conn: Any, ledger_table: str, batch: TableBatch, rows: int) -> int:
    """The target's upsert and the ledger row, in one transaction. Returns the keys the run's
    tombstones removed or marked (0 where an earlier try committed)."""
    failpoints.hit("snowflake.write", batch.table)
    with transaction(conn):
        if landed(cur, ledger_table, batch):  # an earlier try committed but its acknowledgement was lost
            conn.rollback()
            return 0
        deleted = 0
        if rows and batch.deletes == "soft":  # MERGE's result mixes marks with updates: count first
            cur.execute(marked_sql(batch))
            deleted = int(cur.fetchone()[0])
        if rows:
            cur.execute(merge_sql(batch))
            if batch.deletes == "hard":
                deleted = _merge_count(cur, "number of rows deleted")
                for statement in remember_tombstones_sql(batch):
                    cur.execute(statement)
        failpoints.hit("snowflake.merge", batch.table)
        cur.execute(record_run_sql(ledger_table), (batch.pipeline, batch.table, batch.run_number, rows))
        conn.commit()
        return deleted


def _merge_count(cur: Any, column: str) -> int:
    """One count of MERGE's result row, by its column name (the columns follow the WHEN clauses)."""
    names = [d[0].lower() for d in (cur.description or [])]
    result = cur.fetchone()
    return int(result[names.index(column)]) if result is not None and column in names else 0


def cleanup(session: Session, batch: TableBatch, stage_folder: str) -> None:
    """Landed already: a failure here is logged (the next load replaces the staging table; staged
    files left behind cost storage only)."""
    for statement in (f"DROP TABLE IF EXISTS {staging_table(batch)}", f"REMOVE {stage_folder}"):
        try:
            session.cursor().execute(statement)
        except Exception as error:
            log.info("%s -> snowflake: %s failed (%s)", batch.table, statement.split(" ")[0],
                     short_error(error))
            drop_unless_refused(session, error)


__all__ = ["cleanup", "copy", "landed", "merge", "prepare", "put", "region_files", "stored_columns"]
