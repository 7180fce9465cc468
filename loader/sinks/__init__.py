"""Sinks: each writes one table's rows of one run and commits idempotently, keyed by (pipeline, table,
run number), so replaying a run after a crash never duplicates a row.

The registry below is the one list of sinks: run, backfill, doctor and verify all build their sinks
through it. Adding a sink is a module implementing `Sink` (loader/sinks/base.py), its entry here, its
config block (`sinks.<name>` in loader/config.py) and its run of the conformance suite. A sink's module
is imported only when a sink of it is built (its driver, later still, when it is used), so importing
this package costs no driver.
"""

from __future__ import annotations

from collections.abc import Collection
from importlib import import_module
from typing import Any

from loader.config import LoaderConfig
from loader.sinks.base import Capabilities, Sink, SinkWrite, TableBatch

#: name -> "module:class" of the sink; the order is the order sinks are built, written and reported in.
REGISTRY: dict[str, str] = {
    "parquet": "loader.sinks.parquet:ParquetSink",
    "delta": "loader.sinks.delta:DeltaSink",
    "snowflake": "loader.sinks.snowflake:SnowflakeSink",
}


def sink_class(name: str) -> type[Sink[Any]]:
    """The class of the sink called `name` (its module imported now)."""
    module, _, attribute = REGISTRY[name].partition(":")
    cls: type[Sink[Any]] = getattr(import_module(module), attribute)
    return cls


def enabled_names(config: LoaderConfig) -> list[str]:
    """The sinks the config enables (`sinks.<name>.enabled`), in registry order; imports no sink."""
    return [name for name in REGISTRY if getattr(config.sinks, name).enabled]


def enabled_sinks(config: LoaderConfig, *, only: Collection[str] | None = None) -> list[Sink[Any]]:
    """A sink of each enabled kind (of those in `only`, when given), in registry order."""
    # Every sink class is built from the config alone (the protocol does not spell out constructors).
    return [sink_class(name)(config) for name in enabled_names(config) if only is None or name in only]  # type: ignore[call-arg]


__all__ = ["REGISTRY", "Capabilities", "Sink", "SinkWrite", "TableBatch", "enabled_names",
           "enabled_sinks", "sink_class"]
