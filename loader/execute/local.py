"""The in-process executor: the stage chain (loader/execute/stages.py) in this process with pyarrow.
The reader screens each row group as it reads it; the dedupe runs on the whole window; on the CPU engine
the transforms run on threads, one per core, each on a row-contiguous piece of the deduplicated rows
(pyarrow's kernels release the GIL; the DataFrame transforms otherwise use one core). No Ray start-up
cost (about 7 s on 2 cores for `ray.init` plus the first job), which dominates a small increment."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pyarrow as pa

from loader.config import LoaderConfig
from loader.execute.stages import SourceRows, StageChain, log_read
from loader.landing.plans import RunPlan
from loader.landing.quarantine import merge_bad
from loader.landing.sources import normalize_strings, read_source
from loader.retry import call_with_retries
from loader.transform.frames import EngineName
from loader.transform.lookups import Lookups

#: Fewest rows a transform thread takes: below that, thread overhead outweighs the second core.
_ROWS_PER_THREAD = 200_000


def run_local(config: LoaderConfig, plan: RunPlan, dims: Lookups,
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
        # take rejects string_view (read_source gives plain strings: a no-op); the box lets the chain
        # free the landing rows once it has taken the deduplicated ones
        box = [normalize_strings(rows)]
        del rows
        read = box[0].num_rows
        staged = chain.after_screen(box, dims, threads=pa.cpu_count(), rows_per_thread=_ROWS_PER_THREAD)
        log_read(name, source_plan, read, staged.kept)
        table = staged.rows
        yield SourceRows(name, table.schema, [table], table.num_rows, [], read=read,
                         quarantined=merge_bad([bad, staged.no_region]), tombstones=staged.tombstones)
