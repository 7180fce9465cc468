"""Snowflake: one table per source holding the latest version of each key, plus a ledger of landed runs.

Per table and run: prepare, stage, merge (one transaction with the ledger insert), clean up; each step
retried on its own and idempotent, so a retry or a replay after a crash repeats a step without harm.

How it works, and why: docs/design.md, "The Snowflake sink"."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loader import failpoints, scratch
from loader.errors import LoaderError, SinkError, SinkRejected, SinkUnavailable
from loader.net import unreachable
from loader.retry import call_with_retries
from loader.sinks.base import (
    DELETED,
    DELETED_AT,
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
from loader.sinks.names import file_part
from loader.sinks.schema_check import refuse_case_clashes
from loader.sinks.snowflake.config import SnowflakeSinkConfig
from loader.sinks.snowflake.schema import ColumnType, columns_to_add, create_table_sql, ident
from loader.storage import short_error
from loader.transform.dimension_changes import (
    IS_CURRENT,
    TIME,
    VALID_FROM,
    VALID_TO,
    DimensionChanges,
    DimensionSpec,
)

log = logging.getLogger(__name__)

# The region files staged for PUT live in a temp folder per write, removed when the write ends. A
# process killed mid-write cannot remove its own: the next write removes those of dead processes (a
# loader process's own temp folder is its scratch folder, swept as a whole: this is for the workers of a
# Ray cluster, whose temp folder is the system's).
_FOLDER_PREFIX = "loader-snowflake-"


def _sweep_stale_folders() -> None:
    for folder in scratch.system_temp().glob(f"{_FOLDER_PREFIX}*-*"):
        pid = folder.name[len(_FOLDER_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not scratch.alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


T = TypeVar("T")
_AUTH_WORDS = ("password", "authenticat", "jwt", "private key", "user is locked", "mfa", "incorrect username")
# Snowflake's "session no longer exists / expired / token expired": log in again, i.e. retry.
_SESSION_LOST = {390111, 390112, 390114}


def stage_prefix(stage: str, batch: TableBatch) -> str:
    return f"@{ident(stage)}/{batch.pipeline}/{batch.table}/run={batch.run_number}/"


class _Session:
    """One connector session, opened lazily (or taken from the sink's idle ones) and dropped after an
    error so the retry reconnects (a lost or expired session is one of the transient faults)."""

    def __init__(self, sink: SnowflakeSink) -> None:
        self.sink = sink
        self.conn: Any = None

    def cursor(self) -> Any:
        if self.conn is None:
            self.conn = self.sink.take_connection()
        return self.conn.cursor()

    def discard(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def done(self) -> None:
        """The work ended: the connection goes back to the sink for the next step (one login per run,
        not per step), unless an error is on its way out (then it is closed: it may be broken)."""
        if sys.exc_info()[0] is not None:
            self.discard()
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            self.sink.give_back(conn)


def _drop_unless_refused(session: _Session, error: Exception) -> None:
    """After a failed statement: a statement Snowflake refused (a ProgrammingError: SQL it did not take)
    leaves the connection good for the next step; any other error may have broken it: closed."""
    from snowflake.connector.errors import ProgrammingError

    if not isinstance(error, ProgrammingError):
        session.discard()


@dataclass(frozen=True)
class SnowflakeBegun:
    """`begin`'s token: this attempt's stage folder, `@<stage>/<pipeline>/<table>/run=<n>/<attempt>/`."""

    stage_folder: str


class SnowflakeSink:
    name = "snowflake"
    # Parts only stage files (the one transaction is finish's); each step is retried on its own.
    capabilities: ClassVar[Capabilities] = Capabilities(parts_in_sequence=False, retries_own_steps=True,
                                                        holds="latest", replay_of_landed="skips",
                                                        replay_of_interrupted="whole")

    def __init__(self, settings: SnowflakeSinkConfig, context: SinkContext) -> None:
        self.settings = settings
        self.retry = self.settings.retry  # of each step (capabilities.retries_own_steps)
        # Checked up front (the config pattern already did): a bad pipeline name must not reach a path.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", context.pipeline):
            raise SinkRejected(f"Snowflake: pipeline name {context.pipeline!r} cannot name a stage folder")
        # Connections logged in and idle, reused by the next step (`_Session`): one login per run.
        self._idle: list[Any] = []
        self._idle_lock = threading.Lock()

    def take_connection(self) -> Any:
        """An idle connection of this sink's (logged in already), else a new one."""
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        return self.connect()

    def give_back(self, conn: Any) -> None:
        """Keep `conn` for the next step (a step that succeeded left no transaction open)."""
        with self._idle_lock:
            self._idle.append(conn)

    def close(self) -> None:
        """Log out of the idle connections."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def __del__(self) -> None:  # a sink dropped without close() (a check, a dimension load) logs out too
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:  # to a Ray worker: without connections or the lock
        return {**self.__dict__, "_idle": [], "_idle_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _idle_lock=threading.Lock())

    def discard_run(self, table: str, run_number: int) -> None:
        """Nothing to do: a run is visible only once its transaction committed, and the staging table and
        stage folder are replaced by the next load."""

    @property
    def where(self) -> str:
        s = self.settings
        return f"Snowflake {s.account}/{s.database}.{s.schema_}"

    def location(self, table: str) -> str:
        return f"{self.where}.{table.upper()}"

    def check_columns(self, table: str, schema: pa.Schema) -> None:
        """Every column a plain identifier, none equal to another but for case (Snowflake upper-cases
        them), and none whose stored type cannot hold this run's values."""
        import snowflake.connector.errors as sf_errors

        for name in schema.names:
            ident(name)
        refuse_case_clashes(f"Snowflake table {self._schema_name}.{table.upper()}", schema, [],
                            "Snowflake upper-cases into one column")
        session = _Session(self)
        try:
            existing = self._columns(session.cursor(), table)
        except sf_errors.Error as error:
            raise self._convert(error, doing=f"reading the columns of {table} in") from error
        finally:
            session.done()
        columns_to_add(table, schema, existing, self._schema_name)  # raises on a type its column cannot hold

    def begin(self, batch: TableBatch) -> SnowflakeBegun | None:
        """Step 1 (prepare). None if the run landed here already; else the stage folder of this attempt:
        a fresh one, so files an interrupted attempt staged are never loaded again."""
        session = _Session(self)
        try:
            if self._step(batch.table, "prepare", session, lambda cur: self._prepare(cur, batch)):
                return None
        finally:
            session.done()
        return SnowflakeBegun(f"{stage_prefix(self.settings.stage, batch)}{uuid.uuid4().hex[:12]}/")

    def write_part(self, batch: TableBatch, begun: SnowflakeBegun, *, part: int, last: bool) -> PartWrite:
        """Step 2 for one part: its region files PUT to the attempt's stage folder (on the worker
        holding the part, in parallel with the other parts)."""
        if batch.data.num_rows == 0:
            return PartWrite(0)
        session = _Session(self)
        _sweep_stale_folders()
        folder = Path(tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-"))
        try:
            files = _region_files(batch, folder, part)
            self._step(batch.table, "stage", session, lambda cur: self._put(cur, begun.stage_folder, files))
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
        with _WRITERS_GUARD:
            lock = _WRITERS.setdefault(self.location(batch.table), threading.Lock())
        with lock:
            session = _Session(self)
            try:
                if rows:
                    self._step(batch.table, "copy", session,
                               lambda cur: self._copy(cur, batch, begun.stage_folder, rows))
                deleted = self._step(batch.table, "merge", session,
                                     lambda cur: self._merge(cur, session.conn, batch, rows))
                failpoints.hit("snowflake.commit", batch.table)
                if rows:
                    self._cleanup(session, batch, begun.stage_folder)
                return SinkWrite(self.name, batch.table, sum(p.rows for p in parts),
                                 self.location(batch.table), regions=summed_regions(parts), deleted=deleted)
            finally:
                session.done()

    def _cleanup(self, session: _Session, batch: TableBatch, stage_folder: str) -> None:
        """Landed already: a failure here is logged (the next load replaces the staging table; staged
        files left behind cost storage only)."""
        for statement in (f"DROP TABLE IF EXISTS {_staging(batch)}", f"REMOVE {stage_folder}"):
            try:
                session.cursor().execute(statement)
            except Exception as error:
                log.info("%s -> snowflake: %s failed (%s)", batch.table, statement.split(" ")[0],
                         short_error(error))
                _drop_unless_refused(session, error)

    def read_back(self, table: str, columns: list[str]) -> pa.Table | None:
        """The target table's current rows; names lower-cased (as the source's), whole numbers as int64."""
        parts = list(self.scan(table, columns))
        return pa.concat_tables(parts) if parts else None

    def scan(self, table: str, columns: list[str]) -> Iterator[pa.Table]:
        """`read_back`'s rows in the pieces the connector fetches (none where there is no table, or no
        row)."""
        import snowflake.connector.errors as sf_errors

        s = self.settings
        selected = [*columns, "region"]
        session = _Session(self)
        try:
            cur = session.cursor()
            cur.execute("SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = %s "
                        "AND TABLE_NAME = %s",
                        (s.schema_.upper(), table.upper()))
            if not cur.fetchone()[0]:
                return
            # The delete mark's NULLs read with IS NULL too (the emulator returns a NULL TIMESTAMP_TZ as the
            # epoch)
            marks = [c for c in selected if c == DELETED_AT]
            cur.execute(
                "SELECT "
                f"{', '.join([*(ident(c) for c in selected), *(f'{ident(c)} IS NULL' for c in marks)])} "
                f"FROM {ident(table)}")
            for data in cur.fetch_arrow_batches():
                if marks:
                    data = data.set_column(selected.index(DELETED_AT), DELETED_AT, pc.if_else(
                        data.column(len(selected)),
                        pa.scalar(None, data.schema.field(selected.index(DELETED_AT)).type),
                        data.column(selected.index(DELETED_AT))))
                    data = data.select(list(range(len(selected))))
                yield _as_source_types(data.rename_columns(selected))
        except sf_errors.Error as error:
            raise self._convert(error, doing=f"reading {table} back from") from error
        finally:
            session.done()

    def probe(self) -> str | None:
        """Logs in and runs SELECT 1 (a closed port fails in seconds, before the connector's own waits)."""
        import snowflake.connector.errors as sf_errors

        s = self.settings
        if s.host and s.port:
            problem = unreachable(s.host, s.port)
            if problem:
                return f"{problem}: check sinks.snowflake host/port"
        try:
            conn = self.connect()
        except sf_errors.Error as error:
            return str(self._convert(error, doing="connecting to"))
        except LoaderError as error:  # an unreadable private key
            return str(error)
        try:
            conn.cursor().execute("SELECT 1")
        except sf_errors.Error as error:
            return str(self._convert(error, doing="querying"))
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return None

    def dimension_rows(self, spec: DimensionSpec, columns: Sequence[str] | None = None) -> pa.Table | None:
        """`columns` (all when None) of the rows of dimension `spec.table` (scd2: the current versions),
        names lower-cased, in the stored order and types (history.stored_schema of the landing schema);
        None if there is no table."""
        session = _Session(self)
        try:
            return self._step(spec.table, "read", session,
                              lambda cur: self._dimension_rows(cur, spec, columns))
        finally:
            session.done()

    def apply_dimension(self, spec: DimensionSpec, changes: DimensionChanges) -> None:
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
        prefix = (f"@{ident(self.settings.stage)}/{spec.pipeline}/dimensions/{spec.table}/"
                  f"{uuid.uuid4().hex[:12]}/")
        session = _Session(self)
        _sweep_stale_folders()
        folder = Path(tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-"))
        try:
            self._step(spec.table, "prepare", session, lambda cur: self._prepare_dimension(cur, spec, schema))
            files: dict[str, Path] = {}
            for side, rows in staged.items():
                (folder / side).mkdir()
                files[side] = folder / side / f"{side}.parquet"
                pq.write_table(rows, files[side])

            def put(cur: Any) -> None:  # one folder per side, for one COPY each
                for side, path in files.items():
                    self._put(cur, f"{prefix}{side}/", [path])

            self._step(spec.table, "stage", session, put)
            counts = {side: rows.num_rows for side, rows in staged.items()}
            self._step(spec.table, "copy", session,
                       lambda cur: self._copy_dimension(cur, spec, prefix, counts))
            self._step(spec.table, "apply", session,
                       lambda cur: self._apply_dimension(cur, session.conn, spec, list(schema.names),
                                                         set(staged)))
            self._cleanup_dimension(session, spec, prefix if staged else None)
        finally:
            session.done()
            shutil.rmtree(folder, ignore_errors=True)

    def _step(self, table: str, step: str, session: _Session, work: Callable[[Any], T]) -> T:
        """`work(cursor)` with retries of transient faults; connector errors become loader errors."""
        import snowflake.connector.errors as sf_errors

        def attempt() -> T:
            try:
                cur = session.cursor()
            except sf_errors.Error as error:
                session.discard()
                raise self._convert(error, doing="connecting to") from error
            try:
                return work(cur)
            except sf_errors.Error as error:
                session.discard()
                raise self._convert(error, doing=f"{step} of {table} in") from error
            except LoaderError:
                session.discard()
                raise

        return call_with_retries(f"{table} -> snowflake {step}", self.retry, attempt)

    def _prepare(self, cur: Any, batch: TableBatch) -> bool:
        """Create what is missing and widen the target; True if this run already landed here."""
        s = self.settings
        cur.execute(f"CREATE STAGE IF NOT EXISTS {ident(s.stage)}")
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {ident(s.ledger_table)} (PIPELINE VARCHAR NOT NULL, "
            f"TABLE_NAME VARCHAR NOT NULL, RUN_NUMBER NUMBER(19,0) NOT NULL, LOADED_AT TIMESTAMP_TZ, "
            f"ROWS_LOADED NUMBER(19,0), PRIMARY KEY (PIPELINE, TABLE_NAME, RUN_NUMBER))"
        )
        if self._landed(cur, batch):
            return True
        cluster = "region" if s.cluster_by_region else None
        target = _target_schema(batch)
        cur.execute(create_table_sql(batch.table, target, batch.key, cluster_by=cluster))
        if batch.deletes == "hard":
            cur.execute(create_table_sql(_tombstones_table(batch), _tombstones_schema(batch), batch.key,
                                         cluster_by=None))
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE FROM INFORMATION_SCHEMA.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (s.schema_.upper(), batch.table.upper()),
        )
        existing = {name: ColumnType(kind, precision, scale)
                    for name, kind, precision, scale in cur.fetchall()}
        for statement in columns_to_add(batch.table, target, existing, self._schema_name):
            log.info("%s -> snowflake: new source column: %s", batch.table, statement)
            cur.execute(statement)
        return False

    @property
    def _schema_name(self) -> str:
        return f"{self.settings.database}.{self.settings.schema_}"

    def _landed(self, cur: Any, batch: TableBatch) -> bool:
        cur.execute(
            f"SELECT COUNT(*) FROM {ident(self.settings.ledger_table)} "
            f"WHERE PIPELINE = %s AND TABLE_NAME = %s AND RUN_NUMBER = %s",
            (batch.pipeline, batch.table, batch.run_number),
        )
        return bool(cur.fetchone()[0])

    @staticmethod
    def _put(cur: Any, prefix: str, files: list[Path]) -> None:
        # One PUT for the part's region files (the folder is this part's own), uploaded in parallel;
        # OVERWRITE: a retry uploads the same names again.
        pattern = (files[0].parent / "*.parquet").as_posix()
        cur.execute(f"PUT 'file://{pattern}' {prefix} OVERWRITE=TRUE AUTO_COMPRESS=FALSE PARALLEL=4")

    def _copy(self, cur: Any, batch: TableBatch, prefix: str, rows: int) -> None:
        staging = _staging(batch)
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

    def _merge(self, cur: Any, conn: Any, batch: TableBatch, rows: int) -> int:
        """The target's upsert and the ledger row, in one transaction. Returns the keys the run's
        tombstones removed or marked (0 where an earlier try committed)."""
        failpoints.hit("snowflake.write", batch.table)
        with _transaction(conn):
            if self._landed(cur, batch):  # an earlier try committed but its acknowledgement was lost
                conn.rollback()
                return 0
            deleted = 0
            if rows and batch.deletes == "soft":  # MERGE's result mixes marks with updates: count first
                cur.execute(_marked_sql(batch))
                deleted = int(cur.fetchone()[0])
            if rows:
                cur.execute(_merge_sql(batch))
                if batch.deletes == "hard":
                    deleted = _merge_count(cur, "number of rows deleted")
                    for statement in _remember_tombstones_sql(batch):
                        cur.execute(statement)
            failpoints.hit("snowflake.merge", batch.table)
            cur.execute(
                f"INSERT INTO {ident(self.settings.ledger_table)} (PIPELINE, TABLE_NAME, RUN_NUMBER, "
                f"LOADED_AT, ROWS_LOADED) SELECT %s, %s, %s, CURRENT_TIMESTAMP(), %s",
                (batch.pipeline, batch.table, batch.run_number, rows),
            )
            conn.commit()
            return deleted

    def _columns(self, cur: Any, table: str) -> dict[str, ColumnType]:
        """`table`'s columns in their order (upper-case names); empty if there is no such table."""
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE FROM INFORMATION_SCHEMA.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (self.settings.schema_.upper(), table.upper()),
        )
        return {name: ColumnType(kind, precision, scale) for name, kind, precision, scale in cur.fetchall()}

    def _dimension_rows(self, cur: Any, spec: DimensionSpec, wanted: Sequence[str] | None) -> pa.Table | None:
        columns = self._columns(cur, spec.table)
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

    def _prepare_dimension(self, cur: Any, spec: DimensionSpec, schema: pa.Schema) -> None:
        cur.execute(f"CREATE STAGE IF NOT EXISTS {ident(self.settings.stage)}")
        key = (*spec.key, VALID_FROM) if spec.mode == "scd2" else spec.key  # scd2: versions per key
        cur.execute(create_table_sql(spec.table, schema, key, cluster_by=None))
        for statement in columns_to_add(spec.table, schema, self._columns(cur, spec.table),
                                        self._schema_name):
            log.info("%s -> snowflake: new dimension column: %s", spec.table, statement)
            cur.execute(statement)

    @staticmethod
    def _copy_dimension(cur: Any, spec: DimensionSpec, prefix: str, counts: dict[str, int]) -> None:
        for side, rows in counts.items():
            staging = _dimension_staging(spec, side)
            cur.execute(f"CREATE OR REPLACE TRANSIENT TABLE {staging} LIKE {ident(spec.table)}")
            cur.execute(f"COPY INTO {staging} FROM {prefix}{side}/ FILE_FORMAT=(TYPE=PARQUET) "
                        f"MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE FORCE=TRUE")
            cur.execute(f"SELECT COUNT(*) FROM {staging}")
            staged = cur.fetchone()[0]
            if staged != rows:
                raise SinkUnavailable(
                    f"Snowflake: {staging} holds {staged:,} rows after COPY, {rows:,} were staged: "
                    "copying again")

    @staticmethod
    def _apply_dimension(cur: Any, conn: Any, spec: DimensionSpec, columns: list[str],
                         staged: set[str]) -> None:
        """The changes in one transaction: all of them or none (a retry repeats the whole of it)."""
        with _transaction(conn):
            for statement in _dimension_sql(spec, columns, staged):
                cur.execute(statement)
            failpoints.hit("snowflake.dimension", spec.table)
            conn.commit()

    @staticmethod
    def _cleanup_dimension(session: _Session, spec: DimensionSpec, prefix: str | None) -> None:
        """Applied already: a failure here is logged (the next load replaces the staging tables; staged
        files left behind cost storage only)."""
        statements = [f"DROP TABLE IF EXISTS {_dimension_staging(spec, side)}"
                      for side in ("opens", "closes")]
        for statement in [*statements, *([f"REMOVE {prefix}"] if prefix else [])]:
            try:
                session.cursor().execute(statement)
            except Exception as error:
                log.info("%s -> snowflake: %s failed (%s)", spec.table, statement.split(" ")[0],
                         short_error(error))
                _drop_unless_refused(session, error)

    def connect(self) -> Any:
        import snowflake.connector

        s = self.settings
        options: dict[str, Any] = {
            "account": s.account, "user": s.user, "database": s.database, "schema": s.schema_,
            "login_timeout": s.login_timeout.total_seconds(),
            "network_timeout": s.network_timeout.total_seconds(),
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        }
        for name in ("role", "warehouse", "host", "port", "protocol"):
            if getattr(s, name) is not None:
                options[name] = getattr(s, name)
        if s.private_key_file or s.private_key:
            options["private_key"] = private_key_der(s)
        else:
            options["password"] = s.password
        return snowflake.connector.connect(**options)

    def _convert(self, error: Exception, *, doing: str) -> SinkError:
        """Driver error -> loader error naming the object and the fix; secrets are cut out."""
        from snowflake.connector import errors as e

        detail = short_error(error)
        for secret in (self.settings.password, self.settings.private_key_passphrase,
                       self.settings.private_key):
            if secret:
                detail = detail.replace(secret, "***")
        where = self.where
        text = detail.lower()
        session_lost = getattr(error, "errno", None) in _SESSION_LOST
        if (isinstance(error, e.DatabaseError) and not session_lost
                and any(word in text for word in _AUTH_WORDS)):
            return SinkRejected(
                f"{doing} {where} failed: authentication refused ({detail}). Check sinks.snowflake.user, "
                f"account and SNOWFLAKE_PASSWORD (or the private key), then run again: the run replays"
            )
        transient = (e.OperationalError, e.InterfaceError, e.InternalServerError, e.ServiceUnavailableError,
                     e.GatewayTimeoutError, e.BadGatewayError, e.OtherHTTPRetryableError,
                     e.RequestTimeoutError)
        if session_lost or (isinstance(error, transient) and not isinstance(error, e.ProgrammingError)):
            return SinkUnavailable(
                f"{doing} {where} failed: {detail}. Snowflake was unreachable or busy: check sinks.snowflake "
                f"host/account and the network, then run again: the run replays safely"
            )
        return SinkRejected(
            f"{doing} {where} failed: {detail}. Check that the role may use the database, schema and "
            f"warehouse and create stages and tables there (see docs/sinks.md, Snowflake), and that the "
            f"table's columns match the source, then run again: the run replays"
        )


def private_key_der(settings: SnowflakeSinkConfig) -> bytes:
    """The configured PEM private key (file or inline), decrypted with the passphrase if any, as the
    DER bytes the connector takes; a clear terminal error if it cannot be read."""
    from cryptography.hazmat.primitives import serialization

    where = (f"sinks.snowflake.private_key_file {settings.private_key_file}" if settings.private_key_file
             else "sinks.snowflake.private_key")
    try:
        inline = (settings.private_key or "").strip()
        if "\n" not in inline:  # a secret store that kept the PEM on one line, newlines as \n
            inline = inline.replace("\\n", "\n")
        pem = Path(settings.private_key_file).read_bytes() if settings.private_key_file else inline.encode()
    except OSError as error:
        raise SinkRejected(f"Snowflake: cannot read {where} ({error.strerror}): fix the path") from error
    passphrase = settings.private_key_passphrase.encode() if settings.private_key_passphrase else None
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError) as error:
        reason = str(error).split("\n")[0]
        raise SinkRejected(
            f"Snowflake: {where} is not a PEM private key this passphrase opens ({reason}): check the "
            f"key and sinks.snowflake.private_key_passphrase (needed only for an encrypted key)"
        ) from None
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _as_source_types(data: pa.Table) -> pa.Table:
    """NUMBER(p,0) columns, which the connector may return as decimals, as int64 (the source's keys are
    integers); everything else as it came."""
    fields = [pa.field(f.name, pa.int64()) if pa.types.is_decimal(f.type) and f.type.scale == 0 else f
              for f in data.schema]
    return data.cast(pa.schema(fields))


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


