"""Sinks: each writes one table's rows of one run and commits idempotently, keyed by (pipeline, table,
run number), so replaying a run after a crash never duplicates a row.

A sink is a folder of this package, each of the same shape: `config.py` (its block, `sinks.<name>`),
`capabilities.py` (what it is, as data), `facts.py` (fact table writes), `dimensions.py` (dimension
tables), `read_back.py` (what `loader verify` reads), `sink.py` (the class joining them, per the
contract in base.py). loader/sinks/registry.py is the one list of sinks: the config, run, backfill,
doctor and verify all find them there, and adding a sink is its folder plus one line of it. The shared
conformance suite (tests/support/conformance.py) is what proves a folder complete.

Importing this package imports no sink and no driver (the config imports the registry through it); a
sink's modules are imported when a sink of it is built.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from loader.sinks.registry import REGISTRY

if TYPE_CHECKING:
    from loader.config import LoaderConfig
    from loader.sinks.base import Sink


def sink_class(name: str) -> type[Sink[Any]]:
    """The class of the sink called `name` (its module imported now)."""
    cls: type[Sink[Any]] = REGISTRY[name].sink_class()
    return cls


def enabled_names(config: LoaderConfig) -> list[str]:
    """The sinks the config enables (`sinks.<name>.enabled`), in registry order; imports no sink."""
    return [name for name in REGISTRY if config.sinks.block(name).enabled]


def enabled_sinks(config: LoaderConfig, *, only: Collection[str] | None = None) -> list[Sink[Any]]:
    """A sink of each enabled kind (of those in `only`, when given), in registry order, each built from
    its own config block and what every sink shares (`SinkContext`)."""
    from loader.sinks.base import SinkContext

    context = SinkContext(pipeline=config.pipeline, warehouse=config.warehouse)
    return [sink_class(name)(config.sinks.block(name), context)  # type: ignore[call-arg]
            for name in enabled_names(config) if only is None or name in only]


__all__ = ["REGISTRY", "enabled_names", "enabled_sinks", "sink_class"]
