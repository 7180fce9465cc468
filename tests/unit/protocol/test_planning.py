"""Window arithmetic and pruning, on small Parquet files written here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loader.config import SourceConfig
from loader.errors import BadSourceData
from loader.landing.plans import in_window
from loader.protocol.planning import compute_window, plan_source
from loader.storage import locate
from state import Checkpoint, Window

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_first_window_starts_at_the_beginning() -> None:
    window = compute_window(checkpoint=None, lookback=HOUR, max_present=T0, now=T0 + HOUR,
                            safety_lag=timedelta(0))
    assert window == Window(lower=None, upper=T0)


def test_window_starts_lookback_before_checkpoint() -> None:
    window = compute_window(checkpoint=T0, lookback=HOUR, max_present=T0 + 5 * HOUR, now=T0 + 9 * HOUR,
                            safety_lag=timedelta(0))
    assert window == Window(lower=T0 - HOUR, upper=T0 + 5 * HOUR)


def test_upper_is_capped_by_safety_lag() -> None:
    window = compute_window(checkpoint=T0, lookback=HOUR, max_present=T0 + 5 * HOUR, now=T0 + 3 * HOUR,
                            safety_lag=HOUR)
    assert window is not None and window.upper == T0 + 2 * HOUR


@pytest.mark.parametrize("max_present", [None, T0, T0 - HOUR])
def test_nothing_new_gives_no_window(max_present: datetime | None) -> None:
    assert compute_window(checkpoint=T0, lookback=HOUR, max_present=max_present, now=T0 + 9 * HOUR,
                          safety_lag=timedelta(0)) is None


def test_lag_cap_at_or_below_checkpoint_gives_no_window() -> None:
    assert compute_window(checkpoint=T0, lookback=HOUR, max_present=T0 + 5 * HOUR, now=T0 + HOUR,
                          safety_lag=HOUR) is None


def test_row_group_overlap_is_half_open() -> None:
    window = Window(lower=T0, upper=T0 + HOUR)
    assert not in_window(window, T0 - HOUR, T0)  # everything at or below lower: already loaded
    assert in_window(window, T0 - HOUR, T0 + timedelta(microseconds=1))
    assert in_window(window, T0 + HOUR, T0 + 2 * HOUR)
    assert not in_window(window, T0 + HOUR + timedelta(microseconds=1), T0 + 2 * HOUR)
    assert in_window(window, None, None)  # no statistics: must read


SOURCE = SourceConfig(kind="orders", path="orders", cursor="ts", primary_key=("k",), lookback=HOUR)


def _write_day(root: Path, day: str, stamps: list[datetime], *, row_group_size: int = 2) -> None:
    folder = root / f"ingest_date={day}"
    folder.mkdir(parents=True)
    table = pa.table({"k": list(range(len(stamps))), "ts": pa.array(stamps, pa.timestamp("us", tz="UTC"))})
    pq.write_table(table, folder / "part.parquet", row_group_size=row_group_size)


def test_plan_prunes_old_folders_and_row_groups(tmp_path: Path) -> None:
    root = tmp_path / "orders"
    _write_day(root, "2024-01-01", [T0 + timedelta(hours=h) for h in (1, 2, 3, 4)])
    day2 = T0 + timedelta(days=1)
    _write_day(root, "2024-01-02", [day2 + timedelta(hours=h) for h in (1, 2, 10, 11)])
    checkpoint = Checkpoint(source="orders", cursor=day2 + timedelta(hours=5), run_number=3, updated_at=T0)
    plan = plan_source("orders", SOURCE, locate(str(root)), checkpoint=checkpoint,
                       now=day2 + timedelta(days=1))
    assert plan.files_seen == 1  # the 2024-01-01 folder is older than the window: not even listed
    assert [f.path.split("/")[-2] for f in plan.files] == ["ingest_date=2024-01-02"]
    assert plan.files[0].row_groups == (1,)  # hours 1-2 are below checkpoint - lookback
    assert plan.window == Window(lower=day2 + timedelta(hours=4), upper=day2 + timedelta(hours=11))
    assert plan.base_run == 3 and plan.estimated_rows == 2


def test_planning_does_not_descend_into_partition_folders_older_than_the_window(tmp_path: Path) -> None:
    """A run lists only what can hold rows of its window: an old `ingest_date=` folder is skipped by
    its name, whatever it holds (here a file and a link out of the zone that listing it would refuse),
    at any depth; a folder that is not a date partition is still descended."""
    root = tmp_path / "orders"
    outside = tmp_path / "secret.parquet"
    pq.write_table(pa.table({"k": [1]}), outside)
    for old in (root / "ingest_date=2024-01-01", root / "region=x" / "ingest_date=2024-01-01"):
        old.mkdir(parents=True)
        (old / "link.parquet").symlink_to(outside)
    day2 = T0 + timedelta(days=1)
    _write_day(root, "2024-01-02", [day2 + timedelta(hours=h) for h in (1, 2, 10, 11)])
    _write_day(root / "region=x", "2024-01-02", [day2 + timedelta(hours=12)])
    checkpoint = Checkpoint(source="orders", cursor=day2 + timedelta(hours=5), run_number=3, updated_at=T0)
    plan = plan_source("orders", SOURCE, locate(str(root)), checkpoint=checkpoint,
                       now=day2 + timedelta(days=1))
    assert sorted(f.path[len(str(root)):] for f in plan.files) == [
        "/ingest_date=2024-01-02/part.parquet", "/region=x/ingest_date=2024-01-02/part.parquet"]
    assert plan.files_seen == 2
    with pytest.raises(BadSourceData, match="symbolic link"):  # the first run lists everything
        plan_source("orders", SOURCE, locate(str(root)), checkpoint=None, now=day2 + timedelta(days=1))


def test_plan_with_nothing_new_is_empty(tmp_path: Path) -> None:
    root = tmp_path / "orders"
    _write_day(root, "2024-01-01", [T0 + timedelta(hours=1)])
    checkpoint = Checkpoint(source="orders", cursor=T0 + timedelta(hours=1), run_number=1, updated_at=T0)
    plan = plan_source("orders", SOURCE, locate(str(root)), checkpoint=checkpoint, now=T0 + timedelta(days=1))
    assert plan.is_empty


def test_missing_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(BadSourceData, match="does not exist.*demo-data init"):
        plan_source("orders", SOURCE, locate(str(tmp_path / "nope")), checkpoint=None, now=T0)


def test_missing_cursor_column_names_file_and_key(tmp_path: Path) -> None:
    root = tmp_path / "orders"
    root.mkdir()
    pq.write_table(pa.table({"k": [1]}), root / "part.parquet")
    with pytest.raises(BadSourceData, match=r"no cursor column 'ts'.*sources\.orders\.cursor"):
        plan_source("orders", SOURCE, locate(str(root)), checkpoint=None, now=T0)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "orders"
    root.mkdir()
    (root / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(BadSourceData, match="broken.parquet"):
        plan_source("orders", SOURCE, locate(str(root)), checkpoint=None, now=T0)


def test_checkpoint_ahead_of_the_data_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "orders"
    _write_day(root, "2024-01-01", [T0 + timedelta(hours=1)])
    checkpoint = Checkpoint(source="orders", cursor=T0 + timedelta(hours=5), run_number=4, updated_at=T0)
    with pytest.raises(BadSourceData,
                       match=r"checkpoint of source 'orders'.*ahead of the landing zone.*new `pipeline`"):
        plan_source("orders", SOURCE, locate(str(root)), checkpoint=checkpoint, now=T0 + timedelta(days=1))


def test_checkpoint_ahead_when_its_folders_are_gone(tmp_path: Path) -> None:
    root = tmp_path / "orders"
    _write_day(root, "2024-01-01", [T0 + timedelta(hours=1)])
    checkpoint = Checkpoint(source="orders", cursor=T0 + timedelta(days=3), run_number=4, updated_at=T0)
    with pytest.raises(BadSourceData, match="no files at all"):
        plan_source("orders", SOURCE, locate(str(root)), checkpoint=checkpoint, now=T0 + timedelta(days=5))