def _dimension_staging(spec: DimensionSpec, side: str) -> str:
    return ident(f"{spec.table}_LOADER_{side.upper()}")


@contextlib.contextmanager
def _transaction(conn: Any) -> Iterator[None]:
    """AUTOCOMMIT off for the block, which commits itself; an error rolls the transaction back (a lost
    connection rolls back on its own: the first error is kept) and goes on."""
    conn.autocommit(False)
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise
    finally:
        with contextlib.suppress(Exception):
            conn.autocommit(True)


def _dimension_sql(spec: DimensionSpec, columns: list[str], staged: set[str]) -> list[str]:
    """The statements applying a dimension load's staged `opens` and `closes` (those in `staged`)."""
    table, key = ident(spec.table), [ident(k) for k in spec.key]
    names = [ident(c) for c in columns]
    insert = f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join('o.' + c for c in names)} " \
             f"FROM {_dimension_staging(spec, 'opens')} o"
    closes = _dimension_staging(spec, "closes")
    statements = []
    if spec.mode == "scd2":
        version = " AND ".join(f"t.{k} = {{s}}.{k}" for k in [*key, ident(VALID_FROM)])
        if "closes" in staged:
            statements.append(f"UPDATE {table} t SET {ident(VALID_TO)} = c.{ident(VALID_TO)}, "
                              f"{ident(IS_CURRENT)} = FALSE "
                              f"FROM {closes} c WHERE {version.format(s='c')} AND t.{ident(IS_CURRENT)}")
        if "opens" in staged:  # versions stored already (a COMMIT whose acknowledgement was lost): not again
            statements.append(f"{insert} WHERE NOT EXISTS "
                              f"(SELECT 1 FROM {table} t WHERE {version.format(s='o')})")
        return statements
    if spec.mode == "replace":
        return [f"DELETE FROM {table}", *([insert] if "opens" in staged else [])]
    match = " AND ".join(f"t.{k} = s.{k}" for k in key)
    for side in ("closes", "opens"):  # merge: the closed keys deleted, the opened ones replaced
        if side in staged:
            statements.append(f"DELETE FROM {table} t USING {_dimension_staging(spec, side)} s WHERE {match}")
    if "opens" in staged:
        statements.append(insert)
    return statements


