"""The folders of a Ray instance the loader starts itself (no cluster address): Ray's session files
(sockets, logs, the object store's spill files) under `ray.temp_dir` (default `ray` in the loader's
folder of the system temp folder, loader/scratch.py), spilled objects under `ray.spill_dir` when set (a
large disk in production). Each run gets a subfolder named by its process id in each, removed when the
run ends (`release`); a killed run's subfolder is removed by the next run that starts Ray on the
machine (`claim` sweeps subfolders whose process is gone). Left to Ray, a session's files stay in
/tmp/ray forever (19 GB of spill once, after a large load).

Nothing here is used when the loader joins a cluster: that cluster's nodes own their folders."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from loader import scratch
from loader.errors import ConfigError

# A Unix socket's path holds at most 107 bytes on Linux. Ray puts its sockets at
# <temp_dir>/session_<date>_<time>_<µs>_<pid>/sockets/plasma_store: this is that tail at its longest.
SOCKET_PATH_MAX = 107
_SESSION_TAIL = len("/session_2026-11-30_00-15-15_123456_4194304/sockets/plasma_store")
_PID_DIGITS = 7  # a run's subfolder: its process id (Linux's pid_max is at most 4194304)


def default_temp_root() -> Path:
    """`loader-<uid>/ray` in the system temp folder: short enough for Ray's socket paths, one per user."""
    return scratch.loader_root() / "ray"


@dataclass(frozen=True)
class RayFolders:
    temp: Path  # Ray's _temp_dir for this run
    spill: Path | None  # object_spilling_directory for this run; None: under `temp` (Ray's default)

    def release(self) -> None:
        """Remove this run's folders (Ray is shut down), and the roots once no other run uses them: the
        loader owns them (a mount point stays: rmdir refuses it)."""
        for folder in (self.temp, self.spill):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
                scratch.remove_if_empty(folder.parent)
        if self.temp.parent == default_temp_root():
            scratch.remove_if_empty(self.temp.parent.parent)


_claimed: list[RayFolders] = []


def release_all() -> None:
    """Release every run folder this process claimed (at exit, after ray.shutdown())."""
    while _claimed:
        _claimed.pop().release()


def claim(temp_dir: str | None, spill_dir: str | None) -> RayFolders:
    """This run's folders, created; stale ones of killed runs removed. A temp root too long for Ray's
    socket paths is a usage error that names the longest root that works."""
    temp_root = Path(temp_dir).expanduser().absolute() if temp_dir else default_temp_root()
    longest = SOCKET_PATH_MAX - _SESSION_TAIL - _PID_DIGITS - 1
    if len(os.fsencode(temp_root)) > longest:
        raise ConfigError(
            f"ray.temp_dir {str(temp_root)!r} is {len(os.fsencode(temp_root))} bytes long: Ray's socket "
            f"paths under it would pass the {SOCKET_PATH_MAX}-byte limit of a Unix socket. Choose a folder "
            f"of at most {longest} bytes (spilled objects can go to a longer path: ray.spill_dir)")
    claimed = RayFolders(temp=_process_folder(temp_root, "ray.temp_dir"),
                         spill=_process_folder(Path(spill_dir).expanduser().absolute(), "ray.spill_dir")
                         if spill_dir else None)
    _claimed.append(claimed)
    return claimed


def _process_folder(root: Path, setting: str) -> Path:
    try:
        return scratch.process_folder(root)
    except OSError as error:
        raise ConfigError(f"cannot use {root} for Ray's files: {error.strerror}: set {setting} to a writable "
                          "folder") from error
