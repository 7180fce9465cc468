"""Reading and transforming ahead of the writes: while one source of a batch is written, the next
source (of this batch or the next one) is read and transformed on a thread of its own. The sink
writes are mostly compression and I/O in native code, the reads decoding and the transforms Arrow
kernels, so on two cores each hides much of the other.

The batch budget covers everything in flight: a source is computed ahead only while the estimated rows
of the sources alive (being written, or computed and waiting) plus its own stay within `budget`
(`run.max_batch_rows`), and never more than one source ahead. So batches of several sources (orders and
their lineitems) overlap, and memory stays what one batch costs; a run of one source per batch
overlaps nothing (each batch is the whole budget). Nothing here touches the state store or a sink: a
batch is still recorded in the ledger before its first write and committed after its last, in order,
by the caller. A batch computed ahead and never recorded (the run failed or was killed first) was only
read: nothing to undo."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from loader.execute.stages import SourceRows
from loader.landing.plans import RunPlan
from loader.observe import logs
from loader.observe.logs import in_context

_ITEM, _END, _ERROR = "item", "end", "error"


def source_rows(plan: RunPlan) -> list[int]:
    """The estimated rows of each source the executors yield for `plan`, in their order."""
    return [p.estimated_rows for p in plan.sources.values() if not p.is_empty]


class ReadAhead:
    """The sources of `plans` computed in order by `produce` on one thread, handed out per batch by
    `items(index)`. `weights[i]`: batch i's sources' estimated rows, in the order `produce` yields them.
    `seconds[index]`: the time spent computing that batch's sources."""

    def __init__(self, produce: Callable[[Any], Iterator[SourceRows]], plans: list[Any], *,
                 weights: list[list[int]], budget: int) -> None:
        self._produce, self._plans, self._weights, self._budget = produce, plans, weights, budget
        self._lock = threading.Condition()
        self._alive: list[int] = []  # the weights of the sources computed and not yet let go of
        self._queue: queue.Queue[tuple[str, int, Any, int]] = queue.Queue()
        self._stop = threading.Event()
        self.seconds = [0.0] * len(plans)
        self._thread = threading.Thread(target=in_context(self._run), name="read-ahead", daemon=True)
        self._thread.start()

    def _admit(self, weight: int) -> bool:
        """Wait until a source of `weight` rows may be computed; False when stopped."""
        with self._lock:
            self._lock.wait_for(lambda: self._stop.is_set() or not self._alive
                                or (len(self._alive) < 2 and sum(self._alive) + weight <= self._budget))
            if self._stop.is_set():
                return False
            self._alive.append(weight)
            return True

    def _let_go(self, weight: int) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self._alive.remove(weight)
            self._lock.notify_all()

    def _run(self) -> None:
        logs.set_run(None)  # the batches computed here have no run number yet: their lines carry none
        for index, plan in enumerate(self._plans):
            weights = iter(self._weights[index])
            try:
                sources = self._produce(plan)
                while True:
                    weight = next(weights, 0)
                    if not self._admit(weight):
                        return
                    started = time.perf_counter()
                    item = next(sources, None)
                    self.seconds[index] += time.perf_counter() - started
                    if item is None:
                        self._let_go(weight)
                        break
                    self._queue.put((_ITEM, index, item, weight))
                    del item
            except BaseException as error:  # handed to the writer, which fails the batch it belongs to
                self._queue.put((_ERROR, index, error, 0))
                return
            self._queue.put((_END, index, None, 0))

    def items(self, index: int) -> Generator[SourceRows, None, None]:
        """Batch `index`'s sources in order, as the executor would yield them; raises what computing
        them raised. A source is let go of when the caller asks for the next one or drops the iterator."""
        while True:
            kind, number, value, weight = self._queue.get()
            if number < index:  # the end marker of an earlier batch whose caller stopped asking
                continue
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            try:
                yield value
            finally:
                del value
                self._let_go(weight)

    def close(self) -> None:
        """Stop computing ahead (the run ended or failed) and wait for the thread: the source it is
        computing finishes first, then everything held is dropped."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)
        while not self._queue.empty():
            self._queue.get_nowait()
