"""The stage chain, assembled once: what becomes of a source's landing rows on their way to the sinks.

screen -> dedupe -> (tombstones apart) -> transform -> region split -> (tombstones back)

How it works, and why: docs/design.md, "The stage chain"."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loader.config import DeletesConfig, LoaderConfig, SourceConfig
from loader.errors import BadSourceData
from loader.kinds import UNKNOWN_REGION, fact_kind
from loader.landing.plans import SourcePlan
from loader.landing.quarantine import merge_bad, split_no_region
from loader.landing.sources import Checks, screen
from loader.sinks.base import DELETED
from loader.transform.facts import attach_region, transform_fact
from loader.transform.frames import EngineName, frames_for, on_table
from loader.transform.lookups import Lookups
from loader.transform.region_rules import RegionRule, rules_of
from loader.transform.tables import latest_rows
from state import Window

log = logging.getLogger(__name__)

#: How far a chain goes: the whole transform, or up to the region lookup (no enrichment, no rules).
Upto = Literal["rules", "region"]


def read_checks(source: SourceConfig, future_tolerance: timedelta) -> Checks:
    """The read checks of a source's rows, `now` taken once for the whole read."""
    return Checks(key=source.primary_key, now=datetime.now(UTC), tolerance_s=future_tolerance.total_seconds())


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
        return cls(name, source, window, read_checks(source, config.quarantine.future_tolerance),
                   rules_of(config.regions), engine, upto)

    # ----------------------------------------------------------------------------------- the stages

    def screen(self, rows: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(rows passing the read checks, inside the window; rows failing a check, with their reason)."""
        return screen(rows, source=self.name, cursor=self.source.cursor, window=self.window,
                      checks=self.checks)

    def latest(self, rows: pa.Table) -> np.ndarray | None:
        """The dedupe as row positions: each key's latest row, in key order (None: `rows` as they are);
        a tombstone wins a tie with a live version at its cursor (the delete rule, loader/sinks/base.py)."""
        return latest_rows(rows, key=self.source.primary_key, cursor=self.source.cursor,
                           tombstones=self.tombstone_mask(rows))

    def transform(self, rows: pa.Table, dims: Lookups) -> pa.Table:
        """The row-local transforms, on the chain's engine (up to the region lookup when so declared)."""
        frames = frames_for(self.engine)
        if self.upto == "region":
            return on_table(attach_region, rows, frames, kind=self.source.kind, dims=dims)
        return transform_fact(rows, kind=self.source.kind, dims=dims, rules=self.rules, frames=frames)

    def split_region(self, rows: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(rows with a region, rows without one for the quarantine)."""
        return split_no_region(rows)

    # ---------------------------------------------------------------- upstream deletes (`deletes`)

    def tombstone_mask(self, rows: pa.Table) -> np.ndarray | None:
        """Per row, whether it is a tombstone (its deletes column holds one of the values; null: a live
        row), or None when the source has no `deletes`."""
        deletes = self.source.deletes
        if deletes is None:
            return None
        if deletes.column not in rows.column_names:
            raise BadSourceData(
                f"rows of source {self.name!r} have no column {deletes.column!r} "
                f"(sources.{self.name}.deletes.column): add it to the landing files, or fix or remove the "
                f"deletes block in the config"
            )
        column = rows[deletes.column]
        found = pc.is_in(column, value_set=_value_set(deletes, column.type, self.name))
        return np.asarray(pc.fill_null(found, False).to_numpy(zero_copy_only=False), dtype=bool)

    def split_latest(self, rows: pa.Table,
                     order: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The dedupe's row positions (`order`, as `latest` gives them) split into (the live rows', the
        tombstones'), both in key order; (order, None) when the source has no deletes or no row of
        `rows` is a tombstone."""
        mask = self.tombstone_mask(rows)
        if mask is None or not mask.any():
            return order, None
        positions = np.arange(rows.num_rows) if order is None else order
        dead = mask[positions]
        return positions[~dead], positions[dead]

    def live_columns(self, rows: pa.Table) -> pa.Table:
        """`rows` without the deletes column (landing-zone bookkeeping: no sink gets it)."""
        deletes = self.source.deletes
        if deletes is None or deletes.column not in rows.column_names:
            return rows
        return rows.drop_columns([deletes.column])

    def tombstones(self, rows: pa.Table, dims: Lookups) -> pa.Table:
        """Tombstone rows as the sinks get them: the key columns, the cursor and `region`, found by the
        region lookup from the tombstone's own lookup column when it has one (CDC tools send the
        before-image), else UNKNOWN. No enrichment and no rules; never quarantined for no region."""
        columns = list(dict.fromkeys([*self.source.primary_key, self.source.cursor]))
        lookup = fact_kind(self.source.kind).lookup.fact_key
        if rows.num_rows and lookup in rows.column_names and rows[lookup].null_count < rows.num_rows:
            placed = on_table(attach_region, rows.select(list(dict.fromkeys([*columns, lookup]))),
                              frames_for(self.engine), kind=self.source.kind, dims=dims)
            region = placed["region"].cast(pa.string())
        else:
            region = pa.array([UNKNOWN_REGION] * rows.num_rows, pa.string())
        return rows.select(columns).append_column("region", region)

    def join(self, live: pa.Table, tombstones: pa.Table | None) -> pa.Table:
        """The transformed live rows and the tombstones as one table, in key order, with `_deleted`
        (false for live rows) and nulls where tombstones lack a column. Without deletes: `live`."""
        if self.source.deletes is None:
            return live
        live = self.live_columns(live)
        if DELETED in live.column_names:  # a landing column of that name is replaced by the loader's
            live = live.drop_columns([DELETED])
        live = live.append_column(pa.field(DELETED, pa.bool_()),
                                  pa.array(np.zeros(live.num_rows, dtype=bool)))
        if tombstones is None or tombstones.num_rows == 0:
            return live
        schema = pa.schema([field.with_nullable(True) for field in live.schema],
                           metadata=live.schema.metadata)
        count = tombstones.num_rows
        dead = pa.Table.from_arrays([
            pa.array(np.ones(count, dtype=bool)) if field.name == DELETED
            else tombstones[field.name].cast(field.type) if field.name in tombstones.column_names
            else pa.nulls(count, field.type)
            for field in schema
        ], schema=schema)
        both = pa.concat_tables([live.cast(schema), dead])
        if self.upto == "region":  # verify's chain: it compares order-independent checksums
            return both
        key = list(self.source.primary_key)
        return both.take(pc.sort_indices(both.select(key), sort_keys=[(k, "ascending") for k in key]))

    def output_schema(self, landing: pa.Schema) -> pa.Schema:
        """The schema of the rows this chain gives the sinks for landing files of schema `landing` (the
        transform's, the deletes column dropped, `_deleted` last where the source has deletes)."""
        from loader.transform.facts import output_schema

        live = self.live_columns(landing.empty_table()).schema
        out = output_schema(self.source.kind, live)
        if self.source.deletes is None:
            return out
        if DELETED in out.names:
            out = out.remove(out.get_field_index(DELETED))
        return out.append(pa.field(DELETED, pa.bool_()))

    def run(self, rows: pa.Table, dims: Lookups) -> tuple[pa.Table, pa.Table | None]:
        """Every stage on `rows` (all versions of their keys): (the final rows, the rows that failed a
        check or found no region, or None)."""
        screened, bad = self.screen(rows)
        del rows
        box = [screened]
        del screened  # the box holds the only reference: `after_screen` frees the rows when it may
        staged = self.after_screen(box, dims)
        return staged.rows, merge_bad([bad, staged.no_region])

    def after_screen(self, box: list[pa.Table], dims: Lookups, *, threads: int = 1,
                     rows_per_thread: int = 200_000) -> Staged:
        """Every stage after `screen`, in the chain's order (the one place that spells it out). `box`
        holds the screened rows and is emptied: the landing rows are let go of once the deduplicated
        ones are taken, so one full copy of the window is held at a time. On the CPU the transform runs
        on up to `threads` row-contiguous pieces (at least `rows_per_thread` rows each) on threads:
        pyarrow's kernels release the GIL, and the pieces go back together in key order."""
        landing = box.pop()
        # Upstream deletes: the keys whose newest version is a tombstone leave the transforms here and
        # join the transformed rows at the end.
        order, dead_order = self.split_latest(landing, self.latest(landing))
        dead = None if dead_order is None else self.tombstones(landing.take(pa.array(dead_order)), dims)
        live = self.live_columns(landing)
        del landing
        count = live.num_rows if order is None else len(order)
        parts = 1 if self.engine != "cpu" else max(1, min(threads, count // rows_per_thread))
        with ThreadPoolExecutor(max_workers=parts) as pool:
            run = pool.map if parts > 1 else map  # one part (and the GPU): on this thread
            pieces = latest_pieces(live, order, parts, run)
            del live, order
            transformed = list(run(partial(self.transform, dims=dims), pieces))
        del pieces
        # One chunk: the sinks take rows by position (Parquet's files), which gathers every chunk each time.
        whole = transformed[0] if parts == 1 else pa.concat_tables(transformed).combine_chunks()
        del transformed
        out, no_region = self.split_region(whole)
        del whole
        tombstones = 0 if dead is None else dead.num_rows
        return Staged(self.join(out, dead), no_region, kept=count + tombstones, tombstones=tombstones)


@dataclass
class Staged:
    """What the stages after `screen` made of a source's rows: the rows for the sinks, the rows the
    region lookup found no region for (or None), the rows kept by the dedupe, the tombstones among them."""

    rows: pa.Table
    no_region: pa.Table | None
    kept: int
    tombstones: int


def latest_pieces(rows: pa.Table, order: Any, parts: int,
                  run: Callable[..., Iterator[pa.Table]]) -> list[pa.Table]:
    """The deduplicated rows (`rows` taken at `order`, in key order; `rows` itself when None) in `parts`
    row-contiguous pieces, taken by `run` (a pool's map: in parallel)."""
    count = rows.num_rows if order is None else len(order)
    bounds = [count * i // parts for i in range(parts + 1)]

    def piece(i: int) -> pa.Table:
        low, high = bounds[i], bounds[i + 1]
        return rows.slice(low, high - low) if order is None else rows.take(pa.array(order[low:high]))

    return list(run(piece, range(parts)))


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
    tombstones: int = 0  # of `rows`, the tombstones (`_deleted` true): keys deleted upstream


def _value_set(deletes: DeletesConfig, kind: pa.DataType, source: str) -> pa.Array:
    """`deletes.values` as an array of the deletes column's type; BadSourceData naming the value that
    has no such form (a string value for a boolean column)."""
    values = []
    for value in deletes.values:
        try:
            values.append(pa.scalar(value).cast(kind))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
            raise BadSourceData(
                f"sources.{source}.deletes.values: {value!r} is no value of column {deletes.column!r}, "
                f"which is {kind} in the landing files: fix the values in the config ({error})"
            ) from error
    return pa.array([v.as_py() for v in values], kind)


def log_read(name: str, plan: SourcePlan, read: int, kept: int) -> None:
    log.info("%s: read %s rows in the window from %d file(s), %d row group(s); %s after dedupe",
             name, f"{read:,}", len(plan.files), plan.row_groups, f"{kept:,}")
