"""The small dimension the history tests share (unit and sink conformance): key `id`, two tracked
columns, and for change files an `updated_at` cursor; rows built as the loader builds them (hashed)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pyarrow as pa

from loader.transform.dimension_changes import TIME, tracked_columns, with_hash

KEY = ("id",)
CURSOR = "updated_at"
SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string()),
                    pa.field("amount", pa.decimal128(15, 2))])
CHANGE_SCHEMA = SCHEMA.append(pa.field(CURSOR, TIME))


def snapshot(rows: dict[int, tuple[str, str]]) -> pa.Table:
    """A full snapshot: key -> (name, amount as text), with its row hash."""
    data = pa.Table.from_pylist(
        [{"id": k, "name": n, "amount": Decimal(a)} for k, (n, a) in sorted(rows.items())], schema=SCHEMA)
    return with_hash(data, tracked_columns(data.column_names, KEY, None, None))


def changes_of(rows: list[tuple[int, str, str, datetime]]) -> pa.Table:
    """Change-file rows (key, name, amount as text, cursor), with their row hash."""
    data = pa.Table.from_pylist(
        [{"id": k, "name": n, "amount": Decimal(a), CURSOR: c} for k, n, a, c in rows], schema=CHANGE_SCHEMA)
    return with_hash(data, tracked_columns(data.column_names, KEY, CURSOR, None))
