"""How the Ray executor cuts a window into parts (loader.execute.ray_cluster.part_numbers / part_count): every
version of a key in one part (so each part dedupes on its own), key ranges for integer keys (so each
Delta merge touches its own files), a stable hash otherwise, null keys kept (the dedupe refuses them)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from loader.config import load_config
from loader.execute.ray_cluster import _read_row_groups, _read_tasks, part_count, part_numbers
from loader.landing.plans import FilePlan, SourcePlan
from loader.landing.sources import Checks
from loader.storage import locate
from loader.transform.frames import EngineName
from state import Window
from tests.support.cli import write_config


def test_integer_keys_are_cut_into_equal_ranges() -> None:
    keys = pa.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert part_numbers(keys, parts=2, low=1, high=10).to_pylist() == [0] * 5 + [1] * 5
    assert part_numbers(keys, parts=1, low=1, high=10).to_pylist() == [0] * 10
    # the range's own ends land in the first and last part, never outside
    assert part_numbers(pa.array([1, 10]), parts=3, low=1, high=10).to_pylist() == [0, 2]


def test_every_version_of_a_key_shares_a_part_across_blocks() -> None:
    """Blocks are split separately, with the window's range: the same key gives the same part."""
    first, second = pa.array([7, 30, 99, 7]), pa.chunked_array([[99, 7], [30]])
    a = dict(zip(first.to_pylist(), part_numbers(first, parts=4, low=1, high=100).to_pylist(), strict=True))
    b = dict(zip(second.to_pylist(), part_numbers(second, parts=4, low=1, high=100).to_pylist(), strict=True))
    assert a == b and len(set(a.values())) == 3


def test_string_keys_hash_stably_and_null_keys_go_to_part_zero() -> None:
    keys = pa.array(["b", "a", None, "b", "c"])
    numbers = part_numbers(keys, parts=3, low="a", high="c").to_pylist()
    assert numbers[0] == numbers[3] and numbers[2] == 0 and all(0 <= n < 3 for n in numbers)
    assert part_numbers(keys, parts=3, low="a", high="c").to_pylist() == numbers
    assert part_numbers(pa.array([5, None]), parts=2, low=1, high=9).to_pylist()[1] == 0


def test_part_count_gives_every_cpu_a_part_and_bounds_part_size(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ray={"rows_per_part": 10_000},
                                      transform={"gpu_batch_rows": 1000}))

    def count(engine: EngineName, *, rows: int, cpus: int) -> int:
        return part_count(config.ray, config.transform.gpu_batch_rows, engine, rows, cpus)

    assert count("cpu", rows=5_000, cpus=4) == 4  # a part per CPU
    assert count("cpu", rows=95_000, cpus=4) == 10  # none over rows_per_part
    assert count("cpu", rows=3, cpus=8) == 3  # never more parts than rows
    assert count("gpu", rows=5_000, cpus=2) == 5  # on the GPU none over gpu_batch_rows


# ------------------------------------------------------------- the Ray executor's reads of the plan


def test_ray_read_tasks_share_a_file_s_row_groups_until_there_is_a_task_per_cpu() -> None:

    files = (FilePlan("a.parquet", (0, 1, 2, 3, 4), 50), FilePlan("b.parquet", (7,), 10))
    plan = SourcePlan("orders", locate("/nowhere"),
                      Window(lower=None, upper=datetime(2024, 1, 2, tzinfo=UTC)),
                      files, 2, None)
    assert sorted(_read_tasks(plan, 1)) == [("a.parquet", (0, 1, 2, 3, 4)), ("b.parquet", (7,))]
    tasks = _read_tasks(plan, 4)  # every recorded row group read once, by one task, and no other
    assert len(tasks) == 4
    assert sorted((path, g) for path, groups in tasks for g in groups) == [
        *[("a.parquet", g) for g in range(5)], ("b.parquet", 7)]


def test_ray_reads_only_the_recorded_row_groups_and_keeps_what_the_stage_quarantines(tmp_path: Path) -> None:
    """The window filters the rows; a null cursor and one in the future pass to the stage, which
    quarantines them (as the in-process reader does)."""

    at = [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(8)]
    stamps = [at[0], at[1], at[2], None, at[4], datetime(2030, 1, 1, tzinfo=UTC), at[6], at[7]]
    pq.write_table(pa.table({"k": list(range(8)), "ts": pa.array(stamps, pa.timestamp("us", tz="UTC"))}),
                   tmp_path / "f.parquet", row_group_size=2)
    window = Window(lower=at[0], upper=at[6])
    checks = Checks(key=("k",), now=datetime(2024, 1, 2, tzinfo=UTC), tolerance_s=3600)
    rows = _read_row_groups(locate(str(tmp_path)), str(tmp_path / "f.parquet"), (0, 1, 2), "ts", window,
                            checks, "orders")
    # row groups 0-2 only (keys 0-5); key 0 is at the window's lower bound (excluded)
    assert rows["k"].to_pylist() == [1, 2, 3, 4, 5]
