"""Quarantine: rows that fail a check leave the run and go to `<warehouse>/quarantine/<source>/`, a
Parquet table (one file per run, `run-<n>.parquet`) of

    run_number, source, reason, row_hash, quarantined_at, row (the row's values as JSON)

Checks, in order (a row gets the first reason that applies):
- `null key <column>`: a primary key column is null (it cannot be deduplicated or merged);
- `null cursor <column>`: the cursor is null (it belongs to no window);
- `cursor in the future`: the cursor is later than now + quarantine.future_tolerance (a clock or
  parsing fault upstream; it would otherwise sit beyond every window, unseen);
- `no region`: no region was found for the row's customer or supplier (after the region lookup).

A row is quarantined once: a later run that reads its file again (the lookback) finds its row_hash in
the table and skips it. Too many in one run (quarantine.max_rows / max_fraction of the rows read) fails
the run instead, terminal, with the checkpoint kept: the rows stay in the table to look at, and the
replay after the fix writes the run's file again."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader.config import QuarantineConfig, RetryConfig
from loader.errors import BadSourceData
from loader.kinds import UNKNOWN_REGION
from loader.retry import call_with_retries
from loader.storage import Location, locate, storage_error

REASON = "__loader_quarantine_reason"
SCHEMA = pa.schema([
    pa.field("run_number", pa.int64()), pa.field("source", pa.string()), pa.field("reason", pa.string()),
    pa.field("row_hash", pa.string()), pa.field("quarantined_at", pa.timestamp("us", tz="UTC")),
    pa.field("row", pa.string()),
])


def split_bad_rows(table: pa.Table, *, key: tuple[str, ...], cursor: str, now: datetime,
                   tolerance_s: float) -> tuple[pa.Table, pa.Table]:
    """(rows passing the checks, failing rows with a REASON column)."""
    reasons: list[tuple[str, pa.Array]] = [(f"null key {k}", pc.is_null(table[k])) for k in key
                                           if k in table.column_names]
    if cursor in table.column_names:
        values = table[cursor]
        reasons.append((f"null cursor {cursor}", pc.is_null(values)))
        if pa.types.is_timestamp(values.type):
            latest = now + timedelta(seconds=tolerance_s)  # naive cursors are UTC, as everywhere here
            limit = pa.scalar(latest if values.type.tz else latest.astimezone(UTC).replace(tzinfo=None),
                              values.type)
            reasons.append(("cursor in the future", pc.fill_null(pc.greater(values, limit), False)))
    return _split(table, reasons)


def split_no_region(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    if "region" not in table.column_names:
        return table, _empty_bad(table)
    return _split(table, [("no region", pc.fill_null(pc.equal(table["region"], UNKNOWN_REGION), True))])


def _split(table: pa.Table, reasons: list[tuple[str, Any]]) -> tuple[pa.Table, pa.Table]:
    if table.num_rows == 0 or not reasons:
        return table, _empty_bad(table)
    label = pa.nulls(table.num_rows, pa.string())
    for text, mask in reasons:
        label = pc.if_else(pc.and_(pc.is_null(label), mask), pa.scalar(text), label)
    bad = pc.is_valid(label)
    if not pc.any(bad).as_py():
        return table, _empty_bad(table)
    return table.filter(pc.invert(bad)), table.filter(bad).append_column(REASON, pc.filter(label, bad))


def _empty_bad(table: pa.Table) -> pa.Table:
    return table.schema.empty_table().append_column(REASON, pa.array([], pa.string()))


def merge_bad(parts: list[pa.Table | None]) -> pa.Table | None:
    """The failing rows of several batches as one table, or None if there are none."""
    found = [p for p in parts if p is not None and p.num_rows]
    return pa.concat_tables(found, promote_options="permissive") if found else None


@dataclass(frozen=True)
class QuarantineStore:
    """Where a pipeline's quarantined rows go (`<root>/<source>/run-<n>.parquet`; root: the warehouse's
    `quarantine` folder), the retry policy of their writes, and the limits past which a run stops."""

    root: str
    retry: RetryConfig
    limits: QuarantineConfig

    def location(self, source: str) -> Location:
        return locate(self.root).child(source)

    def record(self, name: str, *, run_number: int, bad: pa.Table | None, rows_read: int,
               replay: bool = True) -> dict[str, int]:
        """Write the run's newly quarantined rows of `name` (a replay rewrites the same file), enforce
        the limits, and return the counts per reason. Storage faults are retried; with nothing to
        quarantine and no earlier attempt (`replay` False) the storage is not touched."""
        if (bad is None or bad.num_rows == 0) and not replay:
            return {}
        where = self.location(name)
        entries = call_with_retries(f"{name} -> quarantine", self.retry,
                                    lambda: _write(where, name, run_number, bad))
        found = {str(k): int(v) for k, v in Counter(entries["reason"].to_pylist()).items()}
        _enforce(self.limits, name, sum(found.values()), rows_read, found, where.uri)
        return found


def _entries(bad: pa.Table, *, source: str, run_number: int) -> pa.Table:
    rows = bad.drop_columns([REASON]).to_pylist()
    texts = [json.dumps(r, default=str, sort_keys=True, ensure_ascii=False) for r in rows]
    # The hash leaves null values out: the same landing row, merged beside rows of another check (which
    # adds their columns, null for it), must hash alike, or a re-read would quarantine it again.
    present = [json.dumps({k: v for k, v in r.items() if v is not None}, default=str, sort_keys=True,
                          ensure_ascii=False) for r in rows]
    stamp = datetime.now(UTC)
    return pa.table({
        "run_number": pa.array([run_number] * len(rows), pa.int64()),
        "source": pa.array([source] * len(rows), pa.string()),
        "reason": bad[REASON].cast(pa.string()),
        "row_hash": pa.array([hashlib.sha256(t.encode()).hexdigest()[:32] for t in present], pa.string()),
        "quarantined_at": pa.array([stamp] * len(rows), pa.timestamp("us", tz="UTC")),
        "row": pa.array(texts, pa.string()),
    }, schema=SCHEMA)


def _earlier_hashes(where: Location, run_number: int) -> set[str]:
    own = f"run-{run_number:08d}"
    files = [f.path
             for f in where.filesystem.get_file_info(pafs.FileSelector(where.path, allow_not_found=True))
             if f.base_name.endswith(".parquet") and not f.base_name.startswith((own, "."))]
    hashes: set[str] = set()
    for path in files:
        with where.filesystem.open_input_file(path) as handle:
            hashes.update(pq.read_table(handle, columns=["row_hash"])["row_hash"].to_pylist())
    return hashes


def _write(where: Location, name: str, run_number: int, bad: pa.Table | None) -> pa.Table:
    path = f"{where.path}/run-{run_number:08d}.parquet"
    try:
        entries = (_entries(bad, source=name, run_number=run_number) if bad is not None
                   else SCHEMA.empty_table())
        if entries.num_rows:
            seen = _earlier_hashes(where, run_number)
            entries = entries.filter(pa.array([h not in seen for h in entries["row_hash"].to_pylist()]))
        if entries.num_rows:
            where.filesystem.create_dir(where.path, recursive=True)
            hidden = f"{where.path}/.run-{run_number:08d}.parquet"
            with where.filesystem.open_output_stream(hidden) as stream:
                pq.write_table(entries, stream)
            where.filesystem.move(hidden, path)
        elif where.filesystem.get_file_info(path).type == pafs.FileType.File:
            where.filesystem.delete_file(path)  # a replay after the bad rows were fixed
    except OSError as error:
        raise storage_error(error, where.uri, side="sink", doing="writing quarantined rows to") from error
    return entries


def _enforce(settings: QuarantineConfig, name: str, quarantined: int, rows_read: int, found: dict[str, int],
             uri: str) -> None:
    over_count = settings.max_rows is not None and quarantined > settings.max_rows
    over_fraction = rows_read > 0 and quarantined / rows_read > settings.max_fraction
    if quarantined and (over_count or over_fraction):
        limit = (f"quarantine.max_rows={settings.max_rows}" if over_count
                 else f"quarantine.max_fraction={settings.max_fraction:g} of {rows_read:,} rows read")
        detail = ", ".join(f"{n:,} {reason}" for reason, n in sorted(found.items()))
        raise BadSourceData(
            f"source {name!r}: {quarantined:,} row(s) failed the checks ({detail}), more than {limit}: the "
            f"run stops and the checkpoint stays. The rows are in {uri} (column `row`, with `reason`): fix "
            "them in the landing zone, or raise the threshold, then run again (the run replays)"
        )
