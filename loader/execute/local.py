"""The in-process executor: the stage chain (loader/execute/stages.py) in this process with pyarrow.
The reader screens each row group as it reads it; the dedupe runs on the whole window; on the CPU engine
the transforms run on threads, one per core, each on a row-contiguous piece of the deduplicated rows
(pyarrow's kernels release the GIL; the DataFrame transforms otherwise use one core). No Ray start-up
cost (about 7 s on 2 cores for `ray.init` plus the first job), which dominates a small increment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pyarrow as pa

from loader.config import LoaderConfig
from loader.execute.stages import SourceRows, StageChain, log_read
from loader.landing.plans import RunPlan
from loader.landing.quarantine import merge_bad
from loader.landing.sources import normalize_strings, read_source
from loader.retry import call_with_retries
from loader.transform.dimensions import Dimensions
from loader.transform.frames import EngineName

#: Fewest rows a transform thread takes: below that, thread overhead outweighs the second core.
_ROWS_PER_THREAD = 200_000


def run_local(config: LoaderConfig, plan: RunPlan, dims: Dimensions,
              engine: EngineName) -> Iterator[SourceRows]:
    for name, source_plan in plan.sources.items():
        if source_plan.is_empty:
            continue
        chain = StageChain.for_source(config, name, source_plan.window, engine=engine)
        rows, bad = call_with_retries(  # screened: checked and filtered to the window, row group by row group
            f"reading {name}", config.source_retry,
            partial(read_source, source_plan, cursor=chain.source.cursor, checks=chain.checks,
                    deletes=chain.source.deletes.column if chain.source.deletes else None),
        )
        rows = normalize_strings(rows)  # take rejects string_view (read_source gives plain strings: a no-op)
        read = rows.num_rows
        # Upstream deletes: the keys whose newest version is a tombstone leave the transforms here and
        # join the transformed rows at the end (loader/execute/stages.py).
        order, dead_order = chain.split_latest(rows, chain.latest(rows))
        dead = None if dead_order is None else chain.tombstones(rows.take(pa.array(dead_order)), dims)
        rows = chain.live_columns(rows)
        live = rows.num_rows if order is None else len(order)
        log_read(name, source_plan, read, live + (0 if dead is None else dead.num_rows))
        # The transforms are row-local and the parts go back together in order: the same rows, in key order.
        parts = 1 if engine != "cpu" else max(1, min(pa.cpu_count(), live // _ROWS_PER_THREAD))
        with ThreadPoolExecutor(max_workers=parts) as pool:
            run = pool.map if parts > 1 else map  # one part (and the GPU): on this thread
            pieces = _latest_pieces(rows, order, parts, run)
            # The raw rows go before the transforms add columns: one full copy of the window at a time.
            del rows, order
            transformed = list(run(partial(chain.transform, dims=dims), pieces))
        del pieces
        # One chunk: the sinks take rows by position (Parquet's files), which gathers every chunk each time.
        whole = transformed[0] if parts == 1 else pa.concat_tables(transformed).combine_chunks()
        table, no_region = chain.split_region(whole)
        del transformed, whole
        table = chain.join(table, dead)
        yield SourceRows(name, table.schema, [table], table.num_rows, [], read=read,
                         quarantined=merge_bad([bad, no_region]),
                         tombstones=0 if dead is None else dead.num_rows)


def _latest_pieces(rows: pa.Table, order: Any, parts: int,
                   run: Callable[..., Iterator[pa.Table]]) -> list[pa.Table]:
    """The deduplicated rows (`rows` taken at `order`, in key order; `rows` itself when None) in `parts`
    row-contiguous pieces, taken by `run` (a pool's map: in parallel)."""
    count = rows.num_rows if order is None else len(order)
    bounds = [count * i // parts for i in range(parts + 1)]

    def piece(i: int) -> pa.Table:
        low, high = bounds[i], bounds[i + 1]
        return rows.slice(low, high - low) if order is None else rows.take(pa.array(order[low:high]))

    return list(run(piece, range(parts)))
