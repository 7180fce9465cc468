"""Snowflake identifiers and types: what the sink may put in SQL, and how an Arrow schema maps onto a
target table (created from it, widened by new nullable columns, refused on a type conflict)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from loader.errors import SinkRejected
from loader.sinks.snowflake.config import SNOWFLAKE_IDENTIFIER

_IDENTIFIER = re.compile(SNOWFLAKE_IDENTIFIER)
_TIMESTAMP_SCALE = {"s": 0, "ms": 3, "us": 6, "ns": 9}


def ident(name: str) -> str:
    """`name` upper-cased and quoted, after checking it is a plain identifier (never SQL)."""
    if not _IDENTIFIER.fullmatch(name):  # not `match`: `$` would let a trailing newline through
        raise SinkRejected(
            f"Snowflake: {name!r} is not a plain identifier (letters, digits, _ and $): rename the column "
            f"or the configured object"
        )
    return f'"{name.upper()}"'


@dataclass(frozen=True)
class ColumnType:
    """A Snowflake column type as INFORMATION_SCHEMA.COLUMNS reports it (DATA_TYPE, precision, scale)."""

    family: str  # NUMBER, TEXT, FLOAT, BOOLEAN, DATE, TIMESTAMP_TZ, TIMESTAMP_NTZ, ...
    precision: int | None = None
    scale: int | None = None

    def accepts(self, source: ColumnType) -> bool:
        """Can a column of this type hold every value of `source` unchanged?"""
        if self.family != source.family:
            return False
        if self.family == "NUMBER":
            return self.scale == source.scale and (self.precision or 38) >= (source.precision or 38)
        return True

    def __str__(self) -> str:
        return f"NUMBER({self.precision},{self.scale})" if self.family == "NUMBER" else self.family


def column_type(field: pa.Field) -> tuple[str, ColumnType]:
    """The exact Snowflake type of an Arrow column (DDL text, comparable type): money stays
    NUMBER(p,s), never FLOAT; a timestamp with a time zone is TIMESTAMP_TZ, without one TIMESTAMP_NTZ."""
    t = field.type
    if pa.types.is_decimal(t):
        return f"NUMBER({t.precision},{t.scale})", ColumnType("NUMBER", t.precision, t.scale)
    if pa.types.is_integer(t):
        precision = 20 if t == pa.uint64() else 19
        return f"NUMBER({precision},0)", ColumnType("NUMBER", precision, 0)
    if pa.types.is_boolean(t):
        return "BOOLEAN", ColumnType("BOOLEAN")
    if pa.types.is_date(t):
        return "DATE", ColumnType("DATE")
    if pa.types.is_timestamp(t):
        kind = "TIMESTAMP_TZ" if t.tz else "TIMESTAMP_NTZ"
        return f"{kind}({_TIMESTAMP_SCALE[t.unit]})", ColumnType(kind)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return "VARCHAR", ColumnType("TEXT")
    if pa.types.is_floating(t):
        return "FLOAT", ColumnType("FLOAT")
    raise SinkRejected(
        f"Snowflake: column {field.name!r} has Arrow type {t}, which this sink does not map: cast it in the "
        f"transform to decimal, integer, date, timestamp, boolean or string"
    )


def create_table_sql(table: str, schema: pa.Schema, key: tuple[str, ...], *, cluster_by: str | None) -> str:
    columns = ", ".join(f"{ident(f.name)} {column_type(f)[0]}" for f in schema)
    cluster = f" CLUSTER BY ({ident(cluster_by)})" if cluster_by and cluster_by in schema.names else ""
    return (f"CREATE TABLE IF NOT EXISTS {ident(table)} ({columns}, "
            f"PRIMARY KEY ({', '.join(ident(k) for k in key)})){cluster}")


def columns_to_add(table: str, schema: pa.Schema, existing: dict[str, ColumnType], where: str) -> list[str]:
    """ALTER statements adding the source's new columns (nullable); a column whose existing type
    cannot hold the source's values is a terminal error naming both types and the fix."""
    statements = []
    for field in schema:
        ddl, wanted = column_type(field)
        have = existing.get(field.name.upper())
        if have is None:
            statements.append(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(field.name)} {ddl}")
        elif not have.accepts(wanted):
            raise SinkRejected(
                f"Snowflake: {where}.{table.upper()}.{field.name.upper()} is {have} but the source now sends "
                f"{wanted} ({field.type}): the loader never changes an existing column's type. Either "
                f"ALTER the column to {wanted} (or a wider type), or rename/drop the table to let the loader "
                f"recreate it, then run again: the run replays"
            )
    return statements


__all__ = ["ColumnType", "column_type", "columns_to_add", "create_table_sql", "ident"]
