"""A loader process's scratch folder. Everything the process and the libraries it calls put in the
temp folder (the sinks' staging files, the Snowflake connector's PUT buffers, a child process's files)
goes to `loader-<uid>/<pid>` in the system temp folder: `claim` makes it the process's temp folder
(tempfile's and TMPDIR, which child processes inherit), `release` removes it at exit. A process killed
before that cannot remove its own: the next loader process removes those whose process is gone.

`system_temp()` is the temp folder the process started with (children see it in LOADER_SYSTEM_TMPDIR)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

SYSTEM_TMPDIR_ENV = "LOADER_SYSTEM_TMPDIR"
_claimed: list[tuple[Path, str | None]] = []  # the folder, and TMPDIR before it


def system_temp() -> Path:
    return Path(os.environ.get(SYSTEM_TMPDIR_ENV) or tempfile.gettempdir())


def loader_root() -> Path:
    """`loader-<uid>` in the system temp folder: the loader's, one per user."""
    return system_temp() / f"loader-{os.getuid()}"


def claim() -> Path | None:
    """Make this process's scratch folder its temp folder, and remove those of dead processes. None
    (the system temp folder stays the process's) when it cannot be made: a read-only or full temp folder
    fails where the temp files are written, with that error, not here."""
    system = system_temp()
    try:
        mine = process_folder(loader_root())
    except OSError:
        return None
    _claimed.append((mine, os.environ.get("TMPDIR")))
    os.environ[SYSTEM_TMPDIR_ENV] = str(system)
    os.environ["TMPDIR"] = str(mine)
    tempfile.tempdir = str(mine)
    return mine


def release() -> None:
    """Remove the scratch folder (at exit), and the loader's root once no other process uses it."""
    while _claimed:
        mine, before = _claimed.pop()
        shutil.rmtree(mine, ignore_errors=True)
        remove_if_empty(mine.parent)
        tempfile.tempdir = None
        os.environ.pop(SYSTEM_TMPDIR_ENV, None)
        if before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before


def process_folder(root: Path) -> Path:
    """`root/<pid>`, made (with `root`, in one call: another process may remove an empty root at any
    moment), and the folders under `root` of processes that are gone removed."""
    mine = root / str(os.getpid())
    mine.mkdir(parents=True, exist_ok=True)
    sweep(root)
    return mine


def sweep(root: Path) -> None:
    """Remove the subfolders named by a process id whose process is gone (killed before releasing)."""
    for child in list(root.iterdir()):
        if child.is_dir() and child.name.isdigit() and not alive(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # another process's folder is still there (or it is gone already)
        folder.rmdir()
