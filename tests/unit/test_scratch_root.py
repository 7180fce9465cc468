"""The loader's scratch root `loader-<uid>` lives in the temp folder every user shares (issue #27): it is
used only if it is a private folder of this user (a real folder, not a link, mode 0700), and the sweep
removes only the folders it can prove a loader process made (a real folder of this user, carrying the
marker of a process that is gone), never following a link. Real folders, real processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loader import scratch
from loader.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
NO_SUCH_PID = "4194305"  # above Linux's largest pid_max: never a live process
OTHER_UID = 12345
# A loader process that makes its folder under argv[1] and prints its name; it then waits for its stdin
# to close and exits without releasing the folder, like a killed run.
_CHILD = ("import sys; from pathlib import Path; from loader import scratch; "
          "print(scratch.process_folder(Path(sys.argv[1])).name, flush=True); sys.stdin.read()")
_AS_ROOT = pytest.mark.skipif(os.getuid() != 0, reason="needs root: only root can give a folder to another "
                              "user (os.chown), which is what the owner check refuses")


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The loader's system temp folder for the test (LOADER_SYSTEM_TMPDIR, as a child process sees it)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv(scratch.SYSTEM_TMPDIR_ENV, str(folder))
    yield folder
    scratch.release()  # whatever a test claimed


def _loader_process(root: Path, system: Path, *, stay: bool) -> tuple[subprocess.Popen[str], Path]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root)], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, scratch.SYSTEM_TMPDIR_ENV: str(system)})
    assert child.stdout is not None and child.stdin is not None
    folder = root / child.stdout.readline().strip()
    if not stay:
        child.stdin.close()
        assert child.wait(timeout=30) == 0
    return child, folder


def _dead_loader_folder(root: Path, system: Path) -> Path:
    """A folder a loader process made under `root`, with a file in it; the process is gone."""
    _, folder = _loader_process(root, system, stay=False)
    (folder / "staged.parquet").write_text("a gone run's file")
    return folder


def _tree(folder: Path) -> list[tuple[str, str]]:
    return sorted((str(p.relative_to(folder)),
                   "link" if p.is_symlink() else p.read_text() if p.is_file() else "dir")
                  for p in folder.rglob("*"))


def test_a_link_planted_at_the_roots_name_is_refused_naming_it_and_its_target_is_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "tmp"
    system.mkdir()
    monkeypatch.delenv(scratch.SYSTEM_TMPDIR_ENV, raising=False)  # the system temp folder as users set it
    monkeypatch.setattr(tempfile, "tempdir", str(system))
    victim = tmp_path / "victim"
    victims = [_dead_loader_folder(victim, system), victim / NO_SUCH_PID]  # what the old sweep deleted
    victims[1].mkdir()
    (victims[1] / "report.csv").write_text("someone's file")
    before = _tree(victim)
    root = system / f"loader-{os.getuid()}"
    root.symlink_to(victim)
    tmpdir_before = os.environ.get("TMPDIR")

    with pytest.raises(ConfigError) as refused:
        scratch.claim()
    assert str(refused.value) == (
        f"the loader's scratch folder {root} is a symbolic link (to {victim}), not a private folder "
        f"of this user "
        f"(mode 0700): remove it (rm {root}), or set TMPDIR to a folder only you can write to")
    with pytest.raises(ConfigError, match="is a symbolic link"):
        scratch.process_folder(root / "ray")  # Ray's default root, in it
    assert _tree(victim) == before
    assert root.is_symlink() and os.environ.get("TMPDIR") == tmpdir_before and tempfile.tempdir == str(system)


def test_a_premade_root_open_to_other_users_is_refused(system: Path) -> None:
    root = scratch.loader_root()
    root.mkdir()
    os.chmod(root, 0o777)
    (root / "planted").write_text("another user's")

    with pytest.raises(ConfigError) as refused:
        scratch.claim()
    message = str(refused.value)
    assert f"scratch folder {root} is mode 0777" in message, message
    assert (f"remove it (rm -r {root};" in message
            and f"set {scratch.SYSTEM_TMPDIR_ENV} to a folder" in message)
    assert _tree(root) == [("planted", "another user's")]
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o777


@pytest.mark.may_skip
@_AS_ROOT
def test_a_root_owned_by_another_user_is_refused(system: Path) -> None:
    root = scratch.loader_root()
    root.mkdir(mode=0o700)
    os.chown(root, OTHER_UID, OTHER_UID)

    with pytest.raises(ConfigError) as refused:
        scratch.claim()
    message = str(refused.value)
    assert f"scratch folder {root} is owned by uid {OTHER_UID} (this user is uid 0)" in message, message
    assert "have its owner (or root) remove it" in message
    assert list(root.iterdir()) == []


def test_the_sweep_removes_only_folders_of_gone_loader_processes_and_follows_no_link(
        tmp_path: Path, system: Path) -> None:
    root = scratch.loader_root()
    dead = _dead_loader_folder(root, system)
    unmarked = root / NO_SUCH_PID  # a numeric name, but no loader process made it
    unmarked.mkdir()
    (unmarked / "file").write_text("kept")
    elsewhere = _dead_loader_folder(tmp_path / "elsewhere", system)  # a valid dead folder, outside the root
    link = root / elsewhere.name
    link.symlink_to(elsewhere)  # planted under a gone process's id
    live_child, live = _loader_process(root, system, stay=True)
    try:
        mine = scratch.claim()  # a loader process starts: it sweeps
        assert mine is not None and mine.parent == root
        assert not dead.exists()
        assert _tree(unmarked) == [("file", "kept")]
        assert (live / scratch.MARKER).is_file()
        assert link.is_symlink() and (elsewhere / "staged.parquet").read_text() == "a gone run's file"
    finally:
        assert live_child.stdin is not None
        live_child.stdin.close()
        live_child.wait(timeout=30)


def test_a_folder_whose_process_id_now_belongs_to_another_process_is_removed(system: Path) -> None:
    """The marker holds the process's start time: a live process that reuses the id is another one."""
    root = scratch.loader_root()
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        scratch.private_root(root)
        reused = root / str(other.pid)
        reused.mkdir()
        (reused / scratch.MARKER).write_text(f"{other.pid} 0")  # started at another time than `other`
        scratch.sweep(root)
        assert not reused.exists()
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=30)


