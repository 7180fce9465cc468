"""The read-ahead (loader/execute/read_ahead.py): sources handed out per batch in order, at most two
sources' rows alive at once, an error delivered to the batch it belongs to, and a stop that frees all."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

import pytest

from loader.execute.read_ahead import ReadAhead


class Rows:
    """A source's rows, tracked while alive."""

    alive: set[int] = set()
    most = 0
    lock = threading.Lock()

    def __init__(self, batch: str, name: str) -> None:
        self.batch, self.name = batch, name
        with Rows.lock:
            Rows.alive.add(id(self))
            Rows.most = max(Rows.most, len(Rows.alive))
        weakref.finalize(self, Rows._gone, id(self))

    @staticmethod
    def _gone(key: int) -> None:
        with Rows.lock:
            Rows.alive.discard(key)


@pytest.fixture(autouse=True)
def _counted() -> Iterator[None]:
    Rows.alive, Rows.most = set(), 0
    yield


def _produce(plan: dict[str, list[str]]) -> Iterator[Rows]:
    for name in plan["sources"]:
        if name == "broken":
            raise ValueError(f"cannot read {plan['batch'][0]}")
        yield Rows(plan["batch"][0], name)


def _plans(*batches: list[str]) -> list[dict[str, list[str]]]:
    return [{"batch": [f"b{i}"], "sources": sources} for i, sources in enumerate(batches)]


def test_sources_come_in_batch_order_with_at_most_two_alive() -> None:
    ahead = ReadAhead(_produce, _plans(["orders", "lineitem"], ["orders"], ["orders", "lineitem"]))  # type: ignore[arg-type]
    try:
        seen = []
        for index in range(3):
            for item in ahead.items(index):
                seen.append((item.batch, item.name))
                del item  # written: the writer lets go of it before asking for the next
    finally:
        ahead.close()
    assert seen == [("b0", "orders"), ("b0", "lineitem"), ("b1", "orders"), ("b2", "orders"), ("b2", "lineitem")]
    assert Rows.most == 2  # the one being written and the one computed ahead, never a third
    assert ahead.seconds[0] > 0 and len(ahead.seconds) == 3


def test_an_error_reaches_the_batch_it_belongs_to_after_the_batches_before_it() -> None:
    ahead = ReadAhead(_produce, _plans(["orders"], ["orders", "broken"], ["orders"]))  # type: ignore[arg-type]
    try:
        assert [i.name for i in ahead.items(0)] == ["orders"]
        got = ahead.items(1)
        assert next(got).name == "orders"
        with pytest.raises(ValueError, match="cannot read b1"):
            next(got)
    finally:
        ahead.close()


def test_a_writer_that_stops_asking_midway_frees_the_slot_and_close_frees_everything() -> None:
    ahead = ReadAhead(_produce, _plans(["orders", "lineitem"], ["orders", "lineitem"], ["orders"]))  # type: ignore[arg-type]
    first = ahead.items(0)
    assert next(first).name == "orders"
    first.close()  # the batch failed after its first source: its iterator is dropped
    ahead.close()  # the run ends: the source computed ahead is dropped too, the thread stops
    assert not ahead._thread.is_alive()
    assert not Rows.alive