#: One writer lock per target table in this process (see `SnowflakeSink.finish`).
_WRITERS: dict[str, threading.Lock] = {}
_WRITERS_GUARD = threading.Lock()


def _staging(batch: TableBatch) -> str:
    return ident(f"{batch.table}_LOADER_STAGING")


def _target_schema(batch: TableBatch) -> pa.Schema:
    """The target's columns: the batch's, without the tombstone flag; soft deletes add `_DELETED_AT`
    (nullable, the cursor's type)."""
    schema = batch.data.schema
    if batch.deletes is None:
        return schema
    if DELETED in schema.names:
        schema = schema.remove(schema.get_field_index(DELETED))
    if batch.deletes == "soft" and DELETED_AT not in schema.names:
        schema = schema.append(pa.field(DELETED_AT, schema.field(batch.cursor).type, nullable=True))
    return schema


def _tombstones_table(batch: TableBatch) -> str:
    """The table remembering a hard-deleting target's tombstones (unquoted; `ident` quotes it)."""
    return f"{batch.table}__TOMBSTONES"


def _tombstones_schema(batch: TableBatch) -> pa.Schema:
    schema = batch.data.schema
    return pa.schema([schema.field(k) for k in batch.key] + [schema.field(batch.cursor)])


def _remember_tombstones_sql(batch: TableBatch) -> list[str]:
    """After the target's MERGE, in its transaction: the entries of keys a newer live version revived
    removed, the staged tombstones moved to a newer cursor or inserted. Plain DML, not a MERGE (the
    emulator runs a MERGE through DDL of its own, which would commit the transaction early)."""
    key, cursor, flag = [ident(k) for k in batch.key], ident(batch.cursor), ident(DELETED)
    columns = [*key, cursor]
    table, latest = ident(_tombstones_table(batch)), _latest_sql(batch, [*columns, flag])
    match = " AND ".join(f"t.{k} = s.{k}" for k in key)
    newer = f"s.{cursor} > t.{cursor}"
    return [
        f"DELETE FROM {table} t USING ({latest}) s WHERE {match} AND NOT s.{flag} AND {newer}",
        f"UPDATE {table} t SET {cursor} = s.{cursor} FROM ({latest}) s "
        f"WHERE {match} AND s.{flag} AND {newer}",
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join('s.' + c for c in columns)} "
        f"FROM ({latest}) s WHERE s.{flag} AND NOT EXISTS (SELECT 1 FROM {table} t WHERE {match})",
    ]


