"""`loader verify`: reconcile each enabled sink with the landing zone over the committed windows.

Expected, per fact source: the landing rows with cursor <= the source's checkpoint, from the files that
existed when the checkpoint's run planned (file mtime <= the plan's time, recorded with the run's input).
Files that landed later are pending, not committed: a late record in them may lie below the checkpoint
but no committed run could have read it (so a landing zone copied without its mtimes looks all new).
Those rows go through a run's own stage chain (loader/execute/stages.py) up to the region lookup:
quarantine checks, window, dedupe on the primary key (latest cursor wins), region. Only the key, cursor
and lookup columns are read.

Compared per (table, region, sink): the row count and an order-independent checksum of (key, cursor):

    h(row)   = fold of the row's values v over (key columns..., cursor): h = splitmix64(h XOR v), h0 = 0
    checksum = sum of h(row) over the rows, mod 2**64, shown as 16 hex digits

where v is the value as int64 (the cursor as microseconds since the epoch, UTC; a date as days); other
types use pandas' stable `hash_array`. Every enabled sink (the registry, loader/sinks) is read back
through its own `read_back`: a sink holding the latest version of each key (Delta, Snowflake) must hold
those rows and no key twice; a log of versions (Parquet) must have them as each key's greatest-cursor
version, and no (key, cursor) version twice.

Sinks are read while no run may change them: a live lease or an unfinished run is refused up front, and
checkpoints that moved while reading make verify fail and ask to run it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader.config import LoaderConfig
from loader.errors import BadSourceData, ConfigError, LeaseHeld, StateError
from loader.protocol.planning import list_files
from loader.sinks import Sink, enabled_sinks, sink_class
from loader.sinks.base import DELETED, region_counts
from loader.storage import Location, locate
from loader.transform.dimensions import Dimensions
from loader.transform.kinds import fact_kind
from loader.transform.tables import dedupe_latest
from state import Checkpoint, StateStore, Window

Digest = dict[str, tuple[int, int]]  # region -> (rows, checksum)
#: The region of a dimension table's checks (a dimension table is not split by region).
DIMENSION_REGION = "-"
#: The region of a fact table's one check over all its regions (when rows moved region, see _verify_table).
ALL_REGIONS = "(all)"


@dataclass(frozen=True)
class Check:
    table: str
    region: str
    sink: str
    expected_rows: int
    actual_rows: int
    expected_checksum: str
    actual_checksum: str
    duplicates: int

    @property
    def ok(self) -> bool:
        return (self.expected_rows == self.actual_rows and self.expected_checksum == self.actual_checksum
                and self.duplicates == 0)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}

    def problem(self) -> str:
        """One line naming the table, region and sink, and what differs."""
        parts = []
        if self.expected_rows != self.actual_rows:
            parts.append(f"{self.actual_rows:,} rows, expected {self.expected_rows:,}")
        if self.expected_checksum != self.actual_checksum:
            same_count = self.expected_rows == self.actual_rows
            dimension = self.region == DIMENSION_REGION  # compared on (key, row_hash): the values
            parts.append(f"checksum of (key, {'values' if dimension else 'cursor'}) differs"
                         + (": wrong or stale versions" if same_count else ""))
        if self.duplicates:
            what = "(key, cursor) version(s)" if sink_class(self.sink).capabilities.holds == "versions" else "key(s)"
            what = "current key(s)" if self.region == DIMENSION_REGION else what
            parts.append(f"{self.duplicates:,} duplicated {what}")
        return f"table {self.table}, region {self.region}, sink {self.sink}: " + "; ".join(parts)


@dataclass(frozen=True)
class Verification:
    pipeline: str
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "checks": [check.to_json() for check in self.checks]}


# ------------------------------------------------------------------------------- checksums


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit (uint64 arithmetic wraps)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _as_uint64(column: pa.ChunkedArray) -> np.ndarray:
    kind = column.type
    if pa.types.is_timestamp(kind):  # the same instant hashes the same whatever the unit
        column = column.cast(pa.timestamp("us", tz=kind.tz), safe=False)
    elif pa.types.is_date(kind):
        column = column.cast(pa.date32()).cast(pa.int32())
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_integer(kind):
        return np.asarray(column.cast(pa.int64()).to_numpy()).view(np.uint64)
    import pandas as pd

    values = np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)
    return np.asarray(pd.util.hash_array(values), dtype=np.uint64)


def row_hashes(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    hashes = np.zeros(table.num_rows, dtype=np.uint64)
    for name in columns:
        hashes = _mix(hashes ^ _as_uint64(table[name]))
    return hashes


def digest(table: pa.Table | None, columns: Sequence[str]) -> Digest:
    """Per region: row count and checksum (see the module docstring) of `columns`."""
    if table is None or table.num_rows == 0:
        return {}
    regions = table["region"].cast(pa.string()).combine_chunks().dictionary_encode()
    codes = np.asarray(regions.indices.to_numpy(zero_copy_only=False), dtype=np.intp)
    sums = np.zeros(len(regions.dictionary), dtype=np.uint64)
    np.add.at(sums, codes, row_hashes(table, columns))
    counts = np.bincount(codes, minlength=len(regions.dictionary))
    return {str(name): (int(counts[i]), int(sums[i])) for i, name in enumerate(regions.dictionary.to_pylist())}


def duplicates(table: pa.Table | None, columns: Sequence[str]) -> dict[str, int]:
    """Per region: rows beyond the first of each distinct `columns` value."""
    if table is None or table.num_rows == 0:
        return {}
    narrow = table.select(["region", *columns])
    distinct = region_counts(narrow.group_by(["region", *columns]).aggregate([]))
    return {region: rows - distinct.get(region, 0) for region, rows in region_counts(narrow).items()}


# ------------------------------------------------------------------------------- reading


def _read_files(location: Location, paths: Sequence[str], columns: list[str], what: str) -> pa.Table | None:
    def read(path: str) -> pa.Table:
        try:
            with location.filesystem.open_input_file(path) as handle:
                return pq.read_table(handle, columns=columns)
        except (OSError, pa.ArrowInvalid, KeyError) as error:
            raise BadSourceData(f"cannot read columns {columns} of {path} ({what}): {error}. Fix or remove the file") from error

    with ThreadPoolExecutor(max_workers=4) as pool:
        parts = list(pool.map(read, paths))
    return pa.concat_tables(parts, promote_options="permissive") if parts else None


def _landed_before(location: Location, partition_column: str, moment: datetime | None,
                   read: frozenset[str] = frozenset()) -> list[str]:
    """The source's files (planning's rules) that were there at `moment`, and those a committed run
    recorded as read (a replay reads a file rewritten since as it is now, whatever its mtime)."""
    paths = set(list_files(location, partition_column=partition_column, since=None)[0])
    infos = location.filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True))
    return sorted(
        info.path for info in infos
        if info.path in paths
        and (moment is None or info.mtime is None or _utc(info.mtime) <= moment or info.path in read)
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def expected_rows(config: LoaderConfig, name: str, checkpoint: Checkpoint, seen_at: datetime | None,
                  dims: Dimensions, read: frozenset[str] = frozenset()) -> dict[str, pa.Table | None]:
    """What the committed windows loaded: key, cursor and region of each key's latest version, per
    kind of sink (`Capabilities.holds`). Upstream deletes (a source with `deletes`): a log of versions
    holds each key's latest version, tombstones included; a sink of the latest rows holds no key
    whose latest version is a tombstone (`hard`), or, marking them (`soft`), each key's latest live
    version."""
    from loader.execute.stages import StageChain

    # Rows a run quarantines never reach a sink: a null key or cursor, a cursor beyond the checkpoint
    # anyway (the future), no region.
    chain = StageChain.for_source(config, name, Window(lower=None, upper=checkpoint.cursor), upto="region")
    source = chain.source
    location = locate(config.source_path(name))
    columns = list(dict.fromkeys([*source.primary_key, source.cursor, fact_kind(source.kind).lookup.fact_key,
                                  *([source.deletes.column] if source.deletes else [])]))
    rows = _read_files(location, _landed_before(location, source.partition_column, seen_at, read), columns,
                       f"source {name}")
    if rows is None:
        return {"versions": None, "latest": None}
    wanted = [*source.primary_key, source.cursor, "region"]
    out, _ = chain.run(rows, dims)
    if source.deletes is None:
        return {"versions": out.select(wanted), "latest": out.select(wanted)}
    import pyarrow.compute as pc

    if source.deletes.mode == "hard":
        latest = out.filter(pc.invert(out[DELETED]))
    else:  # soft: tombstones mark the stored version, which keeps its cursor
        dead = chain.tombstone_mask(rows)
        live = rows if dead is None else rows.filter(pa.array(~dead))
        latest, _ = replace(chain, source=source.model_copy(update={"deletes": None})).run(live, dims)
    return {"versions": out.select(wanted), "latest": latest.select(wanted)}


def held_rows(sink: Sink[Any], name: str, key: Sequence[str], cursor: str) -> tuple[Digest, dict[str, int]]:
    """What `sink` holds of table `name` (its `read_back`): the digest of each key's newest version, and
    per region the duplicates (a key twice where it holds the latest, a (key, cursor) version twice
    where it holds a log of versions)."""
    columns = [*key, cursor]
    rows = sink.read_back(name, columns)
    if sink.capabilities.holds == "versions":
        latest = None if rows is None else dedupe_latest(rows, key=key, cursor=cursor)
        return digest(latest, columns), duplicates(rows, columns)
    return digest(rows, columns), duplicates(rows, list(key))


# ------------------------------------------------------------------------------- comparing


def _compare(table: str, sink: str, want: Digest, got: Digest, dups: dict[str, int]) -> list[Check]:
    checks = []
    for region in sorted(set(want) | set(got) | set(dups)):
        (e_rows, e_sum), (a_rows, a_sum) = want.get(region, (0, 0)), got.get(region, (0, 0))
        checks.append(Check(table, region, sink, e_rows, a_rows, f"{e_sum:016x}", f"{a_sum:016x}", dups.get(region, 0)))
    return checks


def _verify_table(config: LoaderConfig, name: str, checkpoint: Checkpoint, seen_at: datetime | None,
                  dims: Dimensions, read: frozenset[str] = frozenset(), notes: list[str] | None = None) -> list[Check]:
    source = config.sources[name]
    columns = [*source.primary_key, source.cursor]
    expected = expected_rows(config, name, checkpoint, seen_at, dims, read)
    wants = {holds: digest(rows, columns) for holds, rows in expected.items()}
    checks = []
    for sink in enabled_sinks(config):
        got, dups = held_rows(sink, name, source.primary_key, source.cursor)
        want = wants[sink.capabilities.holds]
        if want != got and not any(dups.values()) and _total(want) == _total(got):
            # Every version held, some under another region than today's dimensions give: a customer
            # (supplier) moved nation after its facts loaded, and facts keep the region they loaded with.
            moved = sum(abs(want.get(r, (0, 0))[0] - got.get(r, (0, 0))[0]) for r in set(want) | set(got)) // 2
            if notes is not None:
                notes.append(f"{name} in {sink.name}: every row held; about {moved:,} under the region they loaded "
                             "with, not the one their customer or supplier has now (it moved since)")
            rows, checksum = _total(want)
            checks.append(Check(name, ALL_REGIONS, sink.name, rows, rows, f"{checksum:016x}", f"{checksum:016x}", 0))
            continue
        checks += _compare(name, sink.name, want, got, dups)
    return checks


def _total(per_region: Digest) -> tuple[int, int]:
    """All regions together: rows, and the checksum (a sum mod 2**64, so it adds up over regions)."""
    return (sum(rows for rows, _ in per_region.values()),
            sum(checksum for _, checksum in per_region.values()) % 2**64)


def _quiet_checkpoints(store: StateStore, pipeline: str) -> dict[str, Checkpoint]:
    """The checkpoints, provided no run can be changing the sinks right now."""
    lease = store.lease(pipeline)
    if lease is not None and not lease.expired(datetime.now(UTC)):
        raise LeaseHeld(
            f"a run of pipeline {pipeline!r} is in progress ({lease.holder}, lease until {lease.expires_at:%Y-%m-%d %H:%M:%S} UTC) "
            "and the sinks may hold rows it has not committed: run `loader verify` again when it has finished"
        )
    for mode in ("incremental", "backfill"):
        unfinished = store.unfinished_run(pipeline, mode=mode)
        if unfinished is not None:
            raise StateError(
                f"{mode} run {unfinished.run_number} of pipeline {pipeline!r} did not finish, so the sinks may hold "
                "rows past the checkpoints: let it finish (`loader run --incremental` replays an incremental run), "
                "then run `loader verify` again"
            )
    return store.checkpoints(pipeline)


def _read_by_runs(store: StateStore, pipeline: str) -> dict[str, frozenset[str]]:
    """Per source, the files committed incremental runs recorded as their input (the ledger read once)."""
    read: dict[str, set[str]] = {}
    for run in store.runs(pipeline, limit=None, mode="incremental"):
        if run.status == "committed":
            for source, recorded in (run.inputs or {}).get("sources", {}).items():
                read.setdefault(source, set()).update(entry["path"] for entry in recorded.get("files", []))
    return {source: frozenset(paths) for source, paths in read.items()}


def _seen_at(store: StateStore, pipeline: str, checkpoint: Checkpoint) -> datetime | None:
    """When the checkpoint's run listed the landing zone: the moment its plan recorded (the batches of a
    run share it, and a replay reads exactly that input); for runs recorded before inputs were kept,
    its start, or its finish if it was replayed (a replay then planned its windows again)."""
    run = store.run(pipeline, checkpoint.run_number)
    if run is None:
        return None
    planned_at = (run.inputs or {}).get("planned_at")
    if planned_at:
        return datetime.fromisoformat(planned_at)
    return run.started_at if run.attempts == 1 else run.finished_at


def verify(config: LoaderConfig, *, tables: Sequence[str] = ()) -> Verification:
    unknown = [t for t in tables if t not in config.sources]
    if unknown:
        raise ConfigError(f"unknown table(s) {', '.join(unknown)}: pass --table with one of {', '.join(config.sources)}")
    names = list(dict.fromkeys(tables)) or list(config.sources)
    pipeline = config.pipeline
    store = StateStore.open(config.state.url)
    try:
        checkpoints = _quiet_checkpoints(store, pipeline)
        if not checkpoints:
            note = f"pipeline {pipeline!r} was never loaded: nothing to verify (run `loader run --incremental` first)"
            return Verification(pipeline, (), (note,))
        from loader.execute.choice import load_dimensions

        dims = load_dimensions(config)
        checks: list[Check] = []
        notes = []
        read = _read_by_runs(store, pipeline)
        for name in names:
            checkpoint = checkpoints.get(name)
            if checkpoint is None:
                notes.append(f"{name}: never loaded, nothing to verify")
                continue
            checks += _verify_table(config, name, checkpoint, _seen_at(store, pipeline, checkpoint), dims,
                                    read.get(name, frozenset()), notes)
        if not tables:
            dimension_checks, dimension_notes = _verify_dimensions(config, store)
            checks += dimension_checks
            notes += dimension_notes
        if _quiet_checkpoints(store, pipeline) != checkpoints:
            raise StateError(f"a run of pipeline {pipeline!r} committed while verify was reading: run `loader verify` again")
    finally:
        store.close()
    return Verification(pipeline, tuple(checks), tuple(notes))


def _verify_dimensions(config: LoaderConfig, store: StateStore) -> tuple[list[Check], list[str]]:
    """Each loaded dimension's current rows in every sink against its files as they are: the same keys
    with the same values (their `row_hash`), no key current twice. Region "-": a dimension table is not
    split by region. A dimension whose files changed since its last load is left to the next run."""
    from loader.landing.fingerprint import files_fingerprint
    from loader.protocol.dimension_loads import fingerprint_of, read_incoming
    from loader.transform.history import ROW_HASH, DimensionSpec, compared_columns

    loads = store.dimension_loads(config.pipeline)
    checks: list[Check] = []
    notes: list[str] = []
    for name, load in loads.items():
        dim = config.dimensions.named(name)
        if not dim.load:
            continue
        files, infos = files_fingerprint(config, name)
        if fingerprint_of(config, name, files) != load.fingerprint:
            notes.append(f"dimension {name}: its files changed since its last load: the next run loads them")
            continue
        key = list(config.dimensions.key_of(name))
        rows, _ = read_incoming(config, name, [i.path for i in infos])
        if dim.cursor:  # change files: the newest version of each key is the current one
            rows = dedupe_latest(rows, key=key, cursor=dim.cursor)
        columns = [*key, ROW_HASH]
        want = digest(_whole(rows.select(columns)), columns)
        spec = DimensionSpec(config.pipeline, name, tuple(key), dim.mode)
        for sink in enabled_sinks(config):
            held = sink.dimension_rows(spec, compared_columns(spec, dim.cursor))
            held = None if held is None else _whole(held.select(columns))
            checks += _compare(name, sink.name, want, digest(held, columns), duplicates(held, key))
    return checks, notes


def _whole(table: pa.Table) -> pa.Table:
    return table.append_column("region", pa.array([DIMENSION_REGION] * table.num_rows, pa.string()))


def print_verification(result: Verification) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.pipeline}: sinks against the landing zone over the committed windows")
    for column in ("table", "region", "sink", "expected rows", "actual rows", "checksum ok", "status"):
        table.add_column(column)
    for c in result.checks:
        status = "ok" if c.ok else "[red]MISMATCH[/]" + (f" ({c.duplicates:,} duplicates)" if c.duplicates else "")
        table.add_row(c.table, c.region, c.sink, f"{c.expected_rows:,}", f"{c.actual_rows:,}",
                      "yes" if c.expected_checksum == c.actual_checksum else "[red]no[/]", status)
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200).print(table)