@pytest.mark.may_skip
@_AS_ROOT
def test_the_sweep_keeps_a_marked_folder_of_another_user(system: Path) -> None:
    root = scratch.loader_root()
    dead = _dead_loader_folder(root, system)
    os.chown(dead, OTHER_UID, OTHER_UID)
    scratch.sweep(root)
    assert (dead / "staged.parquet").is_file()


def test_a_fresh_root_is_made_private_and_works_twice_in_a_row(system: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = scratch.loader_root()
    for _ in range(2):
        monkeypatch.setenv(scratch.SYSTEM_TMPDIR_ENV, str(system))  # `release` drops it (it set it)
        mine = scratch.claim()
        assert mine == root / str(os.getpid())
        info = os.lstat(root)
        assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
        assert stat.S_IMODE(info.st_mode) == 0o700 and stat.S_IMODE(os.lstat(mine).st_mode) == 0o700
        assert (mine / scratch.MARKER).read_text().split()[0] == str(os.getpid())
        with tempfile.NamedTemporaryFile() as temp:
            assert Path(temp.name).parent == mine  # the process's temp folder
        scratch.release()
        assert not root.exists()

    root.mkdir(mode=0o700)  # made before, private: used as it is
    monkeypatch.setenv(scratch.SYSTEM_TMPDIR_ENV, str(system))
    assert scratch.claim() == root / str(os.getpid())
    scratch.release()
    assert not root.exists()


def test_rays_default_root_is_made_inside_the_private_root(system: Path) -> None:
    root = scratch.loader_root()
    mine = scratch.process_folder(root / "ray")  # ray_folders.default_temp_root()
    assert mine == root / "ray" / str(os.getpid()) and (mine / scratch.MARKER).is_file()
    assert {stat.S_IMODE(os.lstat(p).st_mode) for p in (root, root / "ray", mine)} == {0o700}
