"""Delta on S3 commits safely with more than one writer: every commit is a conditional put of its log
entry (deltalake's default; the sink no longer sets AWS_S3_ALLOW_UNSAFE_RENAME, under which two writers
could both write the same version and one commit would be lost). Real sinks in separate processes
(the sink's own writer lock is per process) against moto's S3 server, which honours If-None-Match:
of two writers committing at once the loser retries on the next version (appends), or fails with a
commit conflict, cleanly, and its replay lands (a merge whose files the winner rewrote). Nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable

from loader.config import load_config
from loader.errors import SinkUnavailable
from loader.sinks import enabled_sinks
from loader.sinks.delta.facts import TOMBSTONE_FILES, app_id
from loader.sinks.delta.sink import DeltaSink, _storage_options
from tests.support.cli import ROOT, write_config
from tests.support.conformance import (
    DELETES_SCHEMA,
    KEY,
    PIPELINE,
    TABLE,
    batch_of,
    live,
    row,
    table_of,
    tombstone,
    write_whole,
)
from tests.support.gate import Gate
from tests.support.s3_server import S3, moto_s3

pytestmark = pytest.mark.integration

BUCKET = "lake"

# One write of run `run` (a backfill chunk: an app id of its own) with the Delta sink of the config, in a
# process of its own; prints the error's class on failure and exits 3, as the runner would retry it.
_WRITER = """
import sys
from loader.config import load_config
from loader.errors import LoaderError
from loader.sinks import enabled_sinks
from tests.support.conformance import batch_of, row, table_of, write_whole
config, run, versions = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3])
[sink] = enabled_sinks(load_config(config))
rows = table_of(row(k, v) for k, v in sorted(versions.items()))
try:
    result = write_whole(sink, batch_of(run, rows, mode="backfill"))
except LoaderError as error:
    print(type(error).__name__, error)
    sys.exit(3)
print("rows", result.rows)
"""


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3(BUCKET) as server:
        yield server


def _config(folder: Path, name: str) -> Path:
    return write_config(folder, pipeline=PIPELINE, warehouse=f"s3://{BUCKET}/{name}",
                        sinks={"parquet": {"enabled": False}, "delta": {"enabled": True}})


def _sink(config: Path) -> DeltaSink:
    [sink] = enabled_sinks(load_config(config))
    assert isinstance(sink, DeltaSink)
    return sink


def _writer(config: Path, run: int, versions: dict[int, int], env: dict[str, str],
            failpoints: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(config), str(run), repr(versions)], cwd=ROOT,
                            env={**os.environ, **env, "LOADER_FAILPOINTS": failpoints},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(versions: dict[int, int]) -> pa.Table:
    return table_of(row(k, v) for k, v in sorted(versions.items()))


def _held(writer: subprocess.Popen[str]) -> None:
    """Returns once `writer` waits at its gate (its failpoint says so on stderr)."""
    assert writer.stderr is not None
    for line in writer.stderr:
        if ": waiting for " in line:
            return
    pytest.fail(f"the writer ended before its gate: {writer.communicate()}")


def _stored(sink: DeltaSink) -> dict[int, object]:
    held = sink.read_back(TABLE, list(KEY) + ["updated_at"])
    assert held is not None
    keys = held["id"].to_pylist()
    assert len(keys) == len(set(keys)), f"a key stored twice: {sorted(keys)}"
    return dict(zip(keys, held["updated_at"].to_pylist(), strict=True))


def _table(sink: DeltaSink) -> DeltaTable:
    return DeltaTable(sink.location(TABLE), storage_options=sink.storage_options)


def test_s3_storage_options_commit_with_conditional_put(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_CONDITIONAL_PUT", raising=False)
    options = _storage_options("s3://lake/wh")
    assert options is not None and not any("UNSAFE_RENAME" in name.upper() for name in options), options
    assert "aws_conditional_put" not in options  # AWS S3 itself: put-if-absent, deltalake's default
    monkeypatch.setenv("AWS_CONDITIONAL_PUT", "etag")  # MinIO, R2
    assert (_storage_options("s3://lake/wh") or {})["aws_conditional_put"] == "etag"


def test_two_appending_writers_commit_at_once_and_both_land(s3: S3, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes append new keys to one table, both held just before their commit and let go
    together: both commits land, on two versions, every key once."""
    env = s3.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = _config(tmp_path / "project", "appends")
    sink = _sink(config)
    write_whole(sink, batch_of(1, table_of(row(k) for k in range(1, 7))))
    gate = Gate(tmp_path)
    chunks = {2: {10: 1, 11: 1}, 3: {20: 1, 21: 1, 22: 1}}  # new keys beyond the stored ones: appends
    held = gate.failpoint("delta.write", "*1")
    writers = [_writer(config, run, versions, env, held) for run, versions in chunks.items()]
    try:
        for writer in writers:  # both at the gate, then both go at once
            _held(writer)
    finally:
        gate.open()
    outcomes = [writer.communicate(timeout=120) for writer in writers]
    assert [w.returncode for w in writers] == [0, 0], outcomes
    assert set(_stored(sink)) == {*range(1, 7), 10, 11, 20, 21, 22}
    table = _table(sink)
    assert table.version() == 2, table.history()  # the table's commit, then one per writer
    for run in chunks:
        assert table.transaction_version(app_id(PIPELINE, TABLE, backfill_run=run)) == run


