"""Batches hold the budget on a skewed landing zone (issue #30): every day's files rewritten so 1% of
their rows spread over the day and 99% crowd its last hour, which row-group statistics cannot see. Through
the real CLI: `plan` and `run` cut the same batches, the run's log states the plan's budget and largest
estimate, and every batch's actual rows stay within twice the budget (the estimates close to them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from loader.config import load_config
from loader.protocol.batches import cut_into_batches
from loader.protocol.planning import plan_run
from state import Window
from tests.support.cli import run_cli, write_config
from tests.support.demo_clock import init_args

pytestmark = [pytest.mark.integration]

BUDGET = 3_000
CURSOR = {"orders": "o_updated_at", "lineitem": "l_updated_at"}
DAY_US = 86_400_000_000


def _skew(path: Path, column: str) -> None:
    """The same monotone map of each cursor within its UTC day for both tables (a lineitem keeps its
    order's cursor): the day's first 1% of time stretched over 95% of it, the other 99% squeezed into
    the last 5% (72 minutes). One row group per file, as the demo writes them."""
    table = pq.read_table(path)
    kind = table.schema.field(column).type
    micros = table[column].cast(pa.int64()).to_numpy()
    start = micros // DAY_US * DAY_US
    x = (micros - start) / DAY_US
    y = np.where(x < 0.01, x * 95, 0.95 + (x - 0.01) / 0.99 * 0.05)
    skewed = start + np.minimum((y * DAY_US).astype(np.int64), DAY_US - 1)
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(skewed).cast(kind))
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("skewed")
    path = write_config(folder)
    run_cli(path, "demo-data", "init", "--scale", "0.005", *init_args(4))
    for table, column in CURSOR.items():
        for file in (folder / "landing" / table).rglob("*.parquet"):
            _skew(file, column)
    return path


def test_batches_hold_the_budget_and_plan_log_and_run_agree(config: Path) -> None:
    # The zone is skewed enough to matter: cut from statistics alone, a batch would read over 2x.
    loaded = load_config(config)
    stats_only = cut_into_batches(plan_run(loaded, {}), max_rows=BUDGET)
    assert max(_rows_in(config, b.plan.windows()) for b in stats_only.batches) > 2 * BUDGET

    plan = json.loads(run_cli(config, "plan", "--max-batch-rows", str(BUDGET), "--json").stdout)["batches"]
    done = run_cli(config, "run", "--incremental", "--max-batch-rows", str(BUDGET), "--json")
    run = json.loads(done.stdout)
    assert run["status"] == "committed" and plan["budget"] == run["max_batch_rows"] == BUDGET
    planned = [b["estimated_rows"] for b in plan["batches"]]
    assert [b["estimated_rows"] for b in run["batches"]] == planned
    assert [b["windows"] for b in plan["batches"]] == [b["windows"] for b in run["batches"]]
    assert run["planned_rows"] == sum(planned)
    log = done.stderr
    assert f"in {len(planned)} batch(es) of at most about {BUDGET:,} rows" in log, log[-3000:]
    assert re.search(rf"batches of at most {max(planned):,} estimated rows", log), log[-3000:]
    for batch in run["batches"]:
        assert batch["rows"] <= 2 * BUDGET, batch
        assert abs(batch["rows"] - batch["estimated_rows"]) <= 0.1 * BUDGET, batch
    assert run["rows"] == sum(b["rows"] for b in run["batches"])
    assert run_cli(config, "verify", check=False).returncode == 0


def _rows_in(config: Path, windows: dict[str, Window]) -> int:
    """The landing rows inside a batch's windows (read from the files, not estimated)."""
    total = 0
    for table, window in windows.items():
        files = sorted((config.parent / "landing" / table).rglob("*.parquet"))
        values = pq.ParquetDataset(files).read(columns=[CURSOR[table]])[CURSOR[table]]
        upper = pa.scalar(window.upper, values.type)
        mask = pc.less_equal(values, upper)
        if window.lower is not None:
            mask = pc.and_(mask, pc.greater(values, pa.scalar(window.lower, values.type)))
        total += pc.sum(mask.cast(pa.int64())).as_py() or 0
    return total

