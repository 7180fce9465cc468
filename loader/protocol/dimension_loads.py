"""Dimension tables to the sinks: the first step of every incremental run, under the lease, before the
facts' batches (the warehouse's dimensions are then never older than the facts that join to them).

Per dimension with `load: true` and per enabled sink: if its files' fingerprint (path, size, mtime,
footer of each file, with the dimension's settings) equals the one recorded after its last load to that
sink, the sink is up to date; when every sink is, nothing is read. A sink enabled later has no load
recorded, so its first run loads every table to it, the others untouched. The sinks behind get the
files read whole and checked (a null key, or a key twice in one snapshot, fails the run naming the key
and the file), masked like the facts (the region rules' columns, by the row's region through nation),
hashed on the tracked columns; every changed dimension is read and checked before the first write, so
bad input in one writes none. Then each sink behind compares them with what it holds itself
(loader/transform/dimension_changes.py) and applies the difference in one step, and its load is recorded.
Exactly once without a ledger: the comparison is the idempotence (a replay, or a sink that already
applied the load before a crash, finds nothing to do); change times come from the files (the
snapshot's newest file time, or each row's cursor), so every sink and every replay stamps the same
versions. Loads recorded before they were kept per sink (sink '*') count for a sink holding the table.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from loader import failpoints
from loader.config import DIMENSION_KEYS, DimensionConfig, LoaderConfig
from loader.errors import BadSourceData, ConfigError
from loader.observe import progress
from loader.retry import call_with_retries
from state import ALL_SINKS, DimensionLoad, StateStore

if TYPE_CHECKING:  # the data libraries load only when a dimension's files changed (an empty run stays light)
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

#: The column of a dimension row naming its nation: its region (masking) comes through nation.
NATION_KEY = {"customer": "c_nationkey", "supplier": "s_nationkey"}
#: Bump when what a load computes from the same files changes (hash, masking): the next run compares again.
FORMAT = 1


@dataclass
class DimensionOutcome:
    """One dimension's load: rows read, and per sink what it changed."""

    name: str
    mode: str
    rows: int
    sinks: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "rows": self.rows, "sinks": self.sinks}


@dataclass
class _Pending:
    """One dimension read and checked, not yet written: the sinks behind (each with its last load, None
    for never), the rows they get (newer than the least cursor loaded of them), and the sinks up to date
    by a load recorded before loads were kept per sink (recorded as their own once the writes are done)."""

    table: str
    mark: str
    behind: list[tuple[Any, DimensionLoad | None]]
    adopted: list[tuple[str, DimensionLoad]]
    incoming: pa.Table | None = None
    cursor: datetime | None = None
    snapshot_time: datetime | None = None


def load_dimension_tables(config: LoaderConfig, store: StateStore) -> dict[str, DimensionOutcome]:
    """Load every changed dimension to every enabled sink that does not hold it yet (a sink enabled
    later gets every table); the dimensions loaded, by name (none when no sink is behind). Every changed
    dimension is read and checked before the first write: bad input in one of them writes none."""
    from loader.landing.fingerprint import files_fingerprint
    from loader.protocol.fact_gaps import enabled_sink_names

    wanted = [t for t in DIMENSION_KEYS if config.dimensions.named(t).load]
    if not wanted:
        return {}
    names = enabled_sink_names(config)
    recorded = store.dimension_sink_loads(config.pipeline)
    sinks: list[Any] | None = None
    pending: list[_Pending] = []
    for table in wanted:
        files, infos = call_with_retries(f"listing dimension {table}", config.source_retry,
                                         lambda t=table: files_fingerprint(config.dimension_path(t)))  # type: ignore[misc]
        mark = fingerprint_of(config, table, files)
        loads = recorded.get(table, {})
        if all(n in loads and loads[n].fingerprint == mark for n in names):
            continue  # every sink up to date: no sink built, nothing read
        if sinks is None:
            from loader.sinks import enabled_sinks

            sinks = enabled_sinks(config)
        load = _Pending(table, mark, [], [])
        for sink in sinks:
            last = _last_load(config, sink, table, loads)
            if last is not None and last.fingerprint == mark:
                if sink.name not in loads:
                    load.adopted.append((sink.name, last))
            else:
                load.behind.append((sink, last))
        if load.behind:
            for sink, last in load.behind:
                _refuse_mode_change(config, sink, table, last.changes.get("mode") if last else None)
            progress.step(f"dimension {table}: read and check")
            since = _least([last.cursor if last else None for _, last in load.behind])
            load.incoming, load.cursor = read_incoming(config, table, [i.path for i in infos], since=since)
            load.snapshot_time = _snapshot_time(infos)
        pending.append(load)
    outcomes: dict[str, DimensionOutcome] = {}
    for load in pending:
        if load.behind:
            outcomes[load.table] = _write(config, store, load)
        for name, last in load.adopted:
            store.record_dimension_load(config.pipeline, load.table, sink=name, fingerprint=last.fingerprint,
                                        cursor=last.cursor, changes=last.changes)
    return outcomes


