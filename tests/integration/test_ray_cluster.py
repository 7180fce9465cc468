"""The loader on a Ray cluster of two nodes (ray.cluster_utils.Cluster: a head and a worker node, each a
raylet of its own on this machine), with the landing zone and warehouse on S3 (moto) and the state in
PostgreSQL: the configured address selects the Ray executor, the transform stage and the sinks' part
writes run on both nodes, and the sinks end up exact (verified by `loader verify` and against DuckDB). An unreachable cluster address fails in seconds with nothing written."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.conftest import pg_database, run_cli, run_json, write_config
from tests.s3_server import S3, free_port, moto_s3
from tests.warehouse import assert_warehouse_exact

pytestmark = [pytest.mark.integration, pytest.mark.ray]

BUCKET = "lake"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def _copy_down(s3: S3, prefix: str, target: Path) -> Path:
    pafs.copy_files(prefix, str(target), source_filesystem=s3.filesystem(), destination_filesystem=pafs.LocalFileSystem())
    return target


def test_two_node_cluster_with_s3_and_postgres(two_nodes: str, s3: S3, pg_url: str, tmp_path: Path) -> None:
    prefix = f"{BUCKET}/cluster"
    state = {"url": pg_database(pg_url), "lease_ttl": "60s"}
    config = write_config(tmp_path / "project", landing_zone=f"s3://{prefix}/landing",
                          warehouse=f"s3://{prefix}/wh", state=state)
    env = {**s3.env(), "RAY_ADDRESS": two_nodes}
    run_cli(config, "demo-data", "init", "--scale", "0.01", "--days", "4", env=env)

    first = run_json(config, "run", "--incremental", env=env)
    assert first["executor"] == "ray" and "cluster address" in first["executor_reason"], first
    nodes = {name: (info["ray_nodes"], info["ray_write_nodes"], info["parts"]) for name, info in first["tables"].items()}
    assert max(n for n, _, _ in nodes.values()) == 2, f"the transform stage ran on {nodes} node(s), not on both"
    assert max(w for _, w, _ in nodes.values()) == 2, f"the sinks' part writes ran on {nodes} node(s), not on both"
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
    run_cli(config, "demo-data", "init", "--scale", "0.002", "--days", "2")
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    failed = run_cli(config, "run", "--incremental", env={"RAY_ADDRESS": address}, check=False, timeout=120)
    assert time.monotonic() - started < 15
    assert failed.returncode == 1 and f"the Ray cluster at {address} is not reachable" in failed.stderr
    assert not (config.parent / "warehouse").exists()
    assert run_json(config, "status")["last_run"] is None
    doctor = run_cli(config, "doctor", env={"RAY_ADDRESS": address}, check=False, timeout=60)
    assert doctor.returncode == 1 and "unreachable" in doctor.stdout + doctor.stderr
