"""`loader verify`: reconcile each enabled sink with the landing zone over the committed windows.

How it works, and why: docs/design.md, "What verify compares"."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from loader.audit.checksums import Digest, add_digest, digest, duplicates, row_hashes
from loader.audit.deep import ROW, VERSION
from loader.audit.placement import FILE, PLACED, Placement, place
from loader.config import DIMENSION_KEYS, LoaderConfig, SourceConfig
from loader.errors import ConfigError, LeaseHeld, SinkRejected, SinkUnavailable, StateError
from loader.kinds import fact_kind
from loader.landing.files import list_files, row_count
from loader.landing.sources import read_parquet
from loader.sinks import enabled_sinks, sink_class
from loader.sinks.base import DELETED, DELETED_AT, PARTITION_REGION, Sink, deleted_flags, region_counts
from loader.storage import Location, locate
from loader.transform.lookup_versions import VersionLookups
from loader.transform.lookups import Lookups
from loader.transform.tables import dedupe_latest
from state import Checkpoint, StateStore, Window

log = logging.getLogger(__name__)
#: The region of a dimension table's checks (a dimension table is not split by region).
DIMENSION_REGION = "-"


@dataclass(frozen=True)
class SinkCheck:
    table: str
    region: str
    sink: str
    expected_rows: int
    actual_rows: int
    expected_checksum: str
    actual_checksum: str
    duplicates: int
    #: Rows whose region folder names another region than their `region` column (Parquet).
    misfiled: int = 0
    #: What the checksum covers: "keys" (key, cursor, delete mark; a dimension's values) or "values"
    #: (--deep: every column, recomputed through the stage chain).
    compared: str = "keys"

    @property
    def ok(self) -> bool:
        return (self.expected_rows == self.actual_rows and self.expected_checksum == self.actual_checksum
                and self.duplicates == 0 and self.misfiled == 0)

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
            if self.compared == "values":
                parts.append("checksum of every column differs from the stage chain's recomputation"
                             + (": a wrong value (enrichment, currency, amount, masking, "
                                "a pass-through column)"
                                if same_count else ""))
            else:
                parts.append(f"checksum of (key, {'values' if dimension else 'cursor, delete mark'}) differs"
                             + (": wrong or stale versions" if same_count else ""))
        if self.duplicates:
            what = ("(key, cursor) version(s)" if sink_class(self.sink).capabilities.holds == "versions"
                    else "key(s)")
            what = "current key(s)" if self.region == DIMENSION_REGION else what
            parts.append(f"{self.duplicates:,} duplicated {what}")
        if self.misfiled:
            parts.append(f"{self.misfiled:,} row(s) in a region= folder of another region "
                         "than their region column")
        return f"table {self.table}, region {self.region}, sink {self.sink}: " + "; ".join(parts)


@dataclass(frozen=True)
class Verification:
    pipeline: str
    checks: tuple[SinkCheck, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "checks": [check.to_json() for check in self.checks],
                "notes": list(self.notes)}


# ------------------------------------------------------------------------------- reading


#: Landing rows of one table verify holds at once, at most (about 300 bytes each with two sinks' rows:
#: SF1's 6M lineitems peak at 1.9 GB; SF10's 60M in ten parts at about 2.3 GB). A larger table is
#: verified in key-hash parts, one at a time.
ROWS_PER_PART = 6_500_000


@dataclass(frozen=True)
class Part:
    """The keys whose hash falls in part `index` of `count` (every row of a key lands in one part, so
    dedupe, placement and duplicates work within it; checksums add up across parts)."""

    index: int = 0
    count: int = 1

    def of(self, rows: pa.Table, key: Sequence[str]) -> pa.Table:
        if self.count == 1 or rows.num_rows == 0:
            return rows
        return rows.filter(pa.array(row_hashes(rows, key) % np.uint64(self.count) == np.uint64(self.index)))


def parts_for(location: Location, paths: Sequence[str], wanted: int | None = None) -> int:
    """How many key-hash parts a table of these landing files is verified in: `wanted`, else enough
    for `ROWS_PER_PART` rows each (counted from the files' footers)."""
    if wanted:
        return wanted
    with ThreadPoolExecutor(max_workers=8) as pool:
        total = sum(pool.map(lambda path: row_count(location, path, what="verify"), paths))
    return max(1, -(-total // ROWS_PER_PART))


def _read_files(location: Location, paths: Sequence[str], columns: list[str], what: str, *,
                numbered: bool = False, part: Part = Part(), key: Sequence[str] = ()) -> pa.Table | None:
    """`columns` of every file, and `FILE`: the index in `paths` of the file each row came from (and,
    `numbered`, `ROW`: its row in the file); only the rows of `part` of the keys."""
    def read(index: int) -> pa.Table:
        rows = read_parquet(location, paths[index], what=what, columns=columns)
        rows = rows.append_column(FILE, pa.array(np.full(rows.num_rows, index, dtype=np.int32)))
        rows = (rows.append_column(ROW, pa.array(np.arange(rows.num_rows, dtype=np.int32))) if numbered
                else rows)
        return part.of(rows, key)

    with ThreadPoolExecutor(max_workers=4) as pool:
        parts = list(pool.map(read, range(len(paths))))
    return pa.concat_tables(parts, promote_options="permissive") if parts else None


def _landed_before(location: Location, partition_column: str, moment: datetime | None,
                   read: frozenset[str] = frozenset()) -> list[str]:
    """The source's files (planning's rules) that were there at `moment`, and those a committed run
    recorded as read (a replay reads a file rewritten since as it is now, whatever its mtime)."""
    paths = set(list_files(location, partition_column=partition_column, since=None))
    infos = location.filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True))
    return sorted(
        info.path for info in infos
        if info.path in paths
        and (moment is None or info.mtime is None or _utc(info.mtime) <= moment or info.path in read)
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def marker_of(source: SourceConfig, holds: str) -> str | None:
    """The delete mark a sink holding `holds` keeps for the source: the `_deleted` flag of each version
    in a log of versions, the `_deleted_at` time of a soft-deleting table of latest rows; None where
    there is none (no deletes, or hard deletes: the row is gone)."""
    if source.deletes is None:
        return None
    if holds == "versions":
        return DELETED
    return DELETED_AT if source.deletes.mode == "soft" else None


@dataclass
class Expected:
    """What the committed windows loaded, per kind of sink (`Capabilities.holds`), and the rows no
    recorded dimension version placed (see loader/audit/placement.py). For --deep, per kind the live
    rows' landing positions and versions (`winners`), the files read and the versions named."""

    tables: dict[str, pa.Table | None]
    unexplained: int = 0
    winners: dict[str, pa.Table | None] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)


def expected_rows(config: LoaderConfig, name: str, checkpoint: Checkpoint, seen_at: datetime | None,
                  dims: Lookups, read: frozenset[str] = frozenset(),
                  placement: Placement | None = None, *, deep: bool = False, part: Part = Part(),
                  paths: Sequence[str] | None = None) -> Expected:
    """What the committed windows loaded: key, cursor, region and delete mark of each key's latest
    version, per kind of sink (`Capabilities.holds`). The region is the one the dimension version the
    row's batch recorded gives it (`placement`), today's dimensions' only where no version is recorded.
    Upstream deletes (a source with `deletes`): a log of versions holds each key's latest version,
    tombstones included (`_deleted` true); a sink of the latest rows holds no key whose latest version
    is a tombstone (`hard`), or, marking them (`soft`), each key's latest live version with
    `_deleted_at` the cursor of a newer (or as new: a delete wins a tie) tombstone, else null."""
    from loader.execute.stages import StageChain

    # Rows a run quarantines never reach a sink: a null key or cursor, a cursor beyond the checkpoint
    # anyway (the future), no region.
    chain = StageChain.for_source(config, name, Window(lower=None, upper=checkpoint.cursor), upto="region")
    source = chain.source
    key, cursor = list(source.primary_key), source.cursor
    location = locate(config.source_path(name))
    columns = list(dict.fromkeys([*key, cursor, fact_kind(source.kind).lookup.fact_key,
                                  *([source.deletes.column] if source.deletes else [])]))
    paths = list(_landed_before(location, source.partition_column, seen_at, read) if paths is None else paths)
    rows = _read_files(location, paths, columns, f"source {name}", numbered=deep, part=part, key=key)
    if rows is None:
        return Expected({"versions": None, "latest": None})
    placement = placement or Placement()
    versions, codes = placement.versions(rows, paths, name, cursor)
    placed, unexplained = placement.regions(rows, paths, source=name, kind=source.kind, cursor=cursor,
                                            known=(versions, codes))
    rows = rows.append_column(PLACED, placed)
    rows = rows.append_column(VERSION, pa.array(codes)) if deep else rows.drop_columns([FILE])
    dead = chain.tombstone_mask(rows)
    landing_tombs = (rows.slice(0, 0) if dead is None
                     else rows.filter(pa.array(dead)).select([*key, cursor, PLACED]))
    wanted = [*key, cursor, "region"]
    out, _ = chain.run(rows, dims)
    out = place(out, landing_tombs, key, cursor)
    found = Expected({}, unexplained, paths=paths, versions=versions)
    positions = [FILE, ROW, VERSION, *key, cursor]
    if source.deletes is None:
        found.tables = {"versions": out.select(wanted), "latest": out.select(wanted)}
        if deep:  # one table for both kinds: --deep recomputes it once
            found.winners = dict.fromkeys(("versions", "latest"), out.select(positions))
        return found
    import pyarrow.compute as pc

    live_out = out.filter(pc.invert(out[DELETED]))
    found.tables = {"versions": out.select([*wanted, DELETED]), "latest": live_out.select(wanted)}
    if deep:
        found.winners = dict.fromkeys(("versions", "latest"), live_out.select(positions))
    if source.deletes.mode == "hard":
        return found
    # soft: tombstones mark the stored version, which keeps its cursor
    live = rows if dead is None else rows.filter(pa.array(~dead))
    latest, _ = replace(chain, source=source.model_copy(update={"deletes": None})).run(live, dims)
    latest = place(latest, landing_tombs.slice(0, 0), key, cursor)
    if deep:
        found.winners["latest"] = latest.select(positions)
    tombs = out.filter(out[DELETED]).select([*key, cursor]).rename_columns([*key, DELETED_AT])
    latest = latest.select(wanted).join(tombs, keys=key, join_type="left outer")
    found.tables["latest"] = latest.select([*wanted, DELETED_AT])
    return found


def held_rows(sink: Sink[Any], name: str, key: Sequence[str], cursor: str,
              marker: str | None = None,
              part: Part = Part()) -> tuple[Digest, dict[str, int], dict[str, int]]:
    """What `sink` holds of table `name` (its `read_back`; of the keys in `part`): the digest of each
    key's newest version (with its delete `marker`), per region the duplicates (a key twice where it
    holds the latest, a (key, cursor, mark) version twice where it holds a log of versions), and per
    region the rows its region folder places elsewhere."""
    columns = [*key, cursor, *([marker] if marker else [])]
    rows = _read_back(sink, name, columns, marker, part, key)
    misfiled = _misfiled(rows)
    if rows is not None and PARTITION_REGION in rows.column_names:
        rows = rows.drop_columns([PARTITION_REGION])
    if sink.capabilities.holds == "versions":
        dead = None if rows is None or marker != DELETED else rows[DELETED]  # a tombstone wins a tie
        latest = None if rows is None else dedupe_latest(rows, key=key, cursor=cursor, tombstones=dead)
        return digest(latest, columns), duplicates(rows, columns), misfiled
    return digest(rows, columns), duplicates(rows, list(key)), misfiled


def _read_back(sink: Sink[Any], name: str, columns: list[str], marker: str | None, part: Part = Part(),
               key: Sequence[str] = ()) -> pa.Table | None:
    """`read_back` (of the keys in `part`: read a piece at a time, the others' rows dropped as they
    come), the delete mark as its kind has it: a table that never stored one (no tombstone came yet)
    reads as null marks; `_deleted` null (a version written before deletes) as false."""
    def read(wanted: list[str]) -> pa.Table | None:
        if part.count == 1:
            return sink.read_back(name, wanted)
        pieces = [part.of(piece, key) for piece in sink.scan(name, wanted)]
        return pa.concat_tables(pieces) if pieces else None

    try:
        rows = read(columns)
    except (SinkRejected, SinkUnavailable, KeyError, pa.ArrowInvalid, *_snowflake_errors()):
        if marker is None:
            raise
        rows = read(columns[:-1])  # a table without the mark column: no delete reached it yet
        if rows is None:
            return None
        kind = pa.bool_() if marker == DELETED else rows.schema.field(columns[-2]).type
        rows = rows.append_column(marker, pa.nulls(rows.num_rows, kind))
    if rows is not None and marker == DELETED:
        rows = rows.set_column(rows.schema.get_field_index(DELETED), DELETED, deleted_flags(rows[DELETED]))
    return rows


def _snowflake_errors() -> tuple[type[Exception], ...]:
    """The connector's error class, where it is installed (a missing column is its ProgrammingError)."""
    try:
        from snowflake.connector.errors import Error
    except ImportError:
        return ()
    return (Error,)


def _misfiled(rows: pa.Table | None) -> dict[str, int]:
    """Per region (the column's), the rows whose region folder names another region."""
    if rows is None or PARTITION_REGION not in rows.column_names or rows.num_rows == 0:
        return {}
    import pyarrow.compute as pc

    same = pc.fill_null(pc.equal(rows[PARTITION_REGION], rows["region"].cast(pa.string())), False)
    wrong = rows.filter(pc.invert(same))
    return region_counts(wrong.select(["region"])) if wrong.num_rows else {}


# ------------------------------------------------------------------------------- comparing


def _compare(table: str, sink: str, want: Digest, got: Digest, dups: dict[str, int],
             misfiled: dict[str, int] | None = None, compared: str = "keys") -> list[SinkCheck]:
    misfiled = misfiled or {}
    checks = []
    for region in sorted(set(want) | set(got) | set(dups) | set(misfiled)):
        (e_rows, e_sum), (a_rows, a_sum) = want.get(region, (0, 0)), got.get(region, (0, 0))
        checks.append(SinkCheck(table, region, sink, e_rows, a_rows, f"{e_sum:016x}", f"{a_sum:016x}",
                            dups.get(region, 0), misfiled.get(region, 0), compared))
    return checks


def _verify_table(config: LoaderConfig, name: str, checkpoint: Checkpoint, seen_at: datetime | None,
                  dims: Lookups, read: frozenset[str] = frozenset(), notes: list[str] | None = None,
                  placement: Placement | None = None, lookups: VersionLookups | None = None,
                  parts: int | None = None) -> list[SinkCheck]:
    """Per region and sink: each row's key, cursor, region (as its batch placed it) and delete mark,
    no duplicate, and no row in another region's folder; with `lookups` (--deep) every column too.
    A large table goes in key-hash parts (`parts`, else `parts_for`), one at a time: memory follows a
    part, and the counts and checksums add up."""
    source = config.sources[name]
    notes = [] if notes is None else notes
    location = locate(config.source_path(name))
    paths = _landed_before(location, source.partition_column, seen_at, read)
    count = parts_for(location, paths, parts)
    sinks = enabled_sinks(config)
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (sink, compared) -> [want, got, dups, misfiled]
    unexplained = 0
    winners: dict[str, list[pa.Table]] = {}  # --deep: per kind of sink, each part's winners, compacted
    versions: list[str] = []
    for index in range(count):
        part = Part(index, count)
        if count > 1:
            log.info("verify %s: key part %d of %d", name, index + 1, count)
        expected = expected_rows(config, name, checkpoint, seen_at, dims, read, placement,
                                 deep=lookups is not None, part=part, paths=paths)
        unexplained += expected.unexplained
        for sink in sinks:
            marker = marker_of(source, sink.capabilities.holds)
            columns = [*source.primary_key, source.cursor, *([marker] if marker else [])]
            want = digest(expected.tables[sink.capabilities.holds], columns)
            _gather(found, (sink.name, "keys"), want,
                    *held_rows(sink, name, source.primary_key, source.cursor, marker, part))
        if lookups is not None:  # kept small (20 bytes a row), recomputed once all parts are done
            from loader.audit.deep import compact

            versions = expected.versions
            shared = expected.winners.get("versions") is expected.winners.get("latest")  # no soft deletes
            for holds, table in expected.winners.items():
                if shared and holds == "latest":
                    winners["latest"] = winners["versions"]  # one list: recomputed once
                elif table is not None:
                    winners.setdefault(holds, []).append(compact(table, source))
        del expected
    if lookups is not None:
        for sink_name, want, got in _deep_digests(config, name, checkpoint, paths, versions, winners, sinks,
                                                  lookups, notes):
            _gather(found, (sink_name, "values"), want, got)
    if unexplained:
        notes.append(f"{name}: {unexplained:,} row(s) read by no run that recorded its dimension version "
                     "(loaded before versions were kept): placed by today's dimension files")
    checks = []
    for compared in ("keys", "values"):
        for sink in sinks:
            if (sink.name, compared) in found:
                want, got, dups, misfiled = found[(sink.name, compared)]
                checks += _compare(name, sink.name, want, got, dups, misfiled, compared=compared)
    return checks


def _gather(found: dict[tuple[str, str], list[dict[str, Any]]], where: tuple[str, str],
            *counts: dict[str, Any]) -> None:
    """Add one part's digests (and duplicate and misfiled counts) to the table's."""
    totals = found.setdefault(where, [{}, {}, {}, {}])
    for at, count in enumerate(counts):
        if at < 2:
            add_digest(totals[at], count)
        else:
            for region, n in count.items():
                totals[at][region] = totals[at].get(region, 0) + n


def _deep_digests(config: LoaderConfig, name: str, checkpoint: Checkpoint, paths: Sequence[str],
                  versions: list[str], winners: dict[str, list[pa.Table]], sinks: list[Sink[Any]],
                  lookups: VersionLookups, notes: list[str]) -> list[tuple[str, Digest, Digest]]:
    """--deep: per sink, (its name, the stage chain's recomputation of every column of the rows it must
    hold, from their landing rows and their batches' dimension versions, what it holds of them). Once
    per table, after every key part: each landing file and each sink read once."""
    from loader.audit.deep import expected_values, held_values
    from loader.execute.stages import StageChain

    chain = StageChain.for_source(config, name, Window(lower=None, upper=checkpoint.cursor))
    location = locate(config.source_path(name))
    out = []
    computed: dict[str, Any] = {}
    whole = {holds: pa.concat_tables(parts) if parts else None for holds, parts in winners.items()}
    for sink in sinks:
        holds = sink.capabilities.holds
        same = next((k for k in computed if winners.get(k) is winners.get(holds)), None)
        if same is not None:  # the same rows (no soft deletes): recomputed once
            computed[holds] = computed[same]
        elif holds not in computed:
            computed[holds] = expected_values(chain, location, paths, whole.get(holds), versions, lookups)
            note = (f"{name}: --deep left {len(computed[holds].left_out):,} row(s) unchecked: "
                    "their batches' dimension lookups were not kept (loaded by an older loader); their keys, "
                    "cursors, regions and marks are checked")
            if len(computed[holds].left_out) and note not in notes:
                notes.append(note)
        values = computed[holds]
        out.append((sink.name, values.digest, held_values(sink, name, config.sources[name], values)))
    return out


def _quiet_checkpoints(store: StateStore, pipeline: str) -> dict[str, Checkpoint]:
    """The checkpoints, provided no run can be changing the sinks right now."""
    lease = store.lease(pipeline)
    if lease is not None and not lease.expired(datetime.now(UTC)):
        raise LeaseHeld(
            f"a run of pipeline {pipeline!r} is in progress ({lease.holder}, "
            f"lease until {lease.expires_at:%Y-%m-%d %H:%M:%S} UTC) "
            "and the sinks may hold rows it has not committed: run `loader verify` again when it has finished"
        )
    for mode in ("incremental", "backfill"):
        unfinished = store.unfinished_run(pipeline, mode=mode)
        if unfinished is not None:
            raise StateError(
                f"{mode} run {unfinished.run_number} of pipeline {pipeline!r} did not finish, "
                "so the sinks may hold rows past the checkpoints: let it finish "
                "(`loader run --incremental` replays an incremental run), then run `loader verify` again"
            )
    return store.checkpoints(pipeline)


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


def verify(config: LoaderConfig, *, tables: Sequence[str] = (), deep: bool = False,
           parts: int | None = None) -> Verification:
    known = [*config.sources, *DIMENSION_KEYS]
    unknown = [t for t in tables if t not in known]
    if unknown:
        raise ConfigError(f"unknown table(s) {', '.join(unknown)}: "
                          f"pass --table with one of {', '.join(known)}")
    # the fact sources asked for, and the dimensions (every one when no --table narrows it)
    names = [t for t in dict.fromkeys(tables) if t in config.sources] if tables else list(config.sources)
    dimensions = {t for t in tables if t in DIMENSION_KEYS} if tables else set(DIMENSION_KEYS)
    pipeline = config.pipeline
    store = StateStore.open_to_read(config.state.url)
    try:
        checkpoints = _quiet_checkpoints(store, pipeline)
        if not checkpoints:
            note = (f"pipeline {pipeline!r} was never loaded: nothing to verify "
                    "(run `loader run` first)")
            return Verification(pipeline, (), (note,))
        from loader.execute.choice import load_lookups

        dims, _ = load_lookups(config)
        checks: list[SinkCheck] = []
        notes = []
        placement = Placement.from_ledger(store, pipeline)  # the ledger, read once
        lookups = None
        if deep:
            from loader.transform.lookup_cache import LookupCache, load_version

            cache = LookupCache.of(config)
            lookups = VersionLookups(store, pipeline, local=lambda version: load_version(cache, version))
        for name in names:
            checkpoint = checkpoints.get(name)
            if checkpoint is None:
                notes.append(f"{name}: never loaded, nothing to verify")
                continue
            checks += _verify_table(config, name, checkpoint, _seen_at(store, pipeline, checkpoint), dims,
                                    placement.read_by_incremental_runs(name), notes, placement, lookups,
                                    parts)
        if dimensions:
            dimension_checks, dimension_notes = _verify_dimensions(config, store, dimensions)
            checks += dimension_checks
            notes += dimension_notes
        from loader.protocol.fact_gaps import by_sink, gap_message, open_fact_gaps

        # a sink enabled later: what fills it
        for sink, gaps in by_sink(open_fact_gaps(config, store)).items():
            notes.append(gap_message(config, sink, gaps))
        if _quiet_checkpoints(store, pipeline) != checkpoints:
            raise StateError(f"a run of pipeline {pipeline!r} committed while verify was reading: "
                             "run `loader verify` again")
    finally:
        store.close()
    return Verification(pipeline, tuple(checks), tuple(notes))


def _verify_dimensions(config: LoaderConfig, store: StateStore,
                       only: set[str]) -> tuple[list[SinkCheck], list[str]]:
    """Each loaded dimension's current rows in every sink against its files as they are: the same keys
    with the same values (their `row_hash`), no key current twice. Region "-": a dimension table is not
    split by region. A dimension whose files changed since its last load is left to the next run."""
    from loader.landing.fingerprint import files_fingerprint
    from loader.protocol.dimension_loads import fingerprint_of, read_incoming
    from loader.transform.dimension_changes import ROW_HASH, DimensionSpec, compared_columns

    loads = store.dimension_loads(config.pipeline)
    checks: list[SinkCheck] = []
    notes: list[str] = []
    for name in sorted(only - set(loads)):
        notes.append(f"dimension {name}: never loaded, nothing to verify")
    for name, load in loads.items():
        dim = config.dimensions.named(name)
        if not dim.load or name not in only:
            continue
        files, infos = files_fingerprint(config.dimension_path(name))
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
    for column in ("table", "region", "sink", "compared", "expected rows", "actual rows", "checksum ok",
                   "status"):
        table.add_column(column)
    for c in result.checks:
        status = "ok" if c.ok else "[red]MISMATCH[/]" \
            + (f" ({c.duplicates:,} duplicates)" if c.duplicates else "") \
            + (f" ({c.misfiled:,} in another region's folder)" if c.misfiled else "")
        table.add_row(c.table, c.region, c.sink, c.compared, f"{c.expected_rows:,}", f"{c.actual_rows:,}",
                      "yes" if c.expected_checksum == c.actual_checksum else "[red]no[/]", status)
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200).print(table)
