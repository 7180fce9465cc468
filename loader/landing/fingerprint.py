"""A fingerprint of a landing folder's files: path, size, modification time and Parquet footer (row
groups, offsets, statistics) of each, so any change to a file changes it, whatever the clocks say. Two
small reads per file, no data read: what lets a run skip dimension files that did not change. Paths
count from the folder: the same files in a zone copied or moved elsewhere keep their fingerprint (and
their prepared lookups)."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.fs as pafs

from loader.landing.files import list_file_infos
from loader.storage import Location, locate, storage_error


def files_fingerprint(uri: str) -> tuple[str, list[pafs.FileInfo]]:
    """A hash of the files of one dimension's folder (`uri`: path, size, mtime, Parquet footer: any
    change to a file changes it), and the files."""
    return folder_fingerprint(locate(uri))


def folder_fingerprint(location: Location) -> tuple[str, list[pafs.FileInfo]]:
    """`files_fingerprint` of the files under `location`, their paths taken from it."""
    infos = list_file_infos(location, partition_column="", since=None)
    root = location.path.rstrip("/") + "/"
    digest = hashlib.sha256(f"{len(infos)}".encode())
    for info in infos:
        relative = info.path[len(root):] if info.path.startswith(root) else info.path
        digest.update(f"\0{relative}\0{info.size}\0{info.mtime_ns}".encode())
        digest.update(_footer(location.filesystem, info.path, info.size, location.uri))
    return digest.hexdigest(), infos


def _footer(filesystem: pa.fs.FileSystem, path: str, size: int | None, uri: str) -> bytes:
    """The Parquet footer's bytes (metadata: row groups, offsets, statistics): two small reads."""
    try:
        with filesystem.open_input_file(path) as handle:
            size = size if size is not None else handle.size()
            if size < 12:
                return b""
            handle.seek(size - 8)
            tail = handle.read(8)
            length = int.from_bytes(tail[:4], "little")
            if tail[4:] != b"PAR1" or length > size - 12:
                return tail  # not Parquet: the reader reports it; the hash still covers what is there
            handle.seek(size - 8 - length)
            return handle.read(length)
    except OSError as error:
        raise storage_error(error, uri, side="source", doing=f"reading the footer of {path} in") from error
