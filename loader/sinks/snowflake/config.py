"""`sinks.snowflake`: tables in a Snowflake database, loaded through a stage and one MERGE per batch."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from loader.config_parts import RetryConfig, SinkSettings, parse_duration

# A Snowflake identifier the sink may put in SQL (always quoted): letters, digits, _ and $.
SNOWFLAKE_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]*$"


class SnowflakeSinkConfig(SinkSettings):
    """Snowflake: off by default. Secrets come from the environment (`${SNOWFLAKE_PASSWORD}`,
    `${SNOWFLAKE_PRIVATE_KEY}`) and are never logged; `host`/`port`/`protocol` point the connector at an
    emulator (fakesnow) instead."""

    enabled: bool = False
    # Each step (connect, PUT+COPY, the MERGE transaction) is retried on its own with this policy.
    retry: RetryConfig = RetryConfig()
    account: str = ""
    user: str = ""
    password: str | None = Field(default=None, repr=False)
    # Key-pair authentication: a PEM private key from a file or inline (from an environment variable).
    private_key_file: str | None = None
    private_key: str | None = Field(default=None, repr=False)
    private_key_passphrase: str | None = Field(default=None, repr=False)
    role: str | None = Field(default=None, pattern=SNOWFLAKE_IDENTIFIER)
    warehouse: str | None = Field(default=None, pattern=SNOWFLAKE_IDENTIFIER)
    database: str = Field(default="LOADER", pattern=SNOWFLAKE_IDENTIFIER)
    schema_: str = Field(default="PUBLIC", alias="schema", pattern=SNOWFLAKE_IDENTIFIER)
    stage: str = Field(default="LOADER_STAGE", pattern=SNOWFLAKE_IDENTIFIER)
    ledger_table: str = Field(default="LOADER_LEDGER", pattern=SNOWFLAKE_IDENTIFIER)
    # New target tables get CLUSTER BY (REGION): queries filtering one region prune micro-partitions.
    cluster_by_region: bool = True
    host: str | None = None
    port: int | None = Field(default=None, gt=0, lt=65536)
    protocol: Literal["https", "http"] | None = None
    login_timeout: timedelta = timedelta(seconds=30)
    network_timeout: timedelta = timedelta(seconds=60)

    _durations = field_validator("login_timeout", "network_timeout", mode="before")(parse_duration)

    @model_validator(mode="after")
    def _credentials(self) -> SnowflakeSinkConfig:
        if self.enabled:
            missing = [name for name in ("account", "user") if not getattr(self, name)]
            if missing:
                raise ValueError(f"set {' and '.join(missing)} (or disable the sink)")
            given = [n for n in ("password", "private_key_file", "private_key") if getattr(self, n)]
            if len(given) != 1:
                raise ValueError(
                    "set exactly one of password (as ${SNOWFLAKE_PASSWORD}), private_key_file, "
                    "or private_key "
                    f"(as ${{SNOWFLAKE_PRIVATE_KEY}}); given: {', '.join(given) or 'none'}"
                )
        return self
