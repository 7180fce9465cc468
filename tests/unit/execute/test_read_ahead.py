"""The read-ahead (loader/execute/read_ahead.py): sources handed out per batch in order, the rows alive
at once within the batch budget (and never more than two sources), an error delivered to the batch it
belongs to, and a stop that frees all."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

import pytest

from loader.execute.read_ahead import ReadAhead

#: A source's estimated rows, by name.
WEIGHT = {"orders": 200, "lineitem": 800, "broken": 100, "whole": 1000}


class Rows:
    """A source's rows, tracked while alive: how many sources and how many rows at most at once."""

    alive: dict[int, int] = {}
    most = 0
    most_rows = 0
    lock = threading.Lock()

    def __init__(self, batch: str, name: str) -> None:
        self.batch, self.name = batch, name
        with Rows.lock:
            Rows.alive[id(self)] = WEIGHT[name]
            Rows.most = max(Rows.most, len(Rows.alive))
            Rows.most_rows = max(Rows.most_rows, sum(Rows.alive.values()))
        weakref.finalize(self, Rows._gone, id(self))

    @staticmethod
    def _gone(key: int) -> None:
        with Rows.lock:
            Rows.alive.pop(key, None)


@pytest.fixture(autouse=True)
def _counted() -> Iterator[None]:
    Rows.alive, Rows.most, Rows.most_rows = {}, 0, 0
    yield


def _produce(plan: dict[str, list[str]]) -> Iterator[Rows]:
    for name in plan["sources"]:
        if name == "broken":
            raise ValueError(f"cannot read {plan['batch'][0]}")
        yield Rows(plan["batch"][0], name)


def _plans(*batches: list[str]) -> list[dict[str, list[str]]]:
    return [{"batch": [f"b{i}"], "sources": sources} for i, sources in enumerate(batches)]


def _ahead(*batches: list[str], budget: int = 1000) -> ReadAhead:
    return ReadAhead(_produce, _plans(*batches), weights=[[WEIGHT[n] for n in b] for b in batches],
                     budget=budget)


def _write_all(ahead: ReadAhead, batches: int) -> list[tuple[str, str]]:
    seen = []
    for index in range(batches):
        for item in ahead.items(index):
            seen.append((item.batch, item.name))
            del item  # written: the writer lets go of it before asking for the next
    return seen


def test_sources_come_in_batch_order_within_the_budget_in_flight() -> None:
    ahead = _ahead(["orders", "lineitem"], ["orders"], ["orders", "lineitem"])
    try:
        seen = _write_all(ahead, 3)
    finally:
        ahead.close()
    assert seen == [("b0", "orders"), ("b0", "lineitem"), ("b1", "orders"), ("b2", "orders"),
                    ("b2", "lineitem")]
    assert Rows.most == 2  # the next source was computed while one was written ...
    assert Rows.most_rows == 1000  # ... as long as both fit the budget (lineitem and the next orders)
    assert ahead.seconds[0] > 0 and len(ahead.seconds) == 3


def test_a_source_that_would_overrun_the_budget_waits_for_the_one_being_written() -> None:
    ahead = _ahead(["whole"], ["whole"], ["whole"])
    try:
        assert len(_write_all(ahead, 3)) == 3
    finally:
        ahead.close()
    assert Rows.most == 1 and Rows.most_rows == 1000  # one batch's rows at a time, never two


def test_an_error_reaches_the_batch_it_belongs_to_after_the_batches_before_it() -> None:
    ahead = _ahead(["orders"], ["orders", "broken"], ["orders"])
    try:
        assert [i.name for i in ahead.items(0)] == ["orders"]
        got = ahead.items(1)
        assert next(got).name == "orders"
        with pytest.raises(ValueError, match="cannot read b1"):
            next(got)
    finally:
        ahead.close()


def test_a_writer_that_stops_asking_midway_frees_the_slot_and_close_frees_everything() -> None:
    ahead = _ahead(["orders", "lineitem"], ["orders", "lineitem"], ["orders"])
    first = ahead.items(0)
    assert next(first).name == "orders"
    first.close()  # the batch failed after its first source: its iterator is dropped
    ahead.close()  # the run ends: the source computed ahead is dropped too, the thread stops
    assert not ahead._thread.is_alive()
    assert not Rows.alive
