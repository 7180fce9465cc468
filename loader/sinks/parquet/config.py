"""`sinks.parquet`: partitioned Parquet files under the warehouse."""

from __future__ import annotations

from typing import Literal

from loader.config_parts import SinkSettings


class ParquetSinkConfig(SinkSettings):
    path: str = "parquet"
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
