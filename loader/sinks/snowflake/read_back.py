"""What `loader verify` reads back from Snowflake: a target table's current rows, names lower-cased (as
the source's), whole numbers as int64, whole (`read_back`) or in the pieces the connector fetches
(`scan`)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from loader.sinks.base import DELETED_AT
from loader.sinks.snowflake.config import SnowflakeSinkConfig
from loader.sinks.snowflake.connection import ConnectionPool, Session, convert
from loader.sinks.snowflake.schema import ident


def read_back(pool: ConnectionPool, settings: SnowflakeSinkConfig, table: str,
              columns: list[str]) -> pa.Table | None:
    """The target table's current rows; names lower-cased (as the source's), whole numbers as int64."""
    parts = list(scan(pool, settings, table, columns))
    return pa.concat_tables(parts) if parts else None


def scan(pool: ConnectionPool, settings: SnowflakeSinkConfig, table: str,
         columns: list[str]) -> Iterator[pa.Table]:
    """`read_back`'s rows in the pieces the connector fetches (none where there is no table, or no
    row)."""
    import snowflake.connector.errors as sf_errors

    s = settings
    selected = [*columns, "region"]
    session = Session(pool)
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
        raise convert(settings, error, doing=f"reading {table} back from") from error
    finally:
        session.done()


def _as_source_types(data: pa.Table) -> pa.Table:
    """NUMBER(p,0) columns, which the connector may return as decimals, as int64 (the source's keys are
    integers); everything else as it came."""
    fields = [pa.field(f.name, pa.int64()) if pa.types.is_decimal(f.type) and f.type.scale == 0 else f
              for f in data.schema]
    return data.cast(pa.schema(fields))


__all__ = ["read_back", "scan"]
