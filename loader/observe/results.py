"""What a batch did, per table and per sink, typed. The run protocol builds them, the batch's commit
stores them in the ledger's metrics (`to_json`), and the run history, the reports and the metrics read
them back (`from_json`, which also takes what older loaders stored). One shape, kept in one place."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from state import Window


def _counts(data: Any) -> dict[str, int]:
    return {str(k): int(v or 0) for k, v in (data or {}).items()}


def _summed(into: dict[str, int], more: dict[str, int]) -> None:
    for key, count in more.items():
        into[key] = into.get(key, 0) + count


@dataclass
class SinkResult:
    """One sink's write of one table: live rows written, deletes applied (keys removed or marked, or
    tombstone versions written), where, whether it found the batch landed already, rows per region."""

    rows: int = 0
    deleted: int = 0
    location: str = ""
    skipped: bool = False
    regions: dict[str, int] = field(default_factory=dict)

    def add(self, later: SinkResult) -> None:
        """Fold a later batch's write in: `skipped` only if every batch found its write landed."""
        self.rows += later.rows
        self.deleted += later.deleted
        self.skipped = self.skipped and later.skipped
        _summed(self.regions, later.regions)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "deleted": self.deleted, "location": self.location,
                "skipped": self.skipped, "regions": dict(self.regions)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SinkResult:
        return cls(rows=int(data.get("rows") or 0), deleted=int(data.get("deleted") or 0),
                   location=str(data.get("location") or ""), skipped=bool(data.get("skipped", False)),
                   regions=_counts(data.get("regions")))


@dataclass
class TableResult:
    """One table of a batch (or, folded, of a run): live rows loaded, tombstones beside them, the
    window, files read, parts, Ray nodes, rows quarantined per reason, and each sink's write."""

    rows: int = 0
    deleted: int = 0  # tombstones: keys deleted upstream
    window: Window | None = None  # None only in ledger entries of loaders that did not store it
    files_read: int = 0
    parts: int = 0
    ray_nodes: int = 0
    ray_write_nodes: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    sinks: dict[str, SinkResult] = field(default_factory=dict)

    @property
    def deletes_applied(self) -> int:
        """Keys deleted (hard) or marked deleted (soft): the most any sink applied (the sinks apply the
        same tombstones; one that found the batch landed already applied none)."""
        return max((s.deleted for s in self.sinks.values()), default=0)

    def add(self, later: TableResult) -> None:
        """Fold a later batch of the same run in: counts summed, the window spanning both (a replayed
        batch, then new batches whose lookback starts before it: not always in order), Ray nodes the most
        any batch used."""
        if self.window is not None and later.window is not None:
            lowers = (self.window.lower, later.window.lower)
            lower = None if None in lowers else min(w for w in lowers if w is not None)
            self.window = Window(lower=lower, upper=max(self.window.upper, later.window.upper))
        self.rows += later.rows
        self.deleted += later.deleted
        self.files_read += later.files_read
        self.parts += later.parts
        self.ray_nodes = max(self.ray_nodes, later.ray_nodes)
        self.ray_write_nodes = max(self.ray_write_nodes, later.ray_write_nodes)
        _summed(self.quarantined, later.quarantined)
        for sink, write in later.sinks.items():
            if sink in self.sinks:
                self.sinks[sink].add(write)
            else:
                self.sinks[sink] = copy.deepcopy(write)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "deleted": self.deleted,
            "window": None if self.window is None else self.window.to_json(),
            "files_read": self.files_read, "parts": self.parts, "ray_nodes": self.ray_nodes,
            "ray_write_nodes": self.ray_write_nodes, "quarantined": dict(self.quarantined),
            "sinks": {name: write.to_json() for name, write in self.sinks.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableResult:
        window = data.get("window")
        return cls(
            rows=int(data.get("rows") or 0), deleted=int(data.get("deleted") or 0),
            window=Window.from_json(window) if window else None,
            files_read=int(data.get("files_read") or 0), parts=int(data.get("parts") or 0),
            ray_nodes=int(data.get("ray_nodes") or 0), ray_write_nodes=int(data.get("ray_write_nodes") or 0),
            quarantined=_counts(data.get("quarantined")),
            sinks={name: SinkResult.from_json(write or {})
                   for name, write in (data.get("sinks") or {}).items()},
        )


def fold_tables(total: dict[str, TableResult], batch: dict[str, TableResult]) -> None:
    """A batch's tables folded into a run's totals (the batch's own results are left as they are)."""
    for name, result in batch.items():
        if name in total:
            total[name].add(result)
        else:
            total[name] = copy.deepcopy(result)


def tables_from_json(data: Any) -> dict[str, TableResult]:
    """The `tables` of a ledger run's metrics, typed."""
    return {name: TableResult.from_json(info or {}) for name, info in (data or {}).items()}
