"""A loader process's temp files live in folders the loader owns and removes: its scratch folder
(loader/scratch.py: its own and its libraries' temp files), and a Ray instance's session files and
spilled objects (ray.temp_dir, ray.spill_dir). A run killed with Ray up leaves them there, not in /tmp
or /tmp/ray, and the next run removes them, then its own, and the roots once empty."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from loader import scratch
from loader.errors import ConfigError
from loader.execute import ray_folders
from tests.support.cli import run_cli, run_json, write_config

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def test_a_killed_runs_ray_session_stays_in_the_loaders_folder_and_the_next_run_removes_it(
        tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="lr-"))  # Ray's socket paths must stay short: not under tmp_path
    try:
        temp_root, spill_root = (short / "ray",
                                 tmp_path / "a" / "roomy" / "disk" / "for" / "spilled" / "objects")
        config = write_config(tmp_path / "project", ray={"mode": "ray", "num_cpus": 2,
                                                         "temp_dir": str(temp_root),
                                                         "spill_dir": str(spill_root)},
                              state={"url": "sqlite:///state/loader.db", "lease_ttl": "1s"})
        run_cli(config, "demo-data", "init", "--scale", "0.002", "--days", "2")

        killed = run_cli(config, "run", "--incremental", check=False,
                         env={"LOADER_FAILPOINTS": "checkpoint.before=crash"})
        assert killed.returncode == -9, killed.stderr[-2000:]
        runs = [p for p in temp_root.iterdir() if p.name.isdigit()]
        assert len(runs) == 1, sorted(temp_root.iterdir())
        sessions = list(runs[0].glob("session_*/sockets"))
        assert sessions, f"no Ray session under {runs[0]}: {sorted(runs[0].iterdir())}"
        assert [p.name for p in spill_root.iterdir()] == [runs[0].name]

        time.sleep(1.5)  # the killed run's lease expires
        assert run_json(config, "run", "--incremental")["status"] == "committed"
        assert not temp_root.exists(), sorted(temp_root.rglob("*"))[:20]  # the killed run's folder too
        assert not spill_root.exists(), sorted(spill_root.rglob("*"))[:20]
        assert spill_root.parent.exists()  # the loader's folders only
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_a_killed_processs_scratch_folder_is_removed_by_the_next_loader_process(tmp_path: Path) -> None:
    system = Path(tempfile.mkdtemp(prefix="ls-"))  # the loader's "system temp folder" for these runs
    try:
        env = {scratch.SYSTEM_TMPDIR_ENV: str(system)}
        root = system / f"loader-{os.getuid()}"
        config = write_config(tmp_path / "project",
                              state={"url": "sqlite:///state/loader.db", "lease_ttl": "1s"})
        run_cli(config, "demo-data", "init", "--scale", "0.002", "--days", "2", env=env)
        assert not root.exists()  # a finished command removes its folder

        killed = run_cli(config, "run", "--incremental", check=False,
                         env={**env, "LOADER_FAILPOINTS": "delta.write=crash"})
        assert killed.returncode == -9, killed.stderr[-2000:]
        left = [p.name for p in root.iterdir()]
        assert len(left) == 1 and left[0].isdigit(), left  # the killed process's

        time.sleep(1.5)  # its lease expires
        assert run_json(config, "run", "--incremental", env=env)["status"] == "committed"
        assert not root.exists(), sorted(root.rglob("*"))[:20]
    finally:
        shutil.rmtree(system, ignore_errors=True)


def test_a_temp_folder_too_long_for_rays_sockets_is_refused_with_the_longest_that_works(
        tmp_path: Path) -> None:
    too_long = "/" + "x" * 40
    with pytest.raises(ConfigError,
                       match=r"ray.temp_dir .* is 41 bytes long.*at most 35 bytes.*ray.spill_dir"):
        ray_folders.claim(too_long, None)
    assert not Path(too_long).exists()


def test_a_folder_of_a_live_process_is_kept_and_a_dead_ones_removed() -> None:
    """Folders a loader process made (each with its marker): the live process's stays, the exited one's
    goes."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True)
    root = Path(tempfile.mkdtemp(prefix="lr-"))
    try:
        for name in ("1", gone.stdout.strip()):  # pid 1 is alive; that process has exited
            (root / name).mkdir()
            (root / name / scratch.MARKER).write_text(f"{name} ")
        claimed = ray_folders.claim(str(root), None)
        assert sorted(p.name for p in root.iterdir()) == sorted(["1", claimed.temp.name])
        ray_folders.release_all()
        assert [p.name for p in root.iterdir()] == ["1"]  # a root still in use stays
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_without_a_writable_temp_folder_the_process_keeps_the_systems(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv(scratch.SYSTEM_TMPDIR_ENV, str(not_a_folder))
    before = tempfile.gettempdir()
    assert scratch.claim() is None
    assert tempfile.gettempdir() == before and os.environ.get("TMPDIR") != str(not_a_folder)
    scratch.release()  # nothing claimed: nothing removed
    assert not_a_folder.is_file()
