"""A loader process's scratch folder. Everything the process and the libraries it calls put in the
temp folder (the sinks' staging files, the Snowflake connector's PUT buffers, a child process's files)
goes to `loader-<uid>/<pid>` in the system temp folder: `claim` makes it the process's temp folder
(tempfile's and TMPDIR, which child processes inherit), `release` removes it at exit. A process killed
before that cannot remove its own: the next loader process removes those whose process is gone.

The temp folder is shared with every user, so nothing found there is trusted (issue #27): `loader-<uid>`
is used only if it is a real folder (not a link) of this user with mode 0700, else refused; a process
folder carries a marker file, and the sweep removes only real folders of this user carrying one whose
process is gone, never following a link.

`system_temp()` is the temp folder the process started with (children see it in LOADER_SYSTEM_TMPDIR)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from loader.errors import ConfigError

SYSTEM_TMPDIR_ENV = "LOADER_SYSTEM_TMPDIR"
MARKER = ".loader-scratch"  # in each process folder: "<pid> <start time>", what the sweep trusts
_claimed: list[tuple[Path, str | None]] = []  # the folder, and TMPDIR before it


def system_temp() -> Path:
    return Path(os.environ.get(SYSTEM_TMPDIR_ENV) or tempfile.gettempdir())


def loader_root() -> Path:
    """`loader-<uid>` in the system temp folder: the loader's, one per user."""
    return system_temp() / f"loader-{os.getuid()}"


def claim() -> Path | None:
    """Make this process's scratch folder its temp folder, and remove those of dead processes. None
    (the system temp folder stays the process's) when it cannot be made: a read-only or full temp folder
    fails where the temp files are written, with that error, not here. A `loader-<uid>` that is not
    safe to use (planted by another user) is a ConfigError naming it and the fix."""
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
    """`root/<pid>`, made with its marker, and the folders under `root` of processes that are gone
    removed. Under `loader_root()` (Ray's default root is), that root is made private or refused first,
    and checked again once our folder is in it: the one checked is the one used (no loader process
    removes it while it holds a folder, no other user can in the sticky temp folder)."""
    base = loader_root()
    private = root == base or base in root.parents
    mine = root / str(os.getpid())
    for attempt in range(5):  # another loader process removes an empty root at any moment: again
        try:
            if not private:  # a folder of the configuration's (ray.temp_dir): made as asked
                root.mkdir(parents=True, exist_ok=True)
                _make(mine)
                break
            checked, parts = private_root(base), mine.relative_to(base).parts
            for depth in range(1, len(parts) + 1):  # one level at a time: no parent made unchecked
                _make(base.joinpath(*parts[:depth]))
            now = private_root(base)
            if (now.st_dev, now.st_ino) == (checked.st_dev, checked.st_ino):
                break
        except FileNotFoundError:
            if attempt == 4:
                raise
    else:
        raise OSError(f"{base} was replaced while this process made its folder in it")
    info = os.lstat(mine)
    if not _owned_folder(info):  # planted under our id in a root that others can write to
        raise ConfigError(f"this process's folder {mine} is {_wrong(mine, info)}: remove it, or choose a "
                          f"folder only you can write to")
    (mine / MARKER).write_text(f"{os.getpid()} {_start_time(os.getpid())}")
    sweep(root)
    return mine


def private_root(root: Path) -> os.stat_result:
    """Make `root` (mode 0700), or check the one there: a real folder, not a link (lstat: never
    followed), of this user, with no access for group or others. Otherwise a ConfigError: another user
    may have planted it to point the sweep at a victim's files, or to read or plant the loader's."""
    _make(root)
    info = os.lstat(root)
    if _owned_folder(info) and info.st_mode & 0o077 == 0:
        return info
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        fix = f"remove it (rm {root})"
    elif info.st_uid != os.getuid():
        fix = "have its owner (or root) remove it"
    else:
        fix = f"remove it (rm -r {root}; the loader makes it again, mode 0700)"
    env = SYSTEM_TMPDIR_ENV if os.environ.get(SYSTEM_TMPDIR_ENV) else "TMPDIR"
    raise ConfigError(f"the loader's scratch folder {root} is {_wrong(root, info)}, not a private folder "
                      f"of this user (mode 0700): {fix}, or set {env} to a folder only you can write to")


def _make(folder: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)  # the umask can only narrow it


def _owned_folder(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def _wrong(path: Path, info: os.stat_result) -> str:
    if stat.S_ISLNK(info.st_mode):
        return f"a symbolic link (to {os.readlink(path)})"
    if not stat.S_ISDIR(info.st_mode):
        return "not a folder"
    if info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid} (this user is uid {os.getuid()})"
    return f"mode {stat.S_IMODE(info.st_mode):04o} (other users may read or write in it)"


def sweep(root: Path) -> None:
    """Remove the subfolders of processes that are gone (killed before releasing), only those the sweep
    can prove a loader process made: a real folder (lstat: a planted link is never followed), of this
    user, with a marker naming its process. rmtree does not follow links inside the tree either."""
    for child in list(root.iterdir()):
        if not (child.name.isascii() and child.name.isdigit()):
            continue
        try:
            if not _owned_folder(os.lstat(child)):
                continue
            fd = os.open(child / MARKER, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as marker:
                pid, _, started = marker.read(100).partition(" ")
        except (OSError, ValueError):  # gone meanwhile, or no readable marker: not provably ours
            continue
        if pid == child.name and _gone(int(pid), started):
            shutil.rmtree(child, ignore_errors=True)


def _gone(pid: int, started: str) -> bool:
    """The process is gone, or its id now belongs to a process started at another time."""
    if not alive(pid):
        return True
    now = _start_time(pid)
    return bool(started and now and started != now)


def _start_time(pid: int) -> str:
    """When the process started (clock ticks since boot, /proc/<pid>/stat's 22nd field); "" if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as status:
            return status.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


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