def test_a_merge_whose_files_another_writer_rewrote_fails_cleanly_and_its_replay_lands(
        s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer A (another process) has read the table and waits before its merge (updates only) while
    writer B merges newer versions of some of the same keys and commits. A's commit then conflicts: it
    fails with a transient error naming the fix, committing nothing; its replay (what the runner does)
    lands. Every key ends at its newest version, stored once: nothing of either writer lost."""
    env = s3.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = _config(tmp_path / "project", "conflict")
    sink = _sink(config)
    first = {k: 1 for k in range(1, 21)}
    write_whole(sink, batch_of(1, _run(first)))
    older, newer = {k: 2 for k in range(1, 11)}, {k: 3 for k in range(5, 16)}
    gate = Gate(tmp_path)
    held = _writer(config, 2, older, env, gate.failpoint("delta.write", "*1"))
    try:
        _held(held)
        landed = write_whole(sink, batch_of(3, _run(newer), mode="backfill"))
        assert landed.rows == len(newer), landed
    finally:
        gate.open()
    out, err = held.communicate(timeout=120)
    assert held.returncode == 3, (out, err)
    assert out.startswith(SinkUnavailable.__name__) and "Run again: the run replays safely" in out, out
    table = _table(sink)
    assert table.transaction_version(app_id(PIPELINE, TABLE, backfill_run=2)) is None  # A committed nothing
    replay = write_whole(sink, batch_of(2, _run(older), replay=True, mode="backfill"))
    assert replay.rows == 4, replay  # keys 1-4: 5-10 hold B's newer version already
    newest = {k: max(first.get(k, 0), older.get(k, 0), newer.get(k, 0)) for k in range(1, 21)}
    want = {k: row(k, v)["updated_at"] for k, v in newest.items()}
    assert _stored(sink) == want
    assert _table(sink).transaction_version(app_id(PIPELINE, TABLE, backfill_run=2)) == 2


def test_the_tombstone_table_is_compacted_on_s3_too(s3: S3, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Hard deletes in run after run: the side table's folder, listed on S3, stays within the bound
    (tests/integration/test_delta_tombstone_table.py has the whole story, locally)."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    sink = _sink(_config(tmp_path / "project", "tombstones"))
    write_whole(sink, batch_of(1, table_of([live(k) for k in range(1, 13)], DELETES_SCHEMA), deletes="hard"))
    for key in range(1, 13):
        dead = table_of([tombstone(key, 2)], DELETES_SCHEMA)
        result = write_whole(sink, batch_of(key + 1, dead, deletes="hard"))
        assert result.deleted == 1, result
    folder = sink.tombstones_uri(TABLE)[len("s3://"):]
    listed = s3.filesystem().get_file_info(pafs.FileSelector(folder))
    files = [f.base_name for f in listed if f.base_name.endswith(".parquet")]
    assert 1 <= len(files) <= TOMBSTONE_FILES, files
    assert _stored(sink) == {}
    side = DeltaTable(sink.tombstones_uri(TABLE), storage_options=sink.storage_options)
    assert sorted(side.to_pyarrow_table()["id"].to_pylist()) == list(range(1, 13))
