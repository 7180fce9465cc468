"""Where each fact row must sit: the region the dimension version its batch loaded with gives it.

A run records, before any write, the fact files it reads and the version (fingerprint) of the dimension
files its lookups were built from; the state store keeps each version's customer and supplier regions
(loader/protocol/steps.py). A version (key, cursor) is landed by the first committed run that read it
(every sink skips a version it holds: the lookback and backfills re-read versions, never rewrite them),
so a landing row's batch is the first committed run, in commit order, whose recorded files hold the
row's file and whose window holds its cursor. Its region is then that run's version's lookup of the
row's customer (orders) or supplier (lineitem), never today's: a customer that moved since keeps its
facts where they loaded. Rows no recorded run explains (runs recorded before versions were kept, files
no run lists) are placed by today's dimension files, and counted for a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from loader.kinds import UNKNOWN_REGION, fact_kind
from loader.transform.lookup_cache import REGION_PARTS, read_regions
from loader.transform.tables import dedupe_latest
from state import StateStore, Window

#: The column of the landing rows naming the file each came from (an index into the paths read).
FILE = "__file"
#: The column carrying each landing row's placed region through the stage chain.
PLACED = "__placed_region"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RunRead:
    """A committed run's part in one source: its window, the files it read, its dimension version."""

    run_number: int
    mode: str  # incremental | backfill
    window: Window
    files: frozenset[str]
    version: str | None  # None: recorded before dimension versions were kept


@dataclass
class Placement:
    """Each committed run's reads per source (in commit order) and the region lookups of each version."""

    reads: dict[str, list[RunRead]] = field(default_factory=dict)
    lookups: dict[str, pa.Table | None] = field(default_factory=dict)  # version -> (part, key, region)

    @classmethod
    def from_ledger(cls, store: StateStore, pipeline: str) -> Placement:
        placement = cls()
        committed = [r for r in store.runs(pipeline, limit=None) if r.status == "committed"]
        committed.sort(key=lambda r: (r.finished_at or r.started_at, r.run_number))
        for run in committed:
            inputs = run.inputs or {}
            version = inputs.get("dimensions")
            for source, window in run.windows.items():
                files = frozenset(f["path"]
                                  for f in inputs.get("sources", {}).get(source, {}).get("files", []))
                placement.reads.setdefault(source, []).append(RunRead(run.run_number, run.mode, window, files,
                                                                    version))
            if version and version not in placement.lookups:
                raw = store.lookup_version(pipeline, version)
                placement.lookups[version] = None if raw is None else read_regions(raw)
        return placement

    def read_by_incremental_runs(self, source: str) -> frozenset[str]:
        """The files committed incremental runs recorded as their input of `source`."""
        return frozenset(path for read in self.reads.get(source, []) if read.mode == "incremental"
                         for path in read.files)

    def regions(self, rows: pa.Table, paths: Sequence[str], *, source: str, kind: str, cursor: str,
                known: tuple[list[str], np.ndarray] | None = None) -> tuple[pa.Array, int]:
        """Per landing row of `rows` (with `FILE`): the region its batch's dimension version gives it
        (null where no recorded version explains the row), and how many rows are so left to today's
        dimensions. `known`: `versions`' answer for these rows, when the caller has it."""
        lookup = fact_kind(kind).lookup
        versions, codes = known or self.versions(rows, paths, source, cursor)
        names: list[str] = [UNKNOWN_REGION]
        placed = np.full(rows.num_rows, -1, dtype=np.int32)
        if lookup.fact_key in rows.column_names:
            wanted = np.asarray(
                rows[lookup.fact_key].cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False))
            for code, version in enumerate(versions):
                chosen = np.flatnonzero(codes == code)
                if len(chosen):
                    placed[chosen] = _lookup(self.lookups[version], REGION_PARTS[lookup.dimension][1],
                                             wanted[chosen], names)
        unexplained = int(np.count_nonzero(placed < 0))
        region = pa.DictionaryArray.from_arrays(pa.array(placed, mask=placed < 0),
                                                pa.array(names, pa.string()))
        return region.cast(pa.string()), unexplained

    def versions(self, rows: pa.Table, paths: Sequence[str], source: str,
                 cursor: str) -> tuple[list[str], np.ndarray]:
        """The dimension versions with kept lookups, and per row the index of the version of the first
        committed run that read it (-1: none did, it recorded no version, or its lookups are not kept)."""
        versions = [v for v, table in self.lookups.items() if table is not None]
        index = {v: i for i, v in enumerate(versions)}
        by_file: dict[str, list[RunRead]] = {}
        for read in self.reads.get(source, []):
            for path in read.files:
                by_file.setdefault(path, []).append(read)
        moments = _micros(rows[cursor])
        files = rows[FILE].to_numpy()
        found = np.full(rows.num_rows, -1, dtype=np.int32)
        order = np.argsort(files, kind="stable")
        bounds = np.searchsorted(files[order], np.arange(len(paths) + 1))
        for number, path in enumerate(paths):
            left = order[bounds[number]:bounds[number + 1]]
            for read in by_file.get(path, ()):
                if not len(left):
                    break
                lower = -(2**63) if read.window.lower is None else _as_micros(read.window.lower)
                inside = (moments[left] > lower) & (moments[left] <= _as_micros(read.window.upper))
                found[left[inside]] = index.get(read.version, -1) if read.version else -1
                left = left[~inside]
        return versions, found


