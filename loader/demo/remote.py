"""`loader demo-data` on an object store (s3://...): the generator works on a local folder, so it runs
on a temporary local copy of the landing zone and the changes are synced back.

Init copies nothing down (the prefix must hold no landing zone); append copies the landing zone down,
appends, then deletes what the append removed (a crashed batch's leftovers) and uploads what it added
or changed (a new customer snapshot with --customer-changes: one object, replaced whole), the
generator's state file last: a crash mid-upload leaves the state of the previous batch,
so the next append writes the same batch again. Meant for demo sizes: the whole zone passes through
the temporary folder, which is removed afterwards.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow.fs as pafs

from loader.demo.generator import STATE_FILE
from loader.errors import ConfigError
from loader.storage import Location, locate, storage_error

T = TypeVar("T")


def _remote_files(location: Location) -> dict[str, int]:
    """Relative path -> size of every object under the location (none if the prefix is empty)."""
    selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
    files = {}
    for info in location.filesystem.get_file_info(selector):
        if info.type == pafs.FileType.File:
            files[info.path[len(location.path.rstrip("/")) + 1:]] = info.size or 0
    return files


def _local_files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file()}


def on_local_copy(uri: str, work: Callable[[Path], T], *, download: bool) -> T:
    """Run `work` on a local copy of the landing zone at `uri`, then sync its changes back."""
    location = locate(uri)
    local = pafs.LocalFileSystem()
    try:
        remote = _remote_files(location)
        if not download and remote:
            raise ConfigError(f"{uri} already holds files ({len(remote)}): use a new prefix or delete them "
                              "(to add data to a landing zone, use `loader demo-data append`)")
        with tempfile.TemporaryDirectory(prefix="loader-demo-") as tmp:
            root = Path(tmp) / "landing"
            root.mkdir()
            for name in remote:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(f"{location.path}/{name}", str(root / name),
                                source_filesystem=location.filesystem, destination_filesystem=local)
            before = _local_files(root)
            result = work(root)
            after = _local_files(root)
            for name in sorted(set(before) - set(after)):
                location.filesystem.delete_file(f"{location.path}/{name}")
            changed = sorted((n for n in after if before.get(n) != after[n]),
                             key=lambda n: n.endswith(STATE_FILE))
            for name in changed:  # the state file last
                pafs.copy_files(str(root / name), f"{location.path}/{name}",
                                source_filesystem=local, destination_filesystem=location.filesystem)
        return result
    except OSError as error:
        raise storage_error(error, uri, side="source", doing="syncing the demo landing zone with") from error
