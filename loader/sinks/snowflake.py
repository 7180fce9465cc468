"""Snowflake: one table per source holding the latest version of each key, plus a ledger of landed runs.

Per table and run: Parquet files (one per region, named by run) are PUT to `@<stage>/<pipeline>/<table>/
run=<n>/` with OVERWRITE (a retry re-uploads the same names), COPY'd (and purged) into a transient
staging table `<TABLE>_LOADER_STAGING`, dropped after the commit. Then ONE transaction replaces the
target's rows whose version is not newer than the staged one, inserts the staged rows whose key is
absent, and inserts (pipeline, table, run) into the ledger.
A replay that finds its run in the ledger skips; a crash before COMMIT leaves nothing behind but
staged files and the staging table, which the next attempt overwrites. Identifiers come from the validated config or the
batch's column names (checked against the same pattern) and are always quoted.

The upsert is DELETE + INSERT rather than MERGE: same result (the staged rows are unique per key and
the newer-or-equal cursor wins), and fakesnow 0.12.1, the emulator the tests use, fails a MERGE
inside an explicit transaction.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loader import failpoints
from loader.config import SNOWFLAKE_IDENTIFIER, LoaderConfig, SnowflakeSinkConfig
from loader.errors import SinkError, SinkRejected, SinkUnavailable
from loader.sinks.base import SinkWrite, TableBatch, region_counts
from loader.storage import short_error

_IDENTIFIER = re.compile(SNOWFLAKE_IDENTIFIER)
_TIMESTAMP_SCALE = {"s": 0, "ms": 3, "us": 6, "ns": 9}
_AUTH_WORDS = ("password", "authenticat", "login", "jwt", "private key", "user is locked", "mfa")


def ident(name: str) -> str:
    """`name` upper-cased and quoted, after checking it is a plain identifier (never SQL)."""
    if not _IDENTIFIER.match(name):
        raise SinkRejected(
            f"Snowflake: {name!r} is not a plain identifier (letters, digits, _ and $): rename the column "
            f"or the configured object"
        )
    return f'"{name.upper()}"'


def snowflake_type(field: pa.Field) -> str:
    """The exact Snowflake type of an Arrow column: money stays NUMBER(p,s), never FLOAT."""
    t = field.type
    if pa.types.is_decimal(t):
        return f"NUMBER({t.precision},{t.scale})"
    if pa.types.is_integer(t):
        return "NUMBER(20,0)" if t == pa.uint64() else "NUMBER(19,0)"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        kind = "TIMESTAMP_TZ" if t.tz else "TIMESTAMP_NTZ"
        return f"{kind}({_TIMESTAMP_SCALE[t.unit]})"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return "VARCHAR"
    if pa.types.is_floating(t):
        return "FLOAT"
    raise SinkRejected(
        f"Snowflake: column {field.name!r} has Arrow type {t}, which this sink does not map: cast it in the "
        f"transform to decimal, integer, date, timestamp, boolean or string"
    )


def stage_prefix(stage: str, batch: TableBatch) -> str:
    return f"@{ident(stage)}/{batch.pipeline}/{batch.table}/run={batch.run_number}/"


class SnowflakeSink:
    name = "snowflake"

    def __init__(self, config: LoaderConfig) -> None:
        self.settings: SnowflakeSinkConfig = config.sinks.snowflake
        self.retry = self.settings.retry
        # Checked up front (the config pattern already did): a bad pipeline name must not reach a path.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", config.pipeline):
            raise SinkRejected(f"Snowflake: pipeline name {config.pipeline!r} cannot name a stage folder")

    @property
    def where(self) -> str:
        s = self.settings
        return f"Snowflake {s.account}/{s.database}.{s.schema_}"

    def write(self, batch: TableBatch) -> SinkWrite:
        import snowflake.connector.errors as sf_errors

        target = f"{self.where}.{batch.table.upper()}"
        try:
            conn = self._connect()
        except sf_errors.Error as error:
            raise self._convert(error, doing="connecting to") from error
        try:
            return self._write(conn, batch, target)
        except sf_errors.Error as error:
            raise self._convert(error, doing=f"loading {batch.table} into") from error
        finally:
            with contextlib.suppress(sf_errors.Error):
                conn.close()

    def _write(self, conn: Any, batch: TableBatch, target: str) -> SinkWrite:
        cur = conn.cursor()
        s = self.settings
        ledger, table = ident(s.ledger_table), ident(batch.table)
        columns = [ident(c) for c in batch.data.column_names]
        key = [ident(k) for k in batch.key]
        cursor = ident(batch.cursor)
        cur.execute(f"CREATE STAGE IF NOT EXISTS {ident(s.stage)}")
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {ledger} (PIPELINE VARCHAR NOT NULL, TABLE_NAME VARCHAR NOT NULL, "
            f"RUN_NUMBER NUMBER(19,0) NOT NULL, LOADED_AT TIMESTAMP_TZ, ROWS_LOADED NUMBER(19,0), "
            f"PRIMARY KEY (PIPELINE, TABLE_NAME, RUN_NUMBER))"
        )
        definition = ", ".join(f"{ident(f.name)} {snowflake_type(f)}" for f in batch.data.schema)
        cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({definition}, PRIMARY KEY ({', '.join(key)}))")
        cur.execute(
            f"SELECT COUNT(*) FROM {ledger} WHERE PIPELINE = %s AND TABLE_NAME = %s AND RUN_NUMBER = %s",
            (batch.pipeline, batch.table, batch.run_number),
        )
        if cur.fetchone()[0]:
            return SinkWrite(self.name, batch.table, 0, target, skipped=True)

        data = batch.data
        staging = ident(f"{batch.table}_LOADER_STAGING")
        if data.num_rows:
            prefix = stage_prefix(s.stage, batch)
            self._put(cur, batch, prefix)
            cur.execute(f"CREATE OR REPLACE TRANSIENT TABLE {staging} LIKE {table}")
            # FORCE: the staging table is new, load every file; PURGE: staged files go once loaded.
            cur.execute(
                f"COPY INTO {staging} FROM {prefix} FILE_FORMAT=(TYPE=PARQUET) "
                f"MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE FORCE=TRUE PURGE=TRUE"
            )
        failpoints.hit("snowflake.write", batch.table)
        cur.execute("BEGIN")
        try:
            if data.num_rows:
                on = " AND ".join(f"t.{k} = s.{k}" for k in key)
                cur.execute(f"DELETE FROM {table} t USING {staging} s WHERE {on} AND s.{cursor} >= t.{cursor}")
                cur.execute(
                    f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join('s.' + c for c in columns)} "
                    f"FROM {staging} s WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {on})"
                )
            cur.execute(
                f"INSERT INTO {ledger} (PIPELINE, TABLE_NAME, RUN_NUMBER, LOADED_AT, ROWS_LOADED) "
                f"SELECT %s, %s, %s, CURRENT_TIMESTAMP(), %s",
                (batch.pipeline, batch.table, batch.run_number, data.num_rows),
            )
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # a lost connection rolls back on its own; keep the first error
                cur.execute("ROLLBACK")
            raise
        failpoints.hit("snowflake.commit", batch.table)
        if data.num_rows:
            cur.execute(f"DROP TABLE IF EXISTS {staging}")
        return SinkWrite(self.name, batch.table, data.num_rows, target, regions=region_counts(data))

    @staticmethod
    def _put(cur: Any, batch: TableBatch, prefix: str) -> None:
        """One Parquet file per region, named by run and region, so a retry overwrites the same names."""
        folder = Path(tempfile.mkdtemp(prefix="loader-snowflake-"))
        try:
            regions = batch.data["region"].unique().to_pylist()
            for number, region in enumerate(sorted(regions, key=str)):
                rows = batch.data.filter(pc.equal(batch.data["region"], region)) if region is not None else (
                    batch.data.filter(pc.is_null(batch.data["region"]))
                )
                safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(region)) or str(number)
                path = folder / f"run-{batch.run_number}-{safe}.parquet"
                pq.write_table(rows, path)
                cur.execute(f"PUT 'file://{path.as_posix()}' {prefix} OVERWRITE=TRUE AUTO_COMPRESS=FALSE")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _connect(self) -> Any:
        import snowflake.connector

        s = self.settings
        options: dict[str, Any] = {
            "account": s.account, "user": s.user, "database": s.database, "schema": s.schema_,
            "login_timeout": s.login_timeout.total_seconds(), "network_timeout": s.network_timeout.total_seconds(),
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        }
        for name in ("role", "warehouse", "host", "port", "protocol"):
            if getattr(s, name) is not None:
                options[name] = getattr(s, name)
        if s.private_key_file:
            options["private_key_file"] = s.private_key_file
            if s.private_key_passphrase:
                options["private_key_file_pwd"] = s.private_key_passphrase
        else:
            options["password"] = s.password
        return snowflake.connector.connect(**options)

    def _convert(self, error: Exception, *, doing: str) -> SinkError:
        """Driver error -> loader error naming the object and the fix; the password is cut out."""
        from snowflake.connector import errors as e

        detail = short_error(error)
        for secret in (self.settings.password, self.settings.private_key_passphrase):
            if secret:
                detail = detail.replace(secret, "***")
        where = self.where
        text = detail.lower()
        if isinstance(error, e.DatabaseError) and any(word in text for word in _AUTH_WORDS):
            return SinkRejected(
                f"{doing} {where} failed: authentication refused ({detail}). Check sinks.snowflake.user, "
                f"account and SNOWFLAKE_PASSWORD (or private_key_file), then run again: the run replays"
            )
        transient = (e.OperationalError, e.InterfaceError, e.InternalServerError, e.ServiceUnavailableError,
                     e.GatewayTimeoutError, e.BadGatewayError, e.OtherHTTPRetryableError, e.RequestTimeoutError)
        if isinstance(error, transient) and not isinstance(error, e.ProgrammingError):
            return SinkUnavailable(
                f"{doing} {where} failed: {detail}. Snowflake was unreachable or busy: check sinks.snowflake "
                f"host/account and the network, then run again: the run replays safely"
            )
        return SinkRejected(
            f"{doing} {where} failed: {detail}. Check that the role may use the database, schema and "
            f"warehouse and create stages and tables there (see README, Snowflake), and that the table's "
            f"columns match the source, then run again: the run replays"
        )


__all__ = ["SnowflakeSink", "ident", "snowflake_type"]
