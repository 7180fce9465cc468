"""`loader verify --deep`: every column of every row, recomputed as its batch computed it.

The default verify settles which version of each key every sink must hold, and where. `--deep` then
recomputes those rows' columns (enrichment, currency, amounts, masking: the whole stage chain, on the
CPU) from the landing rows and the dimension version their batch recorded (its prepared lookups,
rebuilt from the state store, loader/transform/lookup_versions.py), and compares, per table, region
and sink, the count and an order-independent checksum of every column (loader/audit/checksums.py)
with what the sink holds. A differing value anywhere fails its region's check.

Memory stays bounded: the landing side goes one dimension version at a time, a landing file per thread
(only the rows that won there); the sink side streams (`Sink.scan`), a few pieces at once, keeping per
row only what picks it (a 64-bit hash of its key and cursor). Rows whose batch recorded no dimension version,
or whose version's lookups were not kept (loaded by an older loader), are left out on both sides, and
counted in a note: their keys, cursors, regions and marks are still checked by the default verify.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loader.audit.checksums import Digest, add_digest, digest, row_hashes
from loader.config import SourceConfig
from loader.errors import BadSourceData
from loader.landing.files import files_schema
from loader.landing.sources import read_parquet
from loader.sinks.base import DELETED, DELETED_AT, PARTITION_REGION, deleted_flags
from loader.storage import Location
from loader.transform.lookup_versions import VersionLookups

#: Columns verify carries through its stage chain for --deep: each landing row's position (its file,
#: as an index into the paths read, and its row in that file) and its dimension version (an index
#: into the versions placement knows; -1: none).
ROW = "__row"
VERSION = "__version"
KEYS = "__keys"
#: Threads recomputing landing files or hashing sink pieces (the stages release the GIL in Arrow and numpy).
_WORKERS = min(4, os.cpu_count() or 2)
#: Loader bookkeeping the default verify compares already (delete marks), never hashed as values.
_MARKS = (DELETED, DELETED_AT)


@dataclass
class Values:
    """What `--deep` expects of one table in the sinks of one kind (`Capabilities.holds`)."""

    digest: Digest = field(default_factory=dict)
    #: The value columns hashed, in order (the stage chain's output, marks and bookkeeping left out).
    columns: list[str] = field(default_factory=list)
    #: Sorted hashes of (key, cursor) of the rows compared (a log of versions holds older ones too).
    compared: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    #: Sorted hashes of (key, cursor) of the rows left out (no kept dimension version).
    left_out: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))


def compact(winners: pa.Table, source: SourceConfig) -> pa.Table:
    """The winners as `expected_values` takes them, 20 bytes a row: `FILE`, `ROW`, `VERSION` and
    `KEYS`, the hash of each row's key and cursor (what picks it out of a sink)."""
    from loader.audit.placement import FILE

    keys = row_hashes(winners, [*source.primary_key, source.cursor])
    return winners.select([FILE, ROW, VERSION]).append_column(KEYS, pa.array(keys))


def expected_values(chain: Any, location: Location, paths: Sequence[str], winners: pa.Table | None,
                    versions: Sequence[str], lookups: VersionLookups) -> Values:
    """`winners` (the rows the sinks must hold, `compact`ed) recomputed through `chain` (a whole
    `StageChain`) with their versions' lookups, a version at a time, oldest first (each rebuilt from
    the one before), a landing file at a time."""
    from loader.audit.placement import FILE

    values = Values()
    if winners is None or winners.num_rows == 0:
        return values
    # 4 bytes a row each (no int64 copies: at SF10's 60M lineitems every copy is a quarter of a GB)
    files = np.asarray(winners[FILE].to_numpy(), dtype=np.int32)
    rows = np.asarray(winners[ROW].to_numpy(), dtype=np.int32)
    codes = np.asarray(winners[VERSION].to_numpy(), dtype=np.int32)
    values.columns = _value_columns(chain, location,
                                    [paths[int(i)] for i in np.flatnonzero(np.bincount(files))])
    by_version = {versions[int(code)]: int(code) for code in np.flatnonzero(np.bincount(codes[codes >= 0]))}
    lost = [code for version, code in by_version.items() if not lookups.recoverable(version)]
    left_out = (codes < 0) | np.isin(codes, lost)
    keys = np.asarray(winners[KEYS].to_numpy(), dtype=np.uint64)
    values.compared, values.left_out = _sorted_set(keys[~left_out]), _sorted_set(keys[left_out])
    del keys, left_out
    for version in lookups.order([v for v, code in by_version.items() if code not in lost]):
        chosen = np.flatnonzero(codes == by_version[version])
        dims = lookups.get(version)
        if dims is None:
            raise BadSourceData(f"the dimension lookups of version {version[:12]} could not be rebuilt "
                                "from the state store: run verify without --deep, and report this")
        chosen = chosen[np.argsort(files[chosen], kind="stable")]
        starts = np.flatnonzero(np.r_[True, files[chosen][1:] != files[chosen][:-1]])

        def recomputed(picked: np.ndarray, dims: Any = dims) -> Digest:
            landing = _read_rows(location, paths[files[picked[0]]], rows[picked], chain.name)
            out, _ = chain.split_region(chain.transform(chain.live_columns(landing), dims))
            return digest(_with_columns(out, values.columns), values.columns)

        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:  # a file per thread (as a load's transform)
            for part in pool.map(recomputed, np.split(chosen, starts[1:])):
                add_digest(values.digest, part)
    return values


