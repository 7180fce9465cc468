"""The process's C allocator, set before any thread starts. glibc gives each thread that allocates its
own arena (up to 8 per core), and the pages freed in one arena are not reused by another: with the
read-ahead, the sinks' writer threads and the transform threads, a first load's resident memory grew
with the arenas, not with the data. Capped at a few arenas, the SF10 first load of orders + lineitem
peaked at 2,270 MiB instead of 2,760 MiB, in the same time (measured on 2 cores; Spark and Hadoop
advise the same for the same reason). Arrow's own buffers use its pool (mimalloc), not these arenas."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_ARENA_MAX = -8  # glibc's mallopt parameter


def cap_malloc_arenas() -> int | None:
    """Cap glibc's arenas at min(4, cores) unless MALLOC_ARENA_MAX already says how many (glibc read
    it at start-up). Returns the cap set, or None where there is nothing to do (another C library)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): no mallopt
        return None
    arenas = max(2, min(4, os.cpu_count() or 2))
    return arenas if mallopt(_M_ARENA_MAX, arenas) == 1 else None
