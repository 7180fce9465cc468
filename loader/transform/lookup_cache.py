"""Prepared dimensions kept between runs, keyed by the dimension files' fingerprints.

An increment looks up a few thousand keys in tables of millions of rows (customer at SF10: 1.5M rows);
reading and preparing those tables on every run made a run's cost grow with the dimension, not with
its data. The prepared tables (customers, suppliers, nations: sorted by key, keys checked unique,
segment and geography attached) are kept as Arrow IPC files and memory-mapped on a hit, so a run whose
dimension files did not change reads only their Parquet footers.

The key hashes every dimension file's path, size, modification time and Parquet footer (row group
offsets and statistics), with the preparation's format: a changed, added or removed file misses,
whatever the clocks say, and an entry made from other files is never used. An entry is stored only if
the files did not change while they were read. The cache is a local folder, per machine: a miss costs
one read of the dimensions, as without it; any trouble with it is logged and the run reads them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from loader.config import DIMENSION_KEYS, LoaderConfig
from loader.landing.fingerprint import files_fingerprint
from loader.transform.decimal_rules import SEGMENTS
from loader.transform.lookups import COLUMNS, Lookups

log = logging.getLogger(__name__)

#: Bump when what `Lookups.from_tables` prepares changes: older entries then miss.
FORMAT = 2
TABLES = tuple(DIMENSION_KEYS)  # customer, supplier, nation, region
PARTS = tuple(f.name for f in fields(Lookups))  # customers, suppliers, nations: one Arrow file each
ENV_DIR = "LOADER_CACHE_DIR"


@dataclass(frozen=True)
class LookupCache:
    """What the cache needs of the config: its folder, the pipeline (entries are per pipeline), the
    dimension folders the lookups are made from, and whether it is on (`run.dimension_cache`)."""

    folder: Path
    pipeline: str
    dimension_uris: tuple[tuple[str, str], ...]  # (table, folder URI), in `TABLES` order
    enabled: bool = True

    @classmethod
    def of(cls, config: LoaderConfig) -> LookupCache:
        uris = tuple((table, config.dimension_path(table)) for table in TABLES)
        return cls(cache_folder(config), config.pipeline, uris, config.run.dimension_cache)


def cache_folder(config: LoaderConfig) -> Path:
    """`run.cache_dir`, else $LOADER_CACHE_DIR, else `cache/` beside a SQLite state file, else
    `loader-cache` in the system temp folder."""
    if config.run.cache_dir:
        return Path(config.run.cache_dir)
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    folder = config.state.sqlite_folder
    return folder / "cache" if folder else Path(tempfile.gettempdir()) / "loader-cache"


def fingerprint(cache: LookupCache) -> str:
    """A hash of every dimension file (path, size, mtime, footer) and of the preparation's format."""
    digest = hashlib.sha256(repr((FORMAT, COLUMNS, SEGMENTS)).encode())
    for table, uri in cache.dimension_uris:
        digest.update(f"\0{table}\0{files_fingerprint(uri)[0]}".encode())
    return digest.hexdigest()


#: Reads of the dimension files while they keep changing under the reader, before a run gives up.
STABLE_READ_ATTEMPTS = 3


def load_cached(cache: LookupCache, build: Callable[[], Lookups]) -> Lookups:
    """The prepared dimensions: from the cache when the files match an entry, else built and stored."""
    return load_versioned(cache, build)[0]


def load_versioned(cache: LookupCache, build: Callable[[], Lookups], *,
                   keep: Collection[str] = ()) -> tuple[Lookups, str]:
    """The prepared dimensions and the fingerprint of exactly the files they were made from (a batch
    records it: its replay enriches from the same version). Files that change while they are read
    are read again. Entries of the fingerprints in `keep` (unfinished runs') are never evicted."""
    for _ in range(STABLE_READ_ATTEMPTS):
        key = fingerprint(cache)
        cached = load_version(cache, key)
        if cached is not None:
            log.debug("dimensions: prepared lookups from the cache (files unchanged)")
            return cached, key
        dims = build()
        if fingerprint(cache) != key:
            log.info("dimension files changed while they were read: reading them again")
            continue
        if cache.enabled:
            folder = cache.folder
            try:
                _store(folder, _entry(cache, key), dims, keep=keep)
            except OSError as error:
                log.warning("could not cache the prepared dimensions in %s (%s): the next run reads them "
                            "again. Set run.cache_dir to a writable folder", folder, error)
        return dims, key
    from loader.errors import SourceUnavailable

    raise SourceUnavailable(f"the dimension files changed during each of {STABLE_READ_ATTEMPTS} reads: run "
                            "again once whatever writes them has finished; nothing was written")


