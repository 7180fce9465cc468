"""One writer of a table at a time in this process. A parallel backfill's chunks are threads: two of them
writing one table must not interleave (each sink says at its use what would go wrong). Writers in other
processes are the table format's business (commit conflicts, transactions)."""

from __future__ import annotations

import threading

_GUARD = threading.Lock()
_LOCKS: dict[str, threading.Lock] = {}


def table_lock(name: str) -> threading.Lock:
    """The lock of the table `name` (its URI, or its qualified name in a catalog) in this process."""
    with _GUARD:
        return _LOCKS.setdefault(name, threading.Lock())