def _latest_sql(batch: TableBatch, columns: list[str]) -> str:
    """The staged rows, one per key: the greatest cursor's, a tombstone winning a tie (the delete rule
    of every sink, loader/sinks/base.py)."""
    key, cursor = [ident(k) for k in batch.key], ident(batch.cursor)
    flagged = batch.deletes is not None and DELETED in batch.data.schema.names
    tie = f", {ident(DELETED)} DESC" if flagged else ""
    return (f"SELECT {', '.join(columns)} FROM {_staging(batch)} "
            f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {', '.join(key)} ORDER BY {cursor} DESC{tie}) = 1")


def _merge_sql(batch: TableBatch) -> str:
    """A newer version updates the stored row; one with the stored cursor changes nothing: the version
    landed first stays, as in Delta and the Parquet log (the lookback re-reads versions every run, and
    its dimension version may differ from the one they loaded with)."""
    if batch.deletes is not None:
        return _merge_with_deletes_sql(batch)
    columns = [ident(c) for c in batch.data.column_names]
    key, cursor = [ident(k) for k in batch.key], ident(batch.cursor)
    latest = _latest_sql(batch, columns)
    updates = ", ".join(f"{c} = s.{c}" for c in columns if c not in key)
    return (
        f"MERGE INTO {ident(batch.table)} t USING ({latest}) s "
        f"ON {' AND '.join(f't.{k} = s.{k}' for k in key)} "
        f"WHEN MATCHED AND s.{cursor} > t.{cursor} THEN UPDATE SET {updates} "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)}) VALUES ({', '.join('s.' + c for c in columns)})"
    )


