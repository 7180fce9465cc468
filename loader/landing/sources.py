"""Reading the landing zone: the planned row groups of a source, screened (read checks, window filter)
as they are read, and the dimension tables. Used by the in-process executor; the Ray executor reads the
same planned files and screens them in its stage tasks (the same `screen`, through
loader/execute/stages.py)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from loader.errors import BadSourceData
from loader.landing.files import list_files, missing_deletes_column, opened_parquet
from loader.landing.plans import FilePlan, SourcePlan
from loader.landing.quarantine import merge_bad, split_bad_rows
from loader.storage import Location, locate
from state import Window

_STRINGISH = (pa.types.is_large_string, pa.types.is_string_view)


def normalize_strings(table: pa.Table) -> pa.Table:
    """Cast top-level string_view and large_string columns to plain string.

    tpchgen and some readers produce string_view, which several pyarrow kernels (take, filter on
    tables) and cuDF's Arrow import reject; one string type also keeps batch schemas identical for
    concatenation and sinks. Returns the same table object when nothing needs casting.
    """
    fields = [
        f.with_type(pa.string()) if any(check(f.type) for check in _STRINGISH) else f for f in table.schema
    ]
    schema = pa.schema(fields, metadata=table.schema.metadata)
    if schema.equals(table.schema):
        return table
    return table.cast(schema)


def window_mask(table: pa.Table | pa.RecordBatch, cursor: str, window: Window) -> pa.Array:
    """Rows with lower < cursor <= upper."""
    values = table.column(cursor)
    upper = pa.scalar(window.upper, type=values.type)
    mask = pc.less_equal(values, upper)
    if window.lower is not None:
        mask = pc.and_(mask, pc.greater(values, pa.scalar(window.lower, type=values.type)))
    return mask


def rows_in_window(table: pa.Table, *, source: str, cursor: str, window: Window) -> pa.Table:
    """The rows inside the window; a null cursor fails the run (a filter would drop it silently).
    Strings become plain strings first: pyarrow's filter has no kernel for string_view."""
    if cursor not in table.column_names:
        raise BadSourceData(f"a file of source {source!r} has no cursor column {cursor!r}: "
                            "fix the file or the config")
    nulls = table[cursor].null_count
    if nulls:
        raise BadSourceData(
            f"{nulls} row(s) of source {source!r} have a null cursor {cursor!r}: "
            f"fix or remove those rows in the landing zone, then run again (the run replays)"
        )
    table = normalize_strings(table)
    mask = window_mask(table, cursor, window)
    if pc.all(mask).as_py():  # the common case for whole files: spare a copy
        return table
    return table.filter(mask)


def _read_file(plan: SourcePlan, file: FilePlan, cursor: str, checks: Checks,
               deletes: str | None = None) -> tuple[pa.Table, pa.Table]:
    goods, bads = [], []
    with opened_parquet(plan.location, file.path, what=f"source {plan.source!r}") as parquet:
        if deletes is not None and deletes not in parquet.schema_arrow.names:
            raise missing_deletes_column(file.path, plan.source, deletes)
        # One row group at a time, filtered at once: a batch whose window takes a sliver of a large
        # row group holds the sliver, not the row group.
        for group in file.row_groups:
            table = parquet.read_row_group(group)
            if cursor not in table.column_names:
                raise BadSourceData(f"{file.path}: a file of source {plan.source!r} has no cursor column "
                                    f"{cursor!r}: fix the file or the config")
            good, bad = screen(table, source=plan.source, cursor=cursor, window=plan.window, checks=checks)
            del table
            goods.append(good)
            bads.append(bad)
    try:
        return pa.concat_tables(goods, promote_options="permissive"), merge_bad(bads)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise BadSourceData(f"row groups of {file.path} in source {plan.source!r} disagree on column types: "
                            f"{error}. Rewrite the file") from error


@dataclass(frozen=True)
class Checks:
    """What the quarantine checks at read time need (loader/landing/quarantine.py)."""

    key: tuple[str, ...]
    now: datetime
    tolerance_s: float


