"""The loader on a Ray cluster of two nodes (ray.cluster_utils.Cluster: a head and a worker node, each a
raylet of its own on this machine), with the landing zone and warehouse on S3 (moto) and the state in
PostgreSQL: the configured address selects the Ray executor, the transform stage and the sinks' part
writes run on both nodes, and the sinks end up exact (verified by `loader verify` and against DuckDB). An
unreachable cluster address fails in seconds with nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.support.cli import FAIL_FAST_S, run_cli, run_json, write_config
from tests.support.demo_clock import init_args
from tests.support.postgres import pg_database
from tests.support.s3_server import S3, free_port, moto_s3
from tests.support.warehouse import assert_warehouse_exact

# One worker runs this module (make test: --dist loadgroup), so one cluster exists at a time: a second
# one's shutdown would remove the machine's "latest cluster" address the last test depends on.
pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.xdist_group("ray_cluster")]

BUCKET = "lake"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """The cluster, with Ray's folders (sessions, the machine's latest-cluster address) in a short folder
    of this module's (RAY_TMPDIR, inherited by the CLI runs), removed afterwards: not /tmp/ray."""
    from ray.cluster_utils import Cluster

    ray_tmp = tempfile.mkdtemp(prefix="rt-")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", ray_tmp)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
        try:
            cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()
            yield cluster.address
        finally:
            cluster.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _copy_down(s3: S3, prefix: str, target: Path) -> Path:
    pafs.copy_files(prefix, str(target), source_filesystem=s3.filesystem(),
                    destination_filesystem=pafs.LocalFileSystem())
    return target


def test_two_node_cluster_with_s3_and_postgres(two_nodes: str, s3: S3, pg_url: str, tmp_path: Path) -> None:
    prefix = f"{BUCKET}/cluster"
    state = {"url": pg_database(pg_url), "lease_ttl": "60s"}
    config = write_config(tmp_path / "project", landing_zone=f"s3://{prefix}/landing",
                          warehouse=f"s3://{prefix}/wh", state=state)
    env = {**s3.env(), "RAY_ADDRESS": two_nodes}
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(4), env=env)

    first = run_json(config, "run", "--incremental", env=env)
    assert first["executor"] == "ray" and "cluster address" in first["executor_reason"], first
    nodes = {name: (info["ray_nodes"], info["ray_write_nodes"], info["parts"])
             for name, info in first["tables"].items()}
    assert max(n for n, _, _ in nodes.values()) == 2, \
        f"the transform stage ran on {nodes} node(s), not on both"
    assert max(w for _, w, _ in nodes.values()) == 2, \
        f"the sinks' part writes ran on {nodes} node(s), not on both"
    assert min(p for _, _, p in nodes.values()) >= 4, nodes  # a part per CPU of the cluster at least

    # (append + a second run on S3 are in test_s3_end_to_end.py; here one run keeps the suite's budget)
    assert run_json(config, "verify", env=env)["ok"]
    landing = _copy_down(s3, f"{prefix}/landing", tmp_path / "landing-copy")
    assert_warehouse_exact(_copy_down(s3, f"{prefix}/wh", tmp_path / "wh-copy"), landing)
    status = run_json(config, "status", env=env)
    assert status["last_run"]["run_number"] == 1  # the checkpoints live in PostgreSQL
    assert run_json(config, "run", "--incremental", env=env)["status"] == "nothing_new"


def test_unreachable_ray_address_fails_in_seconds_and_writes_nothing(s3: S3, tmp_path: Path) -> None:
    config = write_config(tmp_path / "project")
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2))
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    failed = run_cli(config, "run", "--incremental", env={"RAY_ADDRESS": address}, check=False, timeout=120)
    assert time.monotonic() - started < FAIL_FAST_S
    # the loader's own TCP probe said so (its words), not ray.init after its minute of retries
    assert failed.returncode == 1 and (f"the Ray cluster at {address} is not reachable: "
                                       f"{address} unreachable (") \
        in failed.stderr, failed.stderr
    assert not (config.parent / "warehouse").exists()
    assert run_json(config, "status")["last_run"] is None
    doctor = run_cli(config, "doctor", env={"RAY_ADDRESS": address}, check=False, timeout=60)
    assert doctor.returncode == 1 and "unreachable" in doctor.stdout + doctor.stderr


def test_a_run_without_an_address_never_joins_a_cluster_running_on_the_machine(
    two_nodes: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ray.init()` without an address joins the cluster this machine last started (Ray writes its address
    for that); the loader must start a private instance instead, or its tasks would run on someone
    else's workers (seen once: a test's cluster and a CI run's loader). Every driver that joins a
    cluster is a job in its GCS: the loader's run must add none; a plain `ray.init()` (the control) does."""
    import ray
    from ray._private.state import jobs
    from ray._private.utils import read_ray_address, write_ray_address

    ray.init(address=two_nodes, include_dashboard=False, log_to_driver=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        config = write_config(tmp_path / "project", ray={"mode": "ray"})
        run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2))
        write_ray_address(two_nodes)  # this cluster is the machine's latest: what a plain ray.init() joins
        before = len(jobs())
        summary = run_json(config, "run", "--incremental")
        assert summary["executor"] == "ray" and summary["status"] == "committed", summary
        assert read_ray_address() == two_nodes, "the machine's latest-cluster address changed during the run"
        assert len(jobs()) == before, "the loader's run joined the machine's Ray cluster"
        control = "import ray; ray.init(log_to_driver=False); ray.shutdown()"
        subprocess.run([sys.executable, "-c", control], check=True, capture_output=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        assert len(jobs()) == before + 1, "the check cannot see a driver joining the cluster"
    finally:
        ray.shutdown()