def _merge_with_deletes_sql(batch: TableBatch) -> str:
    """The MERGE of a batch with deletes: the first WHEN that holds applies. A tombstone removes (hard)
    or marks (soft) a stored version no newer than itself; a live version updates as without deletes
    (soft: and revives the key unless it was deleted at its cursor or later: the newest version
    decides); tombstones are never inserted."""
    stored = [ident(f.name) for f in _target_schema(batch) if f.name != DELETED_AT]
    key, cursor, flag = [ident(k) for k in batch.key], ident(batch.cursor), ident(DELETED)
    latest = _latest_sql(batch, [*stored, flag])
    updates = ", ".join(f"{c} = s.{c}" for c in stored if c not in key)
    tombstone, live = f"s.{flag} AND t.{cursor} <= s.{cursor}", f"NOT s.{flag}"
    if batch.deletes == "hard":  # live versions no newer than their key's remembered tombstone: left out
        join = " AND ".join(f"d.{k} = l.{k}" for k in key)
        latest = (f"SELECT l.* FROM ({latest}) l LEFT JOIN {ident(_tombstones_table(batch))} d ON {join} "
                  f"WHERE l.{flag} OR d.{cursor} IS NULL OR l.{cursor} > d.{cursor}")
    merge = (f"MERGE INTO {ident(batch.table)} t USING ({latest}) s "
             f"ON {' AND '.join(f't.{k} = s.{k}' for k in key)} ")
    insert = (f"WHEN NOT MATCHED AND {live} THEN INSERT ({', '.join(stored)}) "
              f"VALUES ({', '.join('s.' + c for c in stored)})")
    if batch.deletes == "hard":
        return (f"{merge}WHEN MATCHED AND {tombstone} THEN DELETE "
                f"WHEN MATCHED AND {live} AND s.{cursor} > t.{cursor} THEN UPDATE SET {updates} {insert}")
    marked = f"t.{ident(DELETED_AT)}"
    return (
        f"{merge}WHEN MATCHED AND {tombstone} AND ({marked} IS NULL OR {marked} < s.{cursor}) "
        f"THEN UPDATE SET {ident(DELETED_AT)} = s.{cursor} "
        f"WHEN MATCHED AND {live} AND s.{cursor} > t.{cursor} THEN UPDATE SET {updates}, "
        f"{ident(DELETED_AT)} = CASE WHEN {marked} >= s.{cursor} THEN {marked} ELSE NULL END {insert}"
    )


