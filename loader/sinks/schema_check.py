"""A run's columns against what a sink already stores: a column whose type changed is refused before
anything is written (terminal, naming the columns and the fix), never silently cast or rounded; so is a
column whose name differs from another only in case, for sinks whose names ignore case. Each sink's
`check_columns` runs these for every table of a batch before any sink writes (loader/protocol/steps.py)."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from loader.errors import SinkRejected


def _normal(t: pa.DataType) -> str:
    """Types that hold the same values compare equal: string vs large_string, the time zone's spelling,
    a timestamp's unit (Delta keeps every timestamp in microseconds, whatever unit arrived)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_timestamp(t):
        return "timestamp with time zone" if t.tz else "timestamp"
    return str(t)


def type_conflicts(stored: pa.Schema, incoming: pa.Schema) -> list[str]:
    """'column: stored T1, this run T2' for every column both have with different types."""
    conflicts = []
    for field in incoming:
        index = stored.get_field_index(field.name)
        if index >= 0 and _normal(stored.field(index).type) != _normal(field.type):
            conflicts.append(f"{field.name}: stored {stored.field(index).type}, this run {field.type}")
    return conflicts


def refuse_type_changes(where: str, stored: pa.Schema, incoming: pa.Schema, fix: str) -> None:
    conflicts = type_conflicts(stored, incoming)
    if conflicts:
        raise SinkRejected(
            f"{where}: its schema has other column types than this run's ({'; '.join(conflicts)}); "
            f"the loader never casts a stored column. {fix}, then run again: the run replays"
        )


def refuse_case_clashes(where: str, incoming: pa.Schema, stored: Iterable[str], why: str) -> None:
    """Refuse a column of this run whose name equals another's of the run, or a stored column's, but for
    case (where the sink's names ignore case: the two would be one column, or a crash)."""
    seen: dict[str, str] = {name.lower(): name for name in stored}
    clashes = []
    for name in incoming.names:
        other = seen.get(name.lower())
        if other is not None and other != name:
            clashes.append(f"{name!r} and {other!r}")
        seen.setdefault(name.lower(), name)
    if clashes:
        raise SinkRejected(
            f"{where}: column names that differ only in case ({'; '.join(clashes)}), which {why}. Rename the "
            "landing column (or drop it from the files), then run again: nothing was written"
        )


def refuse_unwritable_names(where: str, incoming: pa.Schema) -> None:
    """Refuse an empty column name, or one holding a control character (a NUL cuts a name short in
    Parquet's and Delta's native code: the column would be stored under another name)."""
    bad = [name for name in incoming.names if not name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)]
    if bad:
        raise SinkRejected(
            f"{where}: column name(s) {', '.join(repr(n) for n in bad)} empty or holding control characters, "
            "which it cannot store as they are. Rename the landing column (or drop it from the files), then "
            "run again: nothing was written"
        )


__all__ = ["refuse_case_clashes", "refuse_type_changes", "refuse_unwritable_names", "type_conflicts"]
