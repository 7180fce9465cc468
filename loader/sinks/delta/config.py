"""`sinks.delta`: Delta Lake tables under the warehouse."""

from __future__ import annotations

from pydantic import Field

from loader.config_parts import SinkSettings


class DeltaSinkConfig(SinkSettings):
    path: str = "delta"
    # Size of the data files written: bounded files, clustered by key, keep scoped merges cheap.
    target_file_mb: float = Field(default=8, gt=0)