def _marked_sql(batch: TableBatch) -> str:
    """How many stored rows the soft MERGE's tombstones will mark (run inside its transaction, first)."""
    stored = [ident(f.name) for f in _target_schema(batch) if f.name != DELETED_AT]
    key, cursor, flag, marked = ([ident(k) for k in batch.key], ident(batch.cursor), ident(DELETED),
                                 ident(DELETED_AT))
    return (
        f"SELECT COUNT(*) FROM ({_latest_sql(batch, [*stored, flag])}) s JOIN {ident(batch.table)} t "
        f"ON {' AND '.join(f't.{k} = s.{k}' for k in key)} WHERE s.{flag} AND t.{cursor} <= s.{cursor} "
        f"AND (t.{marked} IS NULL OR t.{marked} < s.{cursor})"
    )


def _merge_count(cur: Any, column: str) -> int:
    """One count of MERGE's result row, by its column name (the columns follow the WHEN clauses)."""
    names = [d[0].lower() for d in (cur.description or [])]
    result = cur.fetchone()
    return int(result[names.index(column)]) if result is not None and column in names else 0


def _region_files(batch: TableBatch, folder: Path, part: int) -> list[Path]:
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


if TYPE_CHECKING:  # mypy checks the class against the whole contract, with its own token
    from loader.sinks.base import Sink

    _CONFORMS: type[Sink[SnowflakeBegun]] = SnowflakeSink


__all__ = ["SnowflakeBegun", "SnowflakeSink", "private_key_der", "stage_prefix"]
