"""Everything on S3 (moto's server on 127.0.0.1, IAM authentication on): the demo landing zone is made
on S3, loaded, grown, loaded again and verified, with the warehouse on S3 too. Then both are copied down
and compared with the independent DuckDB computation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import init_args, init_now
from tests.support.s3_server import S3, moto_s3
from tests.support.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration

BUCKET = "lake"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3(BUCKET) as server:
        yield server


def _copy_down(s3: S3, prefix: str, target: Path) -> Path:
    pafs.copy_files(prefix, str(target), source_filesystem=s3.filesystem(),
                    destination_filesystem=pafs.LocalFileSystem())
    return target


def test_demo_data_run_append_run_verify_on_s3(s3: S3, tmp_path: Path) -> None:
    prefix = f"{BUCKET}/e2e"
    project = tmp_path / "project"
    config = write_config(project, landing_zone=f"s3://{prefix}/landing", warehouse=f"s3://{prefix}/wh")
    env = s3.env()

    made = run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(3), env=env)
    assert f"s3://{prefix}/landing" in made.stdout
    first = run_json(config, "run", "--incremental", env=env)
    assert first["status"] == "committed" and first["tables"]["orders"]["rows"] == 15000
    assert first["tables"]["orders"]["sinks"]["delta"]["location"].startswith(f"s3://{prefix}/wh")

    # the append fills the day after the zone's last (S3: no append_args)
    next_day = init_now(3) + timedelta(days=1)
    run_cli(config, "demo-data", "append", "--now", next_day.isoformat(), "--orders", "300",
            "--updates", "60", "--late", "5", env=env)
    second = run_json(config, "run", "--incremental", env=env)
    assert second["run_number"] == 2 and second["tables"]["orders"]["rows"] >= 300 + 60 + 5
    assert run_json(config, "run", "--incremental", env=env)["status"] == "nothing_new"

    verified = run_json(config, "verify", env=env)
    assert verified["ok"] and verified["checks"], verified

    landing = _copy_down(s3, f"{prefix}/landing", tmp_path / "landing-copy")
    assert_warehouse_exact(_copy_down(s3, f"{prefix}/wh", tmp_path / "wh-copy"), landing)
    assert not (project / "landing").exists() and not (project / "warehouse").exists()  # all of it on S3

    again = run_cli(config, "demo-data", "init", "--scale", "0.01", env=env, check=False)
    assert again.returncode == 2 and "already holds" in again.stderr
    kept = run_cli(config, "demo-data", "init", "--if-missing", env=env)
    assert kept.returncode == 0 and "left as it is" in kept.stderr


def test_demo_data_on_a_missing_bucket_fails_and_names_it(s3: S3, tmp_path: Path) -> None:
    config = write_config(tmp_path / "project", landing_zone="s3://no-such-bucket/landing",
                          warehouse=f"s3://{BUCKET}/x")
    failed = run_cli(config, "demo-data", "init", "--scale", "0.01", env=s3.env(), check=False, timeout=60)
    assert failed.returncode != 0 and "no-such-bucket" in failed.stderr, failed.stderr
