"""The stage chain, assembled once: what becomes of a source's landing rows on their way to the sinks.

    screen -> dedupe -> transform -> region split

1. `screen`: the quarantine's read checks (null key, null cursor, cursor in the future), then the
   window filter (loader/landing/sources.py `screen`; the in-process reader applies it to each row group
   as it reads, so a window taking a sliver of a large row group holds the sliver);
2. `dedupe`: one row per primary key, the latest cursor's (loader/transform/tables.py);
3. `transform`: enrich_<kind> -> region lookup -> regional rules (loader/transform/facts.py) on the
   run's engine; a chain declared `upto="region"` stops after the region lookup (verify: it reads only
   the key, the cursor and the lookup column, and compares regions);
4. `split_region`: rows the region lookup found no region for leave for the quarantine.

Both executors and verify run a `StageChain`: the Ray executor (loader/execute/ray_cluster.py) calls
`run` on each key-range part whole; the in-process one (loader/execute/local.py) calls the stages in
turn, the transform on row-contiguous pieces of the deduplicated rows on threads; verify
(loader/observe/verify.py) calls `run` on a chain up to the region lookup. The stages are row-local and
dedupe keeps exactly one deterministic row per key, so any split of a window gives the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from loader.config import LoaderConfig, SourceConfig
from loader.landing.quarantine import merge_bad, split_no_region
from loader.landing.sources import Checks, screen
from loader.protocol.planning import SourcePlan
from loader.transform.dimensions import Dimensions
from loader.transform.facts import attach_region, transform_fact
from loader.transform.frames import EngineName, frames_for, on_table
from loader.transform.region_rules import RegionRule
from loader.transform.tables import dedupe_latest, latest_rows
from state import Window

log = logging.getLogger(__name__)

#: How far a chain goes: the whole transform, or up to the region lookup (no enrichment, no rules).
Upto = Literal["rules", "region"]


def region_rules(config: LoaderConfig) -> dict[str, RegionRule]:
    return {
        name: RegionRule(currency=r.currency, fx_rate=r.fx_rate, vat_rate=r.vat_rate, mask_columns=tuple(r.mask))
        for name, r in config.regions.items()
    }


def read_checks(config: LoaderConfig, source: SourceConfig) -> Checks:
    return Checks(key=source.primary_key, now=datetime.now(UTC),
                  tolerance_s=config.quarantine.future_tolerance.total_seconds())


@dataclass(frozen=True)
class StageChain:
    """The stages for one source's window (see the module's docstring). Small and picklable: the Ray
    executor sends it to each part's task; the dimensions go beside it (broadcast once)."""

    name: str
    source: SourceConfig
    window: Window
    checks: Checks
    rules: Mapping[str, RegionRule]
    engine: EngineName = "cpu"
    upto: Upto = "rules"

    @classmethod
    def for_source(cls, config: LoaderConfig, name: str, window: Window, *, engine: EngineName = "cpu",
                   upto: Upto = "rules") -> StageChain:
        source = config.sources[name]
        return cls(name, source, window, read_checks(config, source), region_rules(config), engine, upto)

    # ----------------------------------------------------------------------------------- the stages

    def screen(self, rows: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(rows passing the read checks, inside the window; rows failing a check, with their reason)."""
        return screen(rows, source=self.name, cursor=self.source.cursor, window=self.window, checks=self.checks)

    def latest(self, rows: pa.Table) -> np.ndarray | None:
        """The dedupe as row positions: each key's latest row, in key order (None: `rows` as they are)."""
        return latest_rows(rows, key=self.source.primary_key, cursor=self.source.cursor)

    def dedupe(self, rows: pa.Table) -> pa.Table:
        return dedupe_latest(rows, key=self.source.primary_key, cursor=self.source.cursor)

    def transform(self, rows: pa.Table, dims: Dimensions) -> pa.Table:
        """The row-local transforms, on the chain's engine (up to the region lookup when so declared)."""
        frames = frames_for(self.engine)
        if self.upto == "region":
            return on_table(attach_region, rows, frames, kind=self.source.kind, dims=dims)
        return transform_fact(rows, kind=self.source.kind, dims=dims, rules=self.rules, frames=frames)

    def split_region(self, rows: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(rows with a region, rows without one for the quarantine)."""
        return split_no_region(rows)

    def run(self, rows: pa.Table, dims: Dimensions) -> tuple[pa.Table, pa.Table | None]:
        """Every stage on `rows` (all versions of their keys): (the final rows, the rows that failed a
        check or found no region, or None)."""
        rows, bad = self.screen(rows)
        out, no_region = self.split_region(self.transform(self.dedupe(rows), dims))
        return out, merge_bad([bad, no_region])


@dataclass
class SourceRows:
    """One source's final rows, as an executor hands them to the sinks: in this process as one table,
    or on the Ray cluster as key-disjoint parts the driver holds only references to."""

    name: str
    schema: pa.Schema
    parts: list[Any]  # pa.Table (in this process) or a ray.ObjectRef of one (in the cluster's object store)
    rows: int
    nodes: list[str]  # the Ray nodes whose actors transformed the rows (none in-process)
    read: int = 0  # rows read in the window (for the quarantine's fraction)
    quarantined: pa.Table | None = None  # rows that failed a check, with their reason (few, or the run fails)


def log_read(name: str, plan: SourcePlan, read: int, kept: int) -> None:
    log.info("%s: read %s rows in the window from %d file(s), %d row group(s); %s after dedupe",
             name, f"{read:,}", len(plan.files), plan.row_groups, f"{kept:,}")
