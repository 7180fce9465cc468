"""Snowflake: one table per source holding the latest version of each key, plus a ledger of landed runs.

Per table and run: prepare, stage, merge (one transaction with the ledger insert), clean up; each step
retried on its own and idempotent, so a retry or a replay after a crash repeats a step without harm.
This class joins the folder's parts: the steps (facts.py, dimensions.py), the statements (sql.py), the
sessions and errors (connection.py), what verify reads (read_back.py).

How it works, and why: docs/design.md, "The Snowflake sink"."""

from __future__ import annotations

import contextlib
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import pyarrow as pa

from loader import failpoints
from loader.errors import LoaderError, SinkRejected
from loader.net import unreachable
from loader.sinks.base import (
    Capabilities,
    PartWrite,
    SinkContext,
    SinkWrite,
    TableBatch,
    count_true,
    live_rows,
    region_counts,
    summed_regions,
    tombstones,
)
from loader.sinks.schema_check import refuse_case_clashes
from loader.sinks.snowflake import dimensions, facts, read_back
from loader.sinks.snowflake.capabilities import CAPABILITIES
from loader.sinks.snowflake.config import SnowflakeSinkConfig
from loader.sinks.snowflake.connection import (
    ConnectionPool,
    Session,
    connect,
    convert,
    run_step,
    schema_name,
    temp_folder,
    where,
)
from loader.sinks.snowflake.schema import columns_to_add, ident
from loader.sinks.snowflake.sql import stage_prefix
from loader.sinks.table_locks import table_lock
from loader.transform.dimension_changes import DimensionChanges, DimensionSpec


@dataclass(frozen=True)
class SnowflakeBegun:
    """`begin`'s token: this attempt's stage folder, `@<stage>/<pipeline>/<table>/run=<n>/<attempt>/`."""

    stage_folder: str