def screen(rows: pa.Table, *, source: str, cursor: str, window: Window,
           checks: Checks) -> tuple[pa.Table, pa.Table]:
    """The first stage of the chain (loader/execute/stages.py): the quarantine's read checks, then the
    window filter. Returns (the rows inside the window, the rows that failed a check with their reason)."""
    good, bad = split_bad_rows(normalize_strings(rows), key=checks.key, cursor=cursor, now=checks.now,
                               tolerance_s=checks.tolerance_s)
    return rows_in_window(good, source=source, cursor=cursor, window=window), bad


def read_source(plan: SourcePlan, *, cursor: str, checks: Checks,
                deletes: str | None = None) -> tuple[pa.Table, pa.Table | None]:
    """Every row of the window from the planned row groups, as one table with plain strings, and the
    rows of those row groups that failed the quarantine checks (or None): `screen`ed one row group at
    a time, as it is read. `deletes`: the column marking upstream deletes, which every file must have."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda f: _read_file(plan, f, cursor, checks, deletes), plan.files))
    if not results:
        raise BadSourceData(f"source {plan.source!r} has no files planned; nothing to read")
    parts = [good for good, _ in results]
    bad = merge_bad([b for _, b in results])
    try:
        # "permissive": a column only newer files have (a new nullable column) is null in the older ones
        return pa.concat_tables(parts, promote_options="permissive"), bad
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        changed = type_changes(plan, parts)
        raise BadSourceData(
            f"files of source {plan.source!r} disagree on column types: {changed or error}. A type that "
            "cannot widen safely is refused; nothing was written and the checkpoint stays. Rewrite the files "
            "with the old type, or move them away"
        ) from error


def type_changes(plan: SourcePlan, parts: list[pa.Table]) -> str:
    """'column: T1 in <file>, T2 in <file>' for every column whose type differs between the planned files."""
    seen: dict[str, dict[str, str]] = {}
    for file, part in zip(plan.files, parts, strict=True):
        for field in part.schema:
            seen.setdefault(field.name, {}).setdefault(str(field.type), file.path)
    return "; ".join(
        f"{column}: " + ", ".join(f"{kind} in {path}" for kind, path in types.items())
        for column, types in seen.items() if len(types) > 1
    )


def read_parquet(location: Location, path: str, *, what: str, columns: Sequence[str] | None = None,
                 row_groups: Sequence[int] | None = None, present_only: bool = False) -> pa.Table:
    """One landing file, or its `row_groups`, with `columns` (those the file has, `present_only`), its
    strings made plain: how every part of the loader reads whole files of the landing zone (the
    runs' sources, read and screened a row group at a time, are `read_source`'s). An unreadable file is
    BadSourceData naming it and `what` it belongs to; a failing store a storage error (retried)."""
    with opened_parquet(location, path, what=what) as parquet:
        wanted = None if columns is None else list(columns)
        if wanted is not None and present_only:
            held = set(parquet.schema_arrow.names)
            wanted = [c for c in wanted if c in held]
        try:
            rows = (parquet.read(columns=wanted) if row_groups is None
                    else parquet.read_row_groups(list(row_groups), columns=wanted))
        except KeyError as error:  # a column the file lacks
            raise BadSourceData(f"unreadable Parquet file {path} ({what}): {error}. "
                                "Replace or remove it") from error
    return normalize_strings(rows)




def read_dimension(uri: str, table: str, columns: tuple[str, ...] | None = None) -> pa.Table:
    """A dimension table, only `columns` of it when given (those the files have: a missing one is
    reported by the caller, naming the table)."""
    location = locate(uri)
    files = list_files(location, partition_column="", since=None)
    if not files:
        raise BadSourceData(f"dimension {table!r} has no Parquet files at {location.uri}: "
                            f"fix dimensions.{table} in the config")
    parts = [read_parquet(location, path, what=f"dimension {table}", columns=columns, present_only=True)
             for path in files]
    return pa.concat_tables(parts, promote_options="permissive")
