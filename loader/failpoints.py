"""Failpoints: named places in a run where a test can crash the process or inject an error.

Off by default and free when off (one dict lookup on an empty dict). Switched on only by the
environment variable LOADER_FAILPOINTS, a comma-separated list of `point=action`:

    LOADER_FAILPOINTS="delta.write=crash"             kill -9 this process at that point
    LOADER_FAILPOINTS="parquet.write=transient"       raise a transient error (retried)
    LOADER_FAILPOINTS="checkpoint.inside=terminal"    raise a terminal error (fails the run)
    LOADER_FAILPOINTS="plan.recorded=sleep:2.5"       sleep 2.5 s
    LOADER_FAILPOINTS="plan.recorded=wait:/tmp/gate"  wait there until the file /tmp/gate exists: a test
                                                      holds the process at the point for as long as it
                                                      needs (no race with a sleep on a busy machine)

A point may be narrowed to one table: `delta.write@lineitem=crash`. An action may be limited to the
first N hits: `parquet.write=transient*2`, or start after N hits: `delta.write=crash+2` (the third hit).
The points, in run order:
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from loader.errors import SinkRejected, SinkUnavailable

ENV = "LOADER_FAILPOINTS"
WAIT_LIMIT_S = 600.0  # a `wait:FILE` nobody releases fails the run then, rather than hang it forever
_ACTION = re.compile(r"(?P<action>.+?)(?:\+(?P<skip>\d+))?(?:\*(?P<times>\d+))?")

POINTS = {
    "parquet.dimension": "inside a dimension load: the Parquet log's new file written, "
                         "not yet renamed into place",
    "delta.dimension": "inside a dimension load: the Delta table's merge or overwrite not yet committed",
    "snowflake.dimension": "inside a dimension load: inside the Snowflake transaction, before its COMMIT",
    "iceberg.dimension": "inside a dimension load: the Iceberg table's new files written, not committed",
    "dimensions.before_record": "a dimension load applied by every sink; its fingerprint not yet recorded",
    "plan.recorded": "the run and its windows are in the ledger; nothing written yet",
    "parquet.write": "inside the Parquet sink: some partition files written, not all",
    "parquet.commit": "after the Parquet sink finished the table",
    "delta.write": "inside the Delta sink: before its last commit (after the merge, if any)",
    "delta.commit": "after the Delta sink's last commit (the run's app transaction landed)",
    "snowflake.write": "inside the Snowflake sink: files staged and copied, its transaction not begun",
    "snowflake.merge": "inside the Snowflake transaction: target merged, ledger row not yet inserted",
    "snowflake.commit": "after the Snowflake transaction (rows and ledger row) committed",
    "iceberg.write": "inside the Iceberg sink: the batch's files written, its one commit not yet made",
    "iceberg.commit": "after the Iceberg sink's commit (the run's marker landed with it)",
    "checkpoint.before": "every sink done; the checkpoint transaction not yet begun",
    "checkpoint.inside": "inside the checkpoint transaction, before it commits",
    "checkpoint.acknowledged": "the checkpoint transaction committed, "
                               "its acknowledgement not yet seen (retried)",
    "checkpoint.after": "the checkpoint transaction committed; the lease not yet released",
}
__doc__ = (__doc__ or "") + "\n".join(f"    {name:<20} {what}" for name, what in POINTS.items()) + "\n"


def _parse(text: str) -> dict[str, list[str | int]]:
    active: dict[str, list[str | int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        point, _, action = item.partition("=")
        name = point.split("@", 1)[0]
        if name not in POINTS or not action:
            raise ValueError(f"{ENV}: {item!r} is not point=action; points: {', '.join(POINTS)}")
        parts = _ACTION.fullmatch(action)  # action[+skip][*times]; a wait's path may hold other characters
        assert parts is not None  # `.+?` matches any non-empty action
        times, skip = parts["times"], parts["skip"]
        active[point] = [parts["action"], int(times) if times else -1, int(skip) if skip else 0]
    return active


_ACTIVE = _parse(os.environ.get(ENV, ""))
_LOCK = threading.Lock()


def reload() -> None:
    """Re-read the environment (for tests that set it in-process)."""
    global _ACTIVE
    _ACTIVE = _parse(os.environ.get(ENV, ""))


def hit(point: str, table: str | None = None) -> None:
    """Run the action configured for `point` (or `point@table`), if any."""
    if not _ACTIVE:
        return
    key = f"{point}@{table}" if table is not None and f"{point}@{table}" in _ACTIVE else point
    with _LOCK:
        entry = _ACTIVE.get(key)
        if entry is None or entry[1] == 0:
            return
        if isinstance(entry[2], int) and entry[2] > 0:  # `action+N`: pass the first N hits
            entry[2] -= 1
            return
        if isinstance(entry[1], int) and entry[1] > 0:
            entry[1] -= 1
    action = str(entry[0])
    where = f"failpoint {key}"
    if action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "transient":
        raise SinkUnavailable(f"{where}: injected transient fault")
    elif action == "terminal":
        raise SinkRejected(f"{where}: injected terminal fault")
    elif action.startswith("sleep:"):
        seconds = float(action.split(":", 1)[1])
        print(f"{where}: sleeping {seconds}s", file=sys.stderr, flush=True)  # tests wait for this line
        time.sleep(seconds)
    elif action.startswith("wait:"):
        _wait_for(Path(action.split(":", 1)[1]), where)
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} at {key}: use crash, transient, terminal, "
                         "sleep:SECONDS or wait:FILE")


def _wait_for(gate: Path, where: str) -> None:
    """Wait until `gate` exists; meanwhile `gate`.waiting exists (for a test in this process) and a line
    on stderr says so (for a test reading a child's stderr)."""
    waiting = gate.with_name(gate.name + ".waiting")
    waiting.touch()
    print(f"{where}: waiting for {gate}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + WAIT_LIMIT_S
    try:
        while not gate.exists():
            if time.monotonic() > deadline:
                raise SinkRejected(f"{where}: {gate} did not appear within {WAIT_LIMIT_S:g}s")
            time.sleep(0.02)
    finally:
        waiting.unlink(missing_ok=True)
    print(f"{where}: released", file=sys.stderr, flush=True)
