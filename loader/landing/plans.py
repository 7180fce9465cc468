"""What a run reads: per source, its window and the files and row groups that can hold rows of it
(`RunPlan`), recorded in the ledger before any write so a replay reads exactly the same input."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from loader.landing.files import GroupStats, files_schema
from loader.storage import Location
from state import Window


@dataclass(frozen=True)
class FilePlan:
    path: str  # inside the source's filesystem
    row_groups: tuple[int, ...]
    rows: int  # rows in those row groups: an upper bound of what the window selects
    size: int | None = None  # bytes when planned: a replay refuses a file that changed since
    stats: tuple[GroupStats, ...] = ()  # of the planned row groups (empty for a replayed input)
    #: The modification time when listed (ISO; S3's LastModified): with the size, the file's identity
    #: (a rewrite of the same size changes it).
    mtime: str | None = None
    #: The file's columns, from the footer planning read (None for a replayed input: read when needed).
    schema: pa.Schema | None = field(default=None, compare=False)

    def to_input(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime": self.mtime,
                "row_groups": list(self.row_groups), "rows": self.rows}


@dataclass(frozen=True)
class SourcePlan:
    source: str
    location: Location
    window: Window
    files: tuple[FilePlan, ...]
    # files listed (in the folders that can hold rows of the window), before row-group pruning
    files_seen: int
    base_run: int | None  # run number of the checkpoint this plan starts from

    @property
    def estimated_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def row_groups(self) -> int:
        return sum(len(f.row_groups) for f in self.files)

    @property
    def is_empty(self) -> bool:
        return not self.files

    def restrict(self, window: Window) -> SourcePlan:
        """This plan cut down to `window` (inside its own): the row groups that can hold rows of it."""
        files = []
        for file in self.files:
            stats = tuple(g for g in file.stats if in_window(window, g[2], g[3]))
            if stats:
                files.append(FilePlan(file.path, tuple(g[0] for g in stats), sum(g[1] for g in stats),
                                      file.size, stats, file.mtime, file.schema))
        return SourcePlan(self.source, self.location, window, tuple(files), self.files_seen, self.base_run)


@dataclass(frozen=True)
class RunPlan:
    sources: dict[str, SourcePlan]
    # when the files were listed (`loader verify` counts files landed by then)
    planned_at: datetime | None = None

    def to_input(self) -> dict[str, Any]:
        """The exact input, recorded in the ledger before any write: a replay reads this and nothing else."""
        return {
            "planned_at": None if self.planned_at is None else self.planned_at.isoformat(),
            "sources": {name: {"files": [f.to_input() for f in p.files]} for name, p in self.sources.items()},
        }

    @property
    def is_empty(self) -> bool:
        return all(p.is_empty for p in self.sources.values())

    @property
    def estimated_rows(self) -> int:
        return sum(p.estimated_rows for p in self.sources.values())

    def windows(self) -> dict[str, Window]:
        return {name: p.window for name, p in self.sources.items()}


def in_window(window: Window, low: datetime | None, high: datetime | None) -> bool:
    """Can a row group whose cursor spans [low, high] hold a row of the window? Unknown stats: yes."""
    if low is None or high is None:
        return True
    above_lower = window.lower is None or high > window.lower
    return above_lower and low <= window.upper


def landing_schema(plan: SourcePlan) -> pa.Schema | None:
    """The planned files' columns as the reader combines them (from the footers planning read; a
    replay's are read again), or None where they cannot be combined (the read then says why)."""
    known = {f.path: f.schema for f in plan.files if f.schema is not None}
    return files_schema(plan.location, [f.path for f in plan.files], known)
