"""Progress of a run for a person at a terminal: `loader run` shows a bar (rich) when stderr is a
terminal and `--json` is off: rows done of the rows planned (estimated from row-group statistics),
the batch, the step, the time so far and the time left. Under cron, in containers and with `--json`
nothing is drawn: the log has one line per batch instead (loader/protocol/incremental.py).

The protocol reports here (begin, batch, step, advance); the bar, if any, is the CLI's."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class _Reporter(Protocol):
    def begin(self, total_rows: int, batches: int) -> None: ...
    def batch(self, number: int, total: int, replay: bool) -> None: ...
    def step(self, description: str) -> None: ...
    def advance(self, rows: int) -> None: ...


class _Silent:
    def begin(self, total_rows: int, batches: int) -> None:
        pass

    def batch(self, number: int, total: int, replay: bool) -> None:
        pass

    def step(self, description: str) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass


_reporter: _Reporter = _Silent()


def begin(total_rows: int, *, batches: int) -> None:
    """A run (or a replay) of `batches` batches and about `total_rows` rows begins."""
    _reporter.begin(total_rows, batches)


def batch(number: int, total: int, *, replay: bool = False) -> None:
    _reporter.batch(number, total, replay)


def step(description: str) -> None:
    """A step of the current batch begins."""
    _reporter.step(description)


def advance(rows: int) -> None:
    """`rows` more (estimated) rows are done."""
    _reporter.advance(rows)


class _Bar:
    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task = progress.add_task("planning", total=0, batch="")
        self.label = ""

    def begin(self, total_rows: int, batches: int) -> None:
        self.progress.reset(self.task, total=max(total_rows, 1), completed=0)

    def batch(self, number: int, total: int, replay: bool) -> None:
        self.label = f"batch {number}/{total}" + (" (replay)" if replay else "")
        self.progress.update(self.task, batch=self.label, refresh=True)

    def step(self, description: str) -> None:
        self.progress.update(self.task, description=description, refresh=True)  # drawn now, even if short

    def advance(self, rows: int) -> None:
        self.progress.advance(self.task, rows)


@contextmanager
def bar_in_terminal(*, quiet: bool) -> Iterator[None]:
    """A progress bar on stderr while the block runs, if stderr is a terminal and not `quiet`."""
    global _reporter
    if quiet or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    # transient: the bar goes when the run ends, the summary printed after it stays
    with Progress(TextColumn("run {task.fields[batch]}"), BarColumn(),
                  TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"), TimeElapsedColumn(),
                  TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.description}"),
                  console=Console(stderr=True), transient=True) as progress:
        _reporter = _Bar(progress)
        try:
            yield
        finally:
            _reporter = _Silent()
