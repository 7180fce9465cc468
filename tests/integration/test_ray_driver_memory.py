"""The Ray executor keeps a table's rows in the cluster: the driver holds references, and everything
it fetches with ray.get (its own calls and Ray Data's) is small: counts, key ranges, node ids, a schema,
what each part write did. A run in this process with every ray.get recorded; before the change that
added this test the executor fetched every transformed part and concatenated them on the driver. The
run is cut into several batches, which share one copy of the dimension lookups in the object store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from loader.config import load_config
from loader.execute import ray_folders
from loader.protocol.incremental import run_incremental
from loader.transform.lookups import Lookups
from tests.support.cli import run_cli, write_config
from tests.support.demo_clock import init_args
from tests.support.warehouse import assert_warehouse_exact

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def _arrow_rows(value: Any) -> int:
    """Rows of Arrow data in a fetched value (tables, batches, or lists/tuples/dicts of them)."""
    if isinstance(value, pa.Table | pa.RecordBatch):
        return value.num_rows
    if isinstance(value, list | tuple):
        return sum(_arrow_rows(v) for v in value)
    if isinstance(value, dict):
        return sum(_arrow_rows(v) for v in value.values())
    return 0


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The rows of Arrow data each ray.get in this process returned (the real ray.get, observed)."""
    import ray

    real_get = ray.get
    seen: list[int] = []

    def observed_get(refs: Any, *args: Any, **kwargs: Any) -> Any:
        value = real_get(refs, *args, **kwargs)
        seen.append(_arrow_rows(value))
        return value

    monkeypatch.setattr(ray, "get", observed_get)
    try:
        yield seen
    finally:
        ray.shutdown()
        ray_folders.release_all()  # what the CLI does at exit


def test_driver_fetches_no_rows_of_the_tables_it_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       fetched: list[int]) -> None:
    import ray

    project = tmp_path / "project"
    config_path = write_config(project, ray={"mode": "ray", "num_cpus": 2}, run={"max_batch_rows": 15_000})
    run_cli(config_path, "demo-data", "init", "--scale", "0.005", *init_args(2))
    monkeypatch.chdir(project)  # the config's relative paths
    real_put, lookups_put = ray.put, []

    def observed_put(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, Lookups):
            lookups_put.append(value)
        return real_put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", observed_put)
    summary = run_incremental(load_config(config_path))
    assert summary.executor == "ray" and summary.status == "committed", summary
    assert len(summary.batches) >= 2, summary.batches
    assert len(lookups_put) == 1, f"the lookups went to the object store {len(lookups_put)} times in one run"
    tables = summary.tables
    assert tables["lineitem"].rows > 10_000 and all(t.parts >= 2 for t in tables.values()), tables
    assert fetched, "no ray.get was observed: the check below would pass vacuously"
    assert sum(fetched) == 0, f"the driver fetched {sum(fetched):,} rows of Arrow data ({fetched})"
    assert_warehouse_exact(project / "warehouse", project / "landing")
    # The observer does see rows when rows are fetched:
    ray.get(ray.put(pa.table({"x": [1, 2, 3]})))
    assert fetched[-1] == 3
