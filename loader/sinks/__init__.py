"""Sinks: each writes one table's rows of one run and commits idempotently, keyed by
(pipeline, table, run number), so replaying a run after a crash never duplicates a row."""

from __future__ import annotations

from loader.config import LoaderConfig
from loader.sinks.base import Sink, SinkWrite, TableBatch


def build_sinks(config: LoaderConfig) -> list[Sink]:
    sinks: list[Sink] = []
    if config.sinks.parquet.enabled:
        from loader.sinks.parquet import ParquetSink

        sinks.append(ParquetSink(config))
    if config.sinks.delta.enabled:
        from loader.sinks.delta import DeltaSink

        sinks.append(DeltaSink(config))
    if config.sinks.snowflake.enabled:
        from loader.sinks.snowflake import SnowflakeSink

        sinks.append(SnowflakeSink(config))
    return sinks


__all__ = ["Sink", "SinkWrite", "TableBatch", "build_sinks"]
