"""`sinks.iceberg`: Apache Iceberg tables in a catalog (pyiceberg's SQL catalog on a local SQLite file by
default, or a REST catalog), their files under the warehouse. Imports nothing heavy: the config imports it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from loader.config_parts import RetryConfig, SinkSettings, is_remote

# A namespace or catalog name the sink puts in identifiers and paths: letters, digits and _.
ICEBERG_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class IcebergSinkConfig(SinkSettings):
    """Iceberg: off by default. `catalog: sql` (the default) keeps the catalog in pyiceberg's SQL catalog,
    `uri` a SQLAlchemy URL (default: `catalog.db` in the Iceberg warehouse folder, which must then be
    local); `catalog: rest` talks to a REST catalog at `uri`, with `token` (a bearer token) or
    `credential` (OAuth2 `client_id:client_secret`) read from the environment (`${ICEBERG_TOKEN}`), never
    logged. `warehouse`: where table files go, under the loader's warehouse or an s3:// URI."""

    enabled: bool = False
    # A batch's commit is retried on fresh metadata with this policy when it lost to a concurrent writer.
    retry: RetryConfig = RetryConfig()
    catalog: Literal["sql", "rest"] = "sql"
    catalog_name: str = Field(default="loader", pattern=ICEBERG_NAME)
    uri: str | None = None
    token: str | None = Field(default=None, repr=False)
    credential: str | None = Field(default=None, repr=False)
    #: More catalog properties, given to pyiceberg as they are (a REST catalog's `warehouse` name, `scope`,
    #: `s3.*` settings). A secret among them belongs in the environment: `${NAME}`.
    properties: dict[str, str] = Field(default_factory=dict, repr=False)
    namespace: str = Field(default="loader", pattern=ICEBERG_NAME)
    warehouse: str = "iceberg"
    # Snapshots each table keeps: once it holds twice as many, the older ones are expired, so an
    # increment's cost does not grow with the table's history. Run markers survive expiry (a property).
    keep_snapshots: int = Field(default=10, ge=1)
    # Size of the data files written, in memory (files on disk are smaller): bounded files clustered by
    # key keep a merge's rewrite to the few files its keys fall in.
    target_file_mb: float = Field(default=8, gt=0)

    @model_validator(mode="after")
    def _catalog_settings(self) -> IcebergSinkConfig:
        if not self.enabled:
            return self
        if self.catalog == "rest":
            if not self.uri or not self.uri.startswith(("http://", "https://")):
                raise ValueError("catalog rest needs uri: the REST catalog's http(s):// address")
            if self.token and self.credential:
                raise ValueError("set token or credential, not both")
        else:
            if self.token or self.credential:
                raise ValueError("token and credential are for catalog rest: remove them, or set "
                                 "catalog: rest")
            if self.uri is None and is_remote(self.warehouse):
                raise ValueError(
                    f"the default catalog file lies in the warehouse, and "
                    f"{self.warehouse.split('://')[0]}:// cannot hold a SQLite file: set uri to a local one "
                    "(sqlite:////var/lib/loader/iceberg.db) or use catalog: rest")
            if self.uri is not None and not self.uri.startswith("sqlite:///") and "://" not in self.uri:
                raise ValueError("uri should be a SQLAlchemy URL, e.g. sqlite:////var/lib/loader/iceberg.db")
        return self