def load_version(cache: LookupCache, key: str) -> Lookups | None:
    """The prepared dimensions kept for the files of fingerprint `key`, or None (not kept, the cache
    off, or an unreadable entry, which is removed)."""
    if not cache.enabled:
        return None
    entry = _entry(cache, key)
    if not entry.is_dir():
        return None
    try:
        return Lookups(**{part: _read(entry / f"{part}.arrow") for part in PARTS})
    except (OSError, pa.ArrowInvalid) as error:  # a torn or evicted entry: read the files instead
        log.warning("dimension cache entry %s unreadable (%s): reading the dimension files", entry, error)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _entry(cache: LookupCache, key: str) -> Path:
    return cache.folder / f"{_safe(cache.pipeline)}-dimensions-{key[:24]}"


def current_entry(cache: LookupCache) -> Path:
    """Where the entry for the dimension files as they are now is (or would be) kept."""
    return _entry(cache, fingerprint(cache))


def _read(path: Path) -> pa.Table:
    """Zero-copy: the table's buffers point into the mapped file (kept mapped while they live)."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _store(folder: Path, entry: Path, dims: Lookups, *, keep: Collection[str] = ()) -> None:
    """Written in a temp folder, renamed into place (atomic); the pipeline's other entries removed,
    but for those of the fingerprints in `keep` (an unfinished run replays from its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for part in PARTS:
            table: pa.Table = getattr(dims, part)
            with (pa.OSFile(str(staging / f"{part}.arrow"), "wb") as sink,
                  pa.ipc.new_file(sink, table.schema) as writer):
                writer.write_table(table)
        try:
            os.rename(staging, entry)
        except OSError:
            if not entry.is_dir():  # else another process stored the same entry first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    prefix = entry.name[: -len(entry.name.rsplit("-", 1)[-1])]
    kept = {key[:24] for key in keep}
    for other in folder.glob(f"{prefix}*"):
        if other != entry and other.name[len(prefix):] not in kept:
            shutil.rmtree(other, ignore_errors=True)
    log.debug("dimensions: prepared lookups cached in %s", entry)


#: The parts `lookup_regions` keeps, by their code in its `part` column.
REGION_PARTS = {"customers": ("c_custkey", 0), "suppliers": ("s_suppkey", 1)}


def lookup_regions(dims: Lookups) -> bytes:
    """What `loader verify` keeps of a version of the dimensions: each customer's and supplier's region
    (an Arrow IPC stream, zstd: about a byte a key; columns part, key, region), to place every fact row
    as the batch that loaded it placed it."""
    parts = []
    for part, (key, code) in REGION_PARTS.items():
        table: pa.Table = getattr(dims, part)
        parts.append(pa.table({
            "part": pa.array(np.full(table.num_rows, code, dtype=np.int8)),
            "key": table[key].cast(pa.int64()),
            "region": table["region"].cast(pa.string()).dictionary_encode(),
        }).unify_dictionaries())
    return _ipc(pa.concat_tables(parts).unify_dictionaries().combine_chunks())


def read_regions(raw: bytes) -> pa.Table:
    """`lookup_regions`' bytes back as the table (part, key, region)."""
    return _from_ipc(raw)


def pack(dims: Lookups) -> bytes:
    """The prepared lookups as bytes for the state store (`pack_tables` of the parts, in `PARTS` order)."""
    return pack_tables([getattr(dims, part) for part in PARTS])


def unpack(raw: bytes) -> Lookups:
    """`pack`'s bytes back as the prepared lookups."""
    return Lookups(**dict(zip(PARTS, unpack_tables(raw), strict=True)))


def pack_tables(tables: Sequence[pa.Table]) -> bytes:
    """Tables as one byte string: each an Arrow IPC stream (zstd) preceded by its length (8 bytes,
    big-endian)."""
    out = bytearray()
    for table in tables:
        raw = _ipc(table)
        out += len(raw).to_bytes(8, "big") + raw
    return bytes(out)


def unpack_tables(raw: bytes) -> list[pa.Table]:
    """`pack_tables`' bytes back as the tables, in order."""
    tables, at = [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at:at + 8], "big")
        tables.append(_from_ipc(raw[at + 8:at + 8 + size]))
        at += 8 + size
    return tables


def _ipc(table: pa.Table) -> bytes:
    """One table as an Arrow IPC stream, zstd-compressed."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(raw: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(raw)).read_all()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