def held_values(sink: Any, name: str, source: SourceConfig, values: Values) -> Digest:
    """What `sink` holds of the rows `values` compares, per region: count and checksum of the same
    columns, read a piece at a time. A log of versions (Parquet) is narrowed to the live versions
    `values` compares; rows `values` left out are left out here too."""
    key_cursor = [*source.primary_key, source.cursor]
    versions = sink.capabilities.holds == "versions"
    marked = versions and source.deletes is not None
    wanted = [c for c in dict.fromkeys([*key_cursor, *values.columns]) if c != "region"]
    def hashed(piece: pa.Table) -> Digest:
        if marked:
            piece = piece.filter(pc.invert(deleted_flags(piece[DELETED])))
        keys = row_hashes(piece, key_cursor)
        kept = _member(keys, values.compared) if versions else np.ones(len(keys), dtype=bool)
        if len(values.left_out):
            kept &= ~_member(keys, values.left_out)
        if PARTITION_REGION in piece.column_names:
            piece = piece.drop_columns([PARTITION_REGION])
        return digest(piece.filter(pa.array(kept)), values.columns)

    held: Digest = {}
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:  # the sink read in order, pieces hashed beside
        pending: deque[Future[Digest]] = deque()
        for piece in sink.scan(name, [*wanted, *([DELETED] if marked else [])]):
            pending.append(pool.submit(hashed, piece))
            while len(pending) > _WORKERS:  # at most a few pieces held at once
                add_digest(held, pending.popleft().result())
        for future in pending:
            add_digest(held, future.result())
    return held


def _value_columns(chain: Any, location: Location, paths: Sequence[str]) -> list[str]:
    """The columns the chain gives rows of these files (what the sinks got), marks left out."""
    landing = files_schema(location, paths)
    if landing is None:
        raise BadSourceData(f"the landing files of source {chain.name} disagree on column types: run verify "
                            "without --deep to see which rows the sinks hold, and fix the files")
    return [name for name in chain.output_schema(landing).names if name not in _MARKS]


def _read_rows(location: Location, path: str, rows: np.ndarray, source: str) -> pa.Table:
    try:
        landing = read_parquet(location, path, what=f"source {source}, read again by verify --deep")
        return landing.take(pa.array(rows))
    except IndexError as error:
        raise BadSourceData(f"cannot read {path} (source {source}) again for verify --deep: {error}. "
                            "It changed while verify read it: run verify again") from error


def _with_columns(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """`table` with every one of `columns` (nulls where a landing file had none) and its `region`."""
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))
    return table


def _sorted_set(hashes: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (a sort and a comparison of neighbours: numpy's `unique` hashes,
    many times slower on millions of 64-bit values)."""
    ordered = np.sort(hashes)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


def _member(hashes: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each of `hashes` is in `sorted_set`: looked up in sorted order (neighbouring searches
    touch neighbouring memory), answered in the original order."""
    if not len(sorted_set) or not len(hashes):
        return np.zeros(len(hashes), dtype=bool)
    order = np.argsort(hashes)
    slot = np.clip(np.searchsorted(sorted_set, hashes[order]), 0, len(sorted_set) - 1)
    found = np.empty(len(hashes), dtype=bool)
    found[order] = sorted_set[slot] == hashes[order]
    return found