def _write(config: LoaderConfig, store: StateStore, load: _Pending) -> DimensionOutcome:
    """Apply a checked dimension to the sinks behind, then record each sink's load."""
    table, dim = load.table, config.dimensions.named(load.table)
    assert load.incoming is not None and load.snapshot_time is not None
    outcome = DimensionOutcome(table, dim.mode, load.incoming.num_rows)
    progress.step(f"dimension {table}: compare and write")
    for sink, last in load.behind:
        rows = _newer_than(load.incoming, dim.cursor, last.cursor if last else None)
        outcome.sinks[sink.name] = _load_into(config, sink, table, dim, rows, load.snapshot_time)
    failpoints.hit("dimensions.before_record", table)
    for sink, last in load.behind:
        cursor = max((c for c in (load.cursor, last.cursor if last else None) if c is not None), default=None)
        store.record_dimension_load(config.pipeline, table, sink=sink.name, fingerprint=load.mark,
                                    cursor=cursor, changes=outcome.to_json())
    changed = {s: c for s, c in outcome.sinks.items() if c["opened"] or c["closed"]}
    log.info("dimension %s (%s): %s", table, dim.mode, "; ".join(
        f"{s}: {c['opened']:,} opened, {c['closed']:,} closed" for s, c in changed.items()) or "no change")
    return outcome


def _last_load(config: LoaderConfig, sink: Any, table: str,
               loads: dict[str, DimensionLoad]) -> DimensionLoad | None:
    """The last load of `table` to `sink`: its own record; else one recorded before loads were kept per
    sink, if the sink holds the table (it was enabled then); else None (never loaded to it)."""
    if sink.name in loads:
        return loads[sink.name]
    legacy = loads.get(ALL_SINKS)
    if legacy is None:
        return None
    from loader.transform.dimension_changes import DimensionSpec

    key = config.dimensions.key_of(table)
    held = sink.dimension_rows(DimensionSpec(config.pipeline, table, key, "replace"), list(key))
    return None if held is None else legacy


def _least(cursors: list[datetime | None]) -> datetime | None:
    """The cursor to read change files from for all of them: None (everything) if any sink has none."""
    return None if any(c is None for c in cursors) else min(c for c in cursors if c is not None)


def _newer_than(rows: pa.Table, cursor_column: str | None, since: datetime | None) -> pa.Table:
    """A sink's share of the rows read: change files' rows after the newest cursor it loaded."""
    if cursor_column is None or since is None:
        return rows
    import pyarrow as pa
    import pyarrow.compute as pc

    return rows.filter(pc.greater(rows[cursor_column], pa.scalar(since, rows[cursor_column].type)))


def _snapshot_time(infos: Sequence[Any]) -> datetime:
    """A snapshot's time: its newest file's modification time, to the microsecond (truncated)."""
    newest = max((i.mtime_ns for i in infos if i.mtime_ns is not None), default=None)
    if newest is None:  # a store without modification times: the load's own time
        return datetime.now(UTC)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=newest // 1000)


def fingerprint_of(config: LoaderConfig, table: str, files: str) -> str:
    """The files' fingerprint with everything else that decides what a load writes."""
    dim = config.dimensions.named(table)
    rules = sorted((n, tuple(r.mask)) for n, r in config.regions.items())
    settings = (FORMAT, files, dim.model_dump(), config.dimensions.key_of(table), rules)
    return hashlib.sha256(repr(settings).encode()).hexdigest()


def _refuse_mode_change(config: LoaderConfig, sink: Any, table: str, previous: str | None) -> None:
    """A dimension table keeps the mode it was made with (scd2's version columns, merge's one row per
    key): a changed `mode` with the table still in a sink fails before anything is written."""
    from loader.transform.dimension_changes import DimensionSpec

    mode = config.dimensions.named(table).mode
    if previous is None or previous == mode:
        return
    key = config.dimensions.key_of(table)
    if sink.dimension_rows(DimensionSpec(config.pipeline, table, key, "replace"), list(key)) is None:
        return  # moved away: made afresh in the new mode
    raise ConfigError(
        f"dimensions.{table}.mode is {mode}, but {sink.location(table)} ({sink.name}) was loaded as "
        f"{previous}: a dimension table keeps its mode. Set the mode back to {previous}, or move the table "
        f"away in every sink (the next run loads it afresh as {mode}); nothing was written")


def _load_into(config: LoaderConfig, sink: Any, table: str, dim: DimensionConfig, incoming: pa.Table,
               snapshot_time: datetime) -> dict[str, int]:
    """Compare with what `sink` holds and apply the difference, retried as the sink's writes are (by the
    sink itself, step by step, where it declares `retries_own_steps`)."""
    from loader.transform.dimension_changes import DimensionSpec, compared_columns, diff

    spec = DimensionSpec(config.pipeline, table, config.dimensions.key_of(table), dim.mode)

    def attempt() -> dict[str, int]:
        current = sink.dimension_rows(spec, compared_columns(spec, dim.cursor))
        changes = diff(incoming, current, spec, cursor=dim.cursor, snapshot_time=snapshot_time,
                       missing=dim.missing)
        if not changes.empty:
            sink.apply_dimension(spec, changes)
        return {"opened": changes.opens.num_rows, "closed": changes.closes.num_rows, "stale": changes.stale}

    if sink.capabilities.retries_own_steps:
        return attempt()
    return call_with_retries(f"dimension {table} -> {sink.name}", sink.retry, attempt)