def _lookup(table: pa.Table, part: int, wanted: np.ndarray, names: list[str]) -> np.ndarray:
    """The region of each key in `wanted` by one version's lookups of `part`, as an index into `names`
    (grown as new names appear; UNKNOWN, index 0, where the version has no such key)."""
    picked = table.filter(pa.array(table["part"].to_numpy() == part))
    known = picked["key"].to_numpy()
    column = picked["region"].combine_chunks()
    if not isinstance(column, pa.DictionaryArray):
        column = column.dictionary_encode()
    remap = np.array([_name_index(names, name or UNKNOWN_REGION)
                      for name in column.dictionary.to_pylist()] or [0])
    codes = remap[np.asarray(column.indices.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)] \
        if len(known) else np.zeros(0, dtype=np.int64)
    out = np.zeros(len(wanted), dtype=np.int32)
    if len(known):
        slot = np.clip(np.searchsorted(known, wanted), 0, len(known) - 1)
        hit = known[slot] == wanted
        out[hit] = codes[slot[hit]]
    return out


def _name_index(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


def _micros(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp column as microseconds since the epoch (naive values taken as UTC)."""
    kind = column.type
    if pa.types.is_date(kind):
        column = column.cast(pa.timestamp("us"))
    else:
        column = column.cast(pa.timestamp("us", tz=kind.tz), safe=False)
    return np.asarray(column.cast(pa.int64()).fill_null(-(2**63)).to_numpy())


def _as_micros(moment: datetime) -> int:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def place(out: pa.Table, landing: pa.Table, key: Sequence[str], cursor: str) -> pa.Table:
    """`out` (the stage chain's rows, which carried `PLACED` through from the landing rows) with each
    row's region as its batch placed it, where a recorded version explains the row, else as `out` has
    it; without `PLACED`. A tombstone leaves the chain without the column: its placement is joined back
    from `landing` (the tombstones' landing rows, with `PLACED`) on (key, cursor)."""
    import pyarrow.compute as pc

    if PLACED not in out.column_names:
        return out
    placed = out[PLACED]
    if landing.num_rows and out.num_rows:
        columns = list(dict.fromkeys([*key, cursor]))
        numbered = out.select(columns).append_column("__row",
                                                     pa.array(np.arange(out.num_rows, dtype=np.int64)))
        found = dedupe_latest(landing.select([*columns, PLACED]), key=columns, cursor=cursor)
        joined = numbered.join(found.rename_columns([*columns, "__found"]), keys=columns, join_type="inner")
        at = np.full(out.num_rows, -1, dtype=np.int64)  # per row of `out`: its row in `joined`, or none
        at[joined["__row"].to_numpy()] = np.arange(joined.num_rows)
        placed = pc.coalesce(placed, joined["__found"].take(pa.array(at, mask=at < 0)))
    region = pc.coalesce(placed, out["region"].cast(pa.string()))
    out = out.set_column(out.schema.get_field_index("region"), pa.field("region", pa.string()), region)
    return out.drop_columns([PLACED])
