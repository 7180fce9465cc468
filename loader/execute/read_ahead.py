"""Reading and transforming ahead of the writes: while one source of a batch is written, the next
source (of this batch or the next one) is read and transformed on a thread of its own. The sink
writes are mostly compression and I/O in native code, the reads decoding and the transforms Arrow
kernels, so on two cores each hides much of the other.

At most `slots` sources' rows are alive at once (default two: the one being written and the one being
computed), so the memory of a run is about twice a source's share of a batch, not more. Nothing here
touches the state store or a sink: a batch is still recorded in the ledger before its first write and
committed after its last, in order, by the caller. A batch computed ahead and never recorded (the
run failed or was killed first) was only read: nothing to undo."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from loader.execute.stages import SourceRows
from loader.observe import logs
from loader.observe.logs import in_context
from loader.protocol.planning import RunPlan

_ITEM, _END, _ERROR = "item", "end", "error"


class ReadAhead:
    """The sources of `plans` computed in order by `produce` on one thread, handed out per batch by
    `items(index)`; `seconds[index]`: the time spent computing that batch's sources."""

    def __init__(self, produce: Callable[[RunPlan], Iterator[SourceRows]], plans: list[RunPlan], *,
                 slots: int = 2) -> None:
        self._produce, self._plans = produce, plans
        self._slots = threading.Semaphore(slots)
        self._queue: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        self._stop = threading.Event()
        self.seconds = [0.0] * len(plans)
        self._thread = threading.Thread(target=in_context(self._run), name="read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        logs.set_run(None)  # the batches computed here have no run number yet: their lines carry none
        for index, plan in enumerate(self._plans):
            try:
                sources = self._produce(plan)
                while True:
                    self._slots.acquire()  # a slot for the source about to be computed
                    if self._stop.is_set():
                        return
                    started = time.perf_counter()
                    item = next(sources, None)
                    self.seconds[index] += time.perf_counter() - started
                    if item is None:
                        self._slots.release()
                        break
                    self._queue.put((_ITEM, index, item))
                    del item
            except BaseException as error:  # handed to the writer, which fails the batch it belongs to
                self._queue.put((_ERROR, index, error))
                return
            self._queue.put((_END, index, None))

    def items(self, index: int) -> Iterator[SourceRows]:
        """Batch `index`'s sources in order, as the executor would yield them; raises what computing
        them raised. A source's slot frees when the caller asks for the next one or drops the iterator."""
        while True:
            kind, number, value = self._queue.get()
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
                self._slots.release()

    def close(self) -> None:
        """Stop computing ahead (the run ended or failed) and wait for the thread: the source it is
        computing finishes first, then everything held is dropped."""
        self._stop.set()
        self._slots.release()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)
            self._slots.release()
        while not self._queue.empty():
            self._queue.get_nowait()
