"""Delta's `_tombstones` side table (hard deletes) stays small: every run with deletes commits to it (a
file each), and once its folder holds more than TOMBSTONE_FILES data files the sink compacts it and
deletes the replaced files, inside the table's writer lock. Over many runs its folder stays bounded,
and what it remembers and what the table holds stay exact."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable

from loader.sinks.delta.facts import TOMBSTONE_FILES
from tests.support.conformance import (
    DELETES_SCHEMA,
    batch_of,
    live,
    make_sink,
    row,
    table_of,
    tombstone,
    write_whole,
)
from tests.support.readers import read_delta

pytestmark = pytest.mark.integration

KEYS = 40


def _data_files(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix == ".parquet")


def test_the_tombstone_table_stays_bounded_over_many_runs_with_deletes(tmp_path: Path) -> None:
    """Run 1 stores keys 1..40. Run i+1 deletes key i (remembered: an append, or a merge where the run
    also forgets a key), revives key i-2 with a newer version (forgotten) and brings key i-1 late (older
    than its tombstone: dropped). After every run: at most TOMBSTONE_FILES data files in the side
    table's folder, it remembers exactly the deleted keys not revived, the table holds the rest."""
    sut = make_sink("delta", tmp_path / "project")
    uri = sut.sink.location("events")
    side = Path(sut.sink.tombstones_uri("events"))  # type: ignore[attr-defined]
    first = table_of([live(k) for k in range(1, KEYS + 1)], DELETES_SCHEMA)
    write_whole(sut.sink, batch_of(1, first, deletes="hard"))
    remembered: dict[int, object] = {}
    stored = set(range(1, KEYS + 1))
    most = 0
    for i in range(1, KEYS + 1):
        run = [tombstone(i, 2)] + ([live(i - 1, 1)] if i > 1 else []) + ([live(i - 2, 3)] if i > 2 else [])
        data = table_of(sorted(run, key=lambda r: r["id"]), DELETES_SCHEMA)
        result = write_whole(sut.sink, batch_of(i + 1, data, deletes="hard"))
        assert result.deleted == 1, result
        remembered[i] = row(i, 2)["updated_at"]
        stored.discard(i)
        if i > 2:
            remembered.pop(i - 2)
            stored.add(i - 2)
        files = _data_files(side)
        most = max(most, files)
        assert files <= TOMBSTONE_FILES, f"run {i + 1}: {files} data files in {side}"
        held = read_delta(side)
        assert held is not None
        assert dict(zip(held["id"].to_pylist(), held["updated_at"].to_pylist(), strict=True)) == remembered, i
        table = read_delta(uri)
        assert table is not None and sorted(table["id"].to_pylist()) == sorted(stored), i
    assert most == TOMBSTONE_FILES  # it grew to the bound, and was compacted there
    operations = [entry["operation"] for entry in DeltaTable(str(side)).history()]
    # appends compacted into one file, merges rewriting it: replaced files deleted at each pass of the bound
    assert operations.count("OPTIMIZE") >= 1 and operations.count("VACUUM END") >= 3, operations
    assert len(DeltaTable(str(side)).file_uris()) <= TOMBSTONE_FILES