class SnowflakeSink:
    name = "snowflake"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, settings: SnowflakeSinkConfig, context: SinkContext) -> None:
        self.settings = settings
        self.retry = self.settings.retry  # of each step (capabilities.retries_own_steps)
        # Checked up front (the config pattern already did): a bad pipeline name must not reach a path.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", context.pipeline):
            raise SinkRejected(f"Snowflake: pipeline name {context.pipeline!r} cannot name a stage folder")
        # Connections logged in and idle, reused by the next step (`Session`): one login per run. The
        # pool travels to a Ray worker without them, and logs out when dropped without close().
        self.pool = ConnectionPool(settings)

    def close(self) -> None:
        """Log out of the idle connections."""
        self.pool.close()

    def discard_run(self, table: str, run_number: int) -> None:
        """Nothing to do: a run is visible only once its transaction committed, and the staging table and
        stage folder are replaced by the next load."""

    def location(self, table: str) -> str:
        return f"{where(self.settings)}.{table.upper()}"

    def check_columns(self, table: str, schema: pa.Schema) -> None:
        """Every column a plain identifier, none equal to another but for case (Snowflake upper-cases
        them), and none whose stored type cannot hold this run's values."""
        import snowflake.connector.errors as sf_errors

        for name in schema.names:
            ident(name)
        refuse_case_clashes(f"Snowflake table {schema_name(self.settings)}.{table.upper()}", schema, [],
                            "Snowflake upper-cases into one column")
        session = Session(self.pool)
        try:
            existing = facts.stored_columns(session.cursor(), self.settings, table)
        except sf_errors.Error as error:
            raise convert(self.settings, error, doing=f"reading the columns of {table} in") from error
        finally:
            session.done()
        # raises on a type its column cannot hold
        columns_to_add(table, schema, existing, schema_name(self.settings))

    def begin(self, batch: TableBatch) -> SnowflakeBegun | None:
        """Step 1 (prepare). None if the run landed here already; else the stage folder of this attempt:
        a fresh one, so files an interrupted attempt staged are never loaded again."""
        session = Session(self.pool)
        try:
            if run_step(self.settings, batch.table, "prepare", session,
                        lambda cur: facts.prepare(cur, self.settings, batch)):
                return None
        finally:
            session.done()
        return SnowflakeBegun(f"{stage_prefix(self.settings.stage, batch)}{uuid.uuid4().hex[:12]}/")

    def write_part(self, batch: TableBatch, begun: SnowflakeBegun, *, part: int, last: bool) -> PartWrite:
        """Step 2 for one part: its region files PUT to the attempt's stage folder (on the worker
        holding the part, in parallel with the other parts)."""
        if batch.data.num_rows == 0:
            return PartWrite(0)
        session = Session(self.pool)
        folder = temp_folder()
        try:
            files = facts.region_files(batch, folder, part)
            run_step(self.settings, batch.table, "stage", session,
                     lambda cur: facts.put(cur, begun.stage_folder, files))
            staged = count_true(tombstones(batch))  # tombstones: staged, not rows of the target
            live = live_rows(batch, batch.data)
            return PartWrite(batch.data.num_rows - staged, region_counts(live), deleted=staged)
        finally:
            session.done()
            shutil.rmtree(folder, ignore_errors=True)

    def finish(self, batch: TableBatch, begun: SnowflakeBegun, parts: list[PartWrite]) -> SinkWrite:
        """Steps 2 (COPY of every part's files), 3 (merge + ledger row, one transaction) and 4 (cleanup),
        one run of a table at a time in this process: the staging table is the table's, and a MERGE must
        see the tombstones the previous one remembered (parallel backfill chunks write from threads)."""
        rows = sum(p.rows + p.deleted for p in parts)  # staged: live rows and tombstones
        with table_lock(self.location(batch.table)):  # one writer of a target table at a time
            session = Session(self.pool)
            try:
                if rows:
                    run_step(self.settings, batch.table, "copy", session,
                             lambda cur: facts.copy(cur, batch, begun.stage_folder, rows))
                deleted = run_step(
                    self.settings, batch.table, "merge", session,
                    lambda cur: facts.merge(cur, session.conn, self.settings.ledger_table, batch, rows))
                failpoints.hit("snowflake.commit", batch.table)
                if rows:
                    facts.cleanup(session, batch, begun.stage_folder)
                return SinkWrite(self.name, batch.table, sum(p.rows for p in parts),
                                 self.location(batch.table), regions=summed_regions(parts), deleted=deleted)
            finally:
                session.done()

    def read_back(self, table: str, columns: list[str]) -> pa.Table | None:
        return read_back.read_back(self.pool, self.settings, table, columns)

    def scan(self, table: str, columns: list[str]) -> Iterator[pa.Table]:
        return read_back.scan(self.pool, self.settings, table, columns)

    def probe(self) -> str | None:
        """Logs in and runs SELECT 1 (a closed port fails in seconds, before the connector's own waits)."""
        import snowflake.connector.errors as sf_errors

        s = self.settings
        if s.host and s.port:
            problem = unreachable(s.host, s.port)
            if problem:
                return f"{problem}: check sinks.snowflake host/port"
        try:
            conn = connect(s)
        except sf_errors.Error as error:
            return str(convert(s, error, doing="connecting to"))
        except LoaderError as error:  # an unreadable private key
            return str(error)
        try:
            conn.cursor().execute("SELECT 1")
        except sf_errors.Error as error:
            return str(convert(s, error, doing="querying"))
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return None

    def dimension_rows(self, spec: DimensionSpec, columns: Sequence[str] | None = None) -> pa.Table | None:
        return dimensions.dimension_rows(self.pool, self.settings, spec, columns)

    def apply_dimension(self, spec: DimensionSpec, changes: DimensionChanges) -> None:
        dimensions.apply_dimension(self.pool, self.settings, spec, changes)


if TYPE_CHECKING:  # mypy checks the class against the whole contract, with its own token
    from loader.sinks.base import Sink

    _CONFORMS: type[Sink[SnowflakeBegun]] = SnowflakeSink


__all__ = ["SnowflakeBegun", "SnowflakeSink"]
