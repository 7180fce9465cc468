"""A backfill request: its chunks cover (start, end] exactly once, the last one shorter; its id
depends on the request alone; bad requests are refused with the fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from loader.config import load_config
from loader.errors import ConfigError
from loader.protocol.backfill import BackfillRequest, build_request
from tests.support.cli import write_config

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_chunks_tile_the_window() -> None:
    request = BackfillRequest(T0, T0 + timedelta(hours=50), timedelta(days=1), ("orders",), ("delta",))
    chunks = request.chunks()
    assert [(c.lower, c.upper) for c in chunks] == [
        (T0, T0 + timedelta(days=1)), (T0 + timedelta(days=1), T0 + timedelta(days=2)),
        (T0 + timedelta(days=2), T0 + timedelta(hours=50))]


def test_id_names_the_request() -> None:
    a = BackfillRequest(T0, T0 + timedelta(days=2), timedelta(days=1), ("orders",), ("delta",))
    assert a.id == BackfillRequest(T0, T0 + timedelta(days=2), timedelta(days=1), ("orders",), ("delta",)).id
    assert a.id != BackfillRequest(T0, T0 + timedelta(days=2), timedelta(hours=12), ("orders",),
                                   ("delta",)).id
    assert a.id.startswith("bf-") and a.to_json()["id"] == a.id


def test_defaults_are_every_source_and_every_enabled_sink(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    request = build_request(config, start=T0, end=T0 + timedelta(days=1), chunk=timedelta(days=1),
                            sources=(), sinks=())
    assert request.sources == tuple(config.sources) and request.sinks == ("parquet", "delta")


@pytest.mark.parametrize(("end", "chunk", "says"), [
    (T0, timedelta(days=1), "is not after --start"),
    (T0 + timedelta(days=1), timedelta(0), "must be positive"),
    (T0 + timedelta(days=3650), timedelta(minutes=1), "use a larger --chunk"),
])
def test_bad_requests(tmp_path: Path, end: datetime, chunk: timedelta, says: str) -> None:
    config = load_config(write_config(tmp_path))
    with pytest.raises(ConfigError, match=says):
        build_request(config, start=T0, end=end, chunk=chunk, sources=(), sinks=())
