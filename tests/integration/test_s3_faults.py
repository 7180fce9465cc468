"""Faults at a real S3 endpoint: moto's server (with IAM authentication on, so wrong credentials are
refused as on AWS) behind a loopback TCP proxy that breaks connections on purpose. The real `loader`
CLI runs against it: transient faults are retried until the run lands exactly; terminal ones (refused
credentials, a missing bucket, a dead endpoint) fail the run in seconds, say what to do, and move no
checkpoint, so a later good run loads exactly."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.support.cli import FAIL_FAST_S, run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.s3_server import S3, free_port, moto_s3
from tests.support.tcp_proxy import TcpProxy
from tests.support.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration

BUCKET = "lake"
APPEND = ("demo-data", "append", "--orders", "150", "--updates", "40", "--late", "5")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local demo landing zone, generated once."""
    folder = tmp_path_factory.mktemp("s3-seed")
    run_cli(write_config(folder), "demo-data", "init", "--scale", "0.01", *init_args(2))
    return folder / "landing"


@pytest.fixture
def proxy(s3: S3) -> Iterator[TcpProxy]:
    with TcpProxy(s3.port) as running:
        yield running


class Project:
    """A landing zone kept locally (the expectation's source, and where `demo-data append` writes), its
    copy at s3://lake/<name>/landing, and configs whose warehouse is s3://lake/<name>/wh."""

    def __init__(self, s3: S3, seed: Path, folder: Path, name: str) -> None:
        self.s3, self.folder, self.prefix = s3, folder, f"{BUCKET}/{name}"
        shutil.copytree(seed, folder / "landing")
        self.local = write_config(folder / "local", landing_zone=str(folder / "landing"))
        state = {"url": f"sqlite:///{folder / 'state.db'}", "lease_ttl": "60s"}
        self.on_s3 = write_config(folder / "s3", landing_zone=f"s3://{self.prefix}/landing",
                                  warehouse=f"s3://{self.prefix}/wh", state=state)
        self.local_landing = write_config(folder / "mixed", landing_zone=str(folder / "landing"),
                                          warehouse=f"s3://{self.prefix}/wh", state=state)
        self.upload()

    def upload(self) -> None:
        pafs.copy_files(str(self.folder / "landing"), f"{self.prefix}/landing",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.s3.filesystem())

    def append(self) -> None:
        run_cli(self.local, *APPEND, *append_args(self.local))
        self.upload()

    def assert_exact(self) -> None:
        target = self.folder / "warehouse-copy"
        shutil.rmtree(target, ignore_errors=True)
        pafs.copy_files(f"{self.prefix}/wh", str(target), source_filesystem=self.s3.filesystem(),
                        destination_filesystem=pafs.LocalFileSystem())
        assert_warehouse_exact(target, self.folder / "landing")

    def checkpoints(self, config: Path) -> dict[str, object]:
        sources = run_json(config, "status")["sources"]
        return {name: sources[name]["checkpoint"] for name in ("orders", "lineitem")}


def test_dropped_connections_are_retried(s3: S3, seed: Path, proxy: TcpProxy, tmp_path: Path) -> None:
    """Every connection goes through the proxy. The first run (both sides on S3) meets 3 reset
    connections, which pyarrow's own retries absorb, even while planning. The incremental run (same
    state and warehouse, landing read locally) meets 12, more than one request's driver retries: a
    sink write fails and the sink's tenacity policy retries it."""
    project = Project(s3, seed, tmp_path, "dropped")
    env = s3.env(port=proxy.port)
    stderr = ""
    for config, drops in ((project.on_s3, 3), (project.local_landing, 12)):
        if drops == 12:
            project.append()
        proxy.arm(drops)
        started = proxy.dropped
        result = run_cli(config, "run", "--incremental", "--json", env=env)
        assert json.loads(result.stdout)["status"] == "committed", result.stdout
        assert proxy.dropped - started == drops, f"the proxy dropped {proxy.dropped - started} of {drops}"
        stderr += result.stderr
    assert proxy.forwarded > 0
    project.assert_exact()


def test_refused_credentials_fail_fast_and_keep_the_checkpoint(s3: S3, seed: Path, tmp_path: Path) -> None:
    project = Project(s3, seed, tmp_path, "denied")
    before = project.checkpoints(project.local_landing)

    started = time.monotonic()
    failed = run_cli(project.local_landing, "run", "--incremental", check=False,
                     env=s3.env(secret="wrong-secret"))
    elapsed = time.monotonic() - started
    assert failed.returncode == 1, failed.stderr
    assert f"access to bucket '{BUCKET}' was denied" in failed.stderr, failed.stderr
    assert "AWS_SECRET_ACCESS_KEY" in failed.stderr and f"127.0.0.1:{s3.port}" in failed.stderr
    assert "attempt" not in failed.stderr, "refused credentials were retried"
    assert "wrong-secret" not in failed.stderr + failed.stdout, "a secret reached the output"
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.1f}s to fail"
    assert project.checkpoints(project.local_landing) == before

    recovered = run_json(project.local_landing, "run", "--incremental", env=s3.env())
    # refused at the run's first write to the warehouse, the dimension tables' load: before any fact
    # run was recorded, so the recovery is a plain run that loads the dimensions and the facts
    assert recovered["replayed"] is False and recovered["status"] == "committed"
    assert set(recovered["dimensions"]) == {"customer", "supplier", "nation", "region"}
    project.assert_exact()


def test_missing_bucket_fails_fast_and_names_it(s3: S3, seed: Path, tmp_path: Path) -> None:
    project = Project(s3, seed, tmp_path, "nobucket")
    config = write_config(tmp_path / "typo", landing_zone=str(tmp_path / "landing"),
                          warehouse="s3://lake-typo/wh",
                          state={"url": f"sqlite:///{tmp_path / 'state.db'}", "lease_ttl": "60s"})
    started = time.monotonic()
    failed = run_cli(config, "run", "--incremental", check=False, env=s3.env())
    elapsed = time.monotonic() - started
    assert failed.returncode == 1, failed.stderr
    assert ("bucket 'lake-typo' does not exist" in failed.stderr
            and "Create the bucket" in failed.stderr), failed.stderr
    assert "attempt" not in failed.stderr, "a missing bucket was retried"
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.1f}s to fail"
    assert all(value is None for value in project.checkpoints(config).values())
    assert s3.filesystem().get_file_info("lake-typo").type == pafs.FileType.NotFound, (
        "the loader created a bucket")

    run_json(project.local_landing, "run", "--incremental", env=s3.env())  # same state, the right bucket
    project.assert_exact()


def test_unreachable_endpoint_fails_in_seconds(s3: S3, seed: Path, tmp_path: Path) -> None:
    project = Project(s3, seed, tmp_path, "unreachable")
    closed = free_port()
    started = time.monotonic()
    failed = run_cli(project.on_s3, "run", "--incremental", check=False, env=s3.env(port=closed), timeout=60)
    elapsed = time.monotonic() - started
    assert failed.returncode == 1, failed.stderr
    assert (f"s3://{project.prefix}/landing" in failed.stderr
            and "NETWORK_CONNECTION" in failed.stderr), failed.stderr
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.1f}s to fail"
    assert all(value is None for value in project.checkpoints(project.on_s3).values())
