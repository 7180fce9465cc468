"""The one list of sinks. Each is a folder of loader/sinks/ of the same shape (config.py, capabilities.py,
facts.py, dimensions.py, read_back.py, sink.py); adding one is its folder plus its line here.

The config (loader/config.py) builds `sinks.<name>` from this list, so this module imports nothing but
the sinks' config blocks, and those only when asked: the config layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loader.config_parts import SinkSettings


@dataclass(frozen=True)
class Entry:
    package: str  # the sink's folder
    settings: str  # the class of its config block, `sinks.<name>`, in the folder's config.py
    sink: str  # the sink's class (loader/sinks/base.py: `Sink`), in the folder's sink.py

    def settings_class(self) -> type[SinkSettings]:
        cls: type[SinkSettings] = getattr(import_module(f"{self.package}.config"), self.settings)
        return cls

    def sink_class(self) -> Any:
        return getattr(import_module(f"{self.package}.sink"), self.sink)


#: name -> entry; the order is the order sinks are built, written and reported in.
REGISTRY: dict[str, Entry] = {
    "parquet": Entry("loader.sinks.parquet", "ParquetSinkConfig", "ParquetSink"),
    "delta": Entry("loader.sinks.delta", "DeltaSinkConfig", "DeltaSink"),
    "snowflake": Entry("loader.sinks.snowflake", "SnowflakeSinkConfig", "SnowflakeSink"),
    "iceberg": Entry("loader.sinks.iceberg", "IcebergSinkConfig", "IcebergSink"),
}


def settings_classes() -> dict[str, type[SinkSettings]]:
    """Each sink's config block class, in registry order (imports the config modules only)."""
    return {name: entry.settings_class() for name, entry in REGISTRY.items()}
