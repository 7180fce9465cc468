"""`loader demo-data init | append` on the configured landing zone, local or on an object store (where
the generator works on a temporary local copy synced back: loader/demo/remote.py)."""

from __future__ import annotations

from collections.abc import Callable
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


def init(root: str, *, scale: float, seed: int, days: int) -> generator.InitSummary:
    return _on_landing_zone(root, lambda path: generator.init_landing_zone(path, scale=scale, seed=seed, days=days),
                            download=False)


def append(root: str, *, orders: int, updates: int, late: int, recent: int,
           update_from: str, deletes: int = 0, customer_changes: int = 0) -> generator.AppendSummary:
    pick = cast(generator.UpdatePick, update_from)  # one of the CLI's choices
    return _on_landing_zone(root, lambda path: generator.append_batch(
        path, orders=orders, updates=updates, late=late, recent=recent, update_from=pick, deletes=deletes,
        customer_changes=customer_changes),
        download=True)