def read_incoming(config: LoaderConfig, table: str, paths: Sequence[str], *,
                  since: datetime | None = None) -> tuple[pa.Table, datetime | None]:
    """The dimension's rows as the sinks get them (checked, masked, hashed) and the newest cursor.
    Change files: only rows newer than `since` (the newest cursor loaded before; the files are read
    whole, but history is appended in time order: a change at or before it is not loaded)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from loader.transform.dimension_changes import tracked_columns, with_hash

    dim = config.dimensions.named(table)
    key = list(config.dimensions.key_of(table))
    rows, origin = _read_files(config, table, paths)
    missing = [c for c in [*key, *([dim.cursor] if dim.cursor else []), *(dim.track or ())]
               if c not in rows.column_names]
    if missing:
        raise BadSourceData(f"dimension {table}: column(s) {missing} not in its files ({paths[0]} ...): fix "
                            f"dimensions.{table} (key, cursor, track) in the config or the files")
    _check_keys(table, rows, origin, paths, key, dim.cursor)
    if dim.cursor and since is not None:
        rows = rows.filter(pc.greater(rows[dim.cursor], pa.scalar(since, rows[dim.cursor].type)))
    rows = _masked(config, table, rows)
    rows = with_hash(rows, tracked_columns(rows.column_names, key, dim.cursor, dim.track))
    newest = pc.max(rows[dim.cursor]).as_py() if dim.cursor and rows.num_rows else None
    return rows, max((c for c in (since, newest) if c is not None), default=None)


def _read_files(config: LoaderConfig, table: str, paths: Sequence[str]) -> tuple[pa.Table, np.ndarray]:
    """All rows of the files, and for each the index of its file (to name it in errors)."""
    import numpy as np
    import pyarrow as pa

    from loader.landing.sources import read_parquet
    from loader.storage import locate

    location = locate(config.dimension_path(table))
    if not paths:
        raise BadSourceData(f"dimension {table!r} has no Parquet files at {location.uri}: fix "
                            f"dimensions.{table} in the config")
    parts, origin = [], []
    for number, path in enumerate(paths):
        part = read_parquet(location, path, what=f"dimension {table}")
        parts.append(part)
        origin.append(np.full(part.num_rows, number, dtype=np.int32))
    return pa.concat_tables(parts, promote_options="permissive"), np.concatenate(origin)


def _check_keys(table: str, rows: pa.Table, origin: np.ndarray, paths: Sequence[str], key: list[str],
                cursor: str | None) -> None:
    """A null key, or a key (with its cursor, for change files) twice: the run fails, naming it."""
    import numpy as np

    for column in key:
        nulls = rows[column].null_count
        if nulls:
            first = int(np.flatnonzero(rows[column].is_null().to_numpy(zero_copy_only=False))[0])
            raise BadSourceData(f"dimension {table}: {nulls} row(s) with a null {column} (first in "
                                f"{paths[origin[first]]}): fix or remove those rows; nothing was written")
    unique = [*key, *([cursor] if cursor else [])]
    frame = rows.select(unique).to_pandas()
    repeated = frame.duplicated(unique, keep=False).to_numpy()
    if repeated.any():
        first = frame.iloc[int(np.flatnonzero(repeated)[0])]
        value = ", ".join(f"{c}={first[c]}" for c in unique)
        same = (frame[unique] == first[unique]).all(axis=1).to_numpy()  # the rows sharing that one
        where = sorted({paths[i] for i in origin[same]})
        what = "version (key and cursor)" if cursor else "key"
        raise BadSourceData(
            f"dimension {table}: {int(repeated.sum()):,} rows share a {what} with another row, e.g. {value} "
            f"in {', '.join(where)}: a snapshot holds each key once (remove the duplicates, or the older "
            "snapshot's files); nothing was written")


def _masked(config: LoaderConfig, table: str, rows: pa.Table) -> pa.Table:
    """The region rules' masked columns masked in the rows of their regions (through the nation)."""
    if table not in NATION_KEY or not any(r.mask for r in config.regions.values()):
        return rows
    import pyarrow.compute as pc

    from loader.landing.sources import read_dimension
    from loader.transform.facts import mask_rows
    from loader.transform.region_rules import rules_of

    nation = read_dimension(config.dimension_path("nation"), "nation", ("n_nationkey", "n_regionkey"))
    region = read_dimension(config.dimension_path("region"), "region", ("r_regionkey", "r_name"))
    names = pc.take(region["r_name"],
                    pc.index_in(nation["n_regionkey"], value_set=region["r_regionkey"].combine_chunks()))
    of_row = pc.take(names,
                     pc.index_in(rows[NATION_KEY[table]], value_set=nation["n_nationkey"].combine_chunks()))
    return mask_rows(rows, of_row, rules_of(config.regions))
