"""`loader demo-data init | append` on the configured landing zone, local or on an object store (where
the generator works on a temporary local copy synced back: loader/demo/remote.py). Here the clock is
read: `now` defaults to the current UTC time (the generator itself never reads it)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast

from loader.config import is_remote
from loader.demo import generator

T = TypeVar("T")


def _on_landing_zone(root: str, work: Callable[[Path], T], *, download: bool) -> T:
    if not is_remote(root):
        return work(Path(root))
    from loader.demo.remote import on_local_copy

    return on_local_copy(root, work, download=download)


def has_landing_zone(root: str) -> bool:
    """True when the generator's state file is there (a demo landing zone was made)."""
    from pyarrow import fs as pafs

    from loader.storage import locate

    location = locate(root).child(generator.STATE_FILE)
    return bool(location.filesystem.get_file_info(location.path).type == pafs.FileType.File)


def _now(now: datetime | None) -> datetime:
    """`now`, or the current UTC time (the generator checks it)."""
    return datetime.now(UTC) if now is None else now


def init(root: str, *, scale: float, seed: int, days: int,
         now: datetime | None = None) -> generator.InitSummary:
    """A new landing zone at `root` whose history ends at `now` (default: the current time)."""
    at = _now(now)
    return _on_landing_zone(
        root, lambda path: generator.init_landing_zone(path, now=at, scale=scale, seed=seed, days=days),
        download=False)


def append(root: str, *, orders: int, updates: int, late: int, recent: int,
           update_from: str, deletes: int = 0, customer_changes: int = 0,
           now: datetime | None = None) -> generator.AppendSummary:
    """One batch arriving at `now` (default: the current time) in the landing zone at `root`."""
    pick = cast(generator.UpdatePick, update_from)  # one of the CLI's choices
    at = _now(now)
    return _on_landing_zone(root, lambda path: generator.append_batch(
        path, now=at, orders=orders, updates=updates, late=late, recent=recent, update_from=pick,
        deletes=deletes, customer_changes=customer_changes),
        download=True)
