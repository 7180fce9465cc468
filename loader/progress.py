"""Progress of a run for a person at a terminal: `loader run` shows a bar (rich) when stderr is a
terminal and `--json` is off; under cron, in containers and with `--json` nothing is drawn (the log
lines say the same). The runner reports steps here; the bar, if any, is the CLI's.

Steps of a run: per source, "read and transform" then "write to the sinks", then "commit"."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class _Reporter(Protocol):
    def begin(self, total: int) -> None: ...
    def step(self, description: str) -> None: ...


class _Silent:
    def begin(self, total: int) -> None:
        pass

    def step(self, description: str) -> None:
        pass


_reporter: _Reporter = _Silent()


def begin(total: int) -> None:
    _reporter.begin(total)


def step(description: str) -> None:
    """A step begins (the previous one is done)."""
    _reporter.step(description)


class _Bar:
    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task = progress.add_task("planning", total=None)
        self.started = False

    def begin(self, total: int) -> None:
        self.progress.update(self.task, total=total, completed=0)

    def step(self, description: str) -> None:
        if self.started:
            self.progress.advance(self.task)
        self.started = True
        self.progress.update(self.task, description=description, refresh=True)  # drawn now, even if short


@contextmanager
def bar_in_terminal(*, quiet: bool) -> Iterator[None]:
    """A progress bar on stderr while the block runs, if stderr is a terminal and not `quiet`."""
    global _reporter
    if quiet or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # transient: the bar goes when the run ends, the summary printed after it stays
    with Progress(TextColumn("run"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=Console(stderr=True), transient=True) as progress:
        _reporter = _Bar(progress)
        try:
            yield
        finally:
            _reporter = _Silent()
