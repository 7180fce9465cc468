"""The Iceberg catalog, its tables and the run markers.

- The catalog: pyiceberg's SQL catalog (a local SQLite file by default, `catalog.db` in the Iceberg
  warehouse folder) or a REST catalog (`uri`, a token or OAuth2 credential from the environment). Its
  faults become loader errors naming the catalog and the fix (`errors`): unreachable is transient
  (SinkUnavailable), refused credentials and refused changes are terminal (SinkRejected).
- Tables: `<namespace>.<table>`; a fact table partitioned by identity(region), made with manifest merging
  on (a commit's cost then follows the files it touches, not the number of commits before it) and the
  key it is merged on as a property (`loader.key`), checked against the config's on every run.
- Markers: a run's commit sets the table property `loader.run.<pipeline>/<table>` (a backfill chunk:
  `.../backfill-<run>`, its own) to its run number in the same catalog commit as its rows, and carries
  pipeline, table and run in its snapshot summary. The property survives snapshot expiry (by the loader
  or by others), so `landed` can always tell a landed run; where it cannot (the property removed or
  lowered while snapshots of later runs remain), it refuses to guess.
- `Tables`: what the sink's write functions (facts.py, tombstones.py, dimensions.py) are given of it.
- `probe`: the catalog reachable, its file writable, for `loader doctor`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
from pyiceberg.exceptions import (
    AuthorizationExpiredError,
    BadRequestError,
    CommitFailedException,
    ForbiddenError,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    OAuthError,
    RESTError,
    ServerError,
    ServiceUnavailableError,
    TableAlreadyExistsError,
    UnauthorizedError,
    ValidationError,
)
from pyiceberg.io.pyarrow import schema_to_pyarrow

from loader.config_parts import is_remote
from loader.errors import ConfigError, LoaderError, SinkRejected, SinkUnavailable
from loader.sinks.base import TableBatch
from loader.sinks.iceberg.config import IcebergSinkConfig
from loader.storage import s3_endpoint, short_error, storage_error, unwritable

#: The table property holding the key a fact table is merged on (comma-separated columns).
KEY_PROPERTY = "loader.key"
#: Prefix of the run marker properties: `loader.run.<pipeline>/<table>[/backfill-<run>]`.
MARKER_PREFIX = "loader.run."
#: The snapshot summary keys every loader commit carries.
SUMMARY_PIPELINE, SUMMARY_TABLE, SUMMARY_RUN, SUMMARY_MARKER = (
    "loader.pipeline", "loader.table", "loader.run", "loader.marker")
#: Properties of every table the sink makes: manifests merged on commit (planning reads a bounded
#: number of them), and copy-on-write spelled out (the sink never writes delete files).
TABLE_PROPERTIES = {"commit.manifest-merge.enabled": "true", "write.delete.mode": "copy-on-write",
                    "write.update.mode": "copy-on-write", "write.merge.mode": "copy-on-write"}
#: The fix a changed column type's refusal names (loader/sinks/schema_check.py: `refuse_type_changes`).
TYPE_FIX = ("Cast the column in the transform back to the stored type, or move the table away (drop or "
            "rename it in the catalog) to let the loader recreate it")


def marker_id(pipeline: str, table: str, *, backfill_run: int | None = None) -> str:
    """Whose runs a marker counts: an incremental table's runs land in order (one watermark), a backfill
    chunk out of order (a marker of its own), as Delta's app ids."""
    return f"{pipeline}/{table}" if backfill_run is None else f"{pipeline}/{table}/backfill-{backfill_run}"


def batch_marker(batch: TableBatch) -> str:
    """The marker a batch's run lands under (a backfill chunk's of its own)."""
    return marker_id(batch.pipeline, batch.table,
                     backfill_run=batch.run_number if batch.mode == "backfill" else None)


def marker_property(marker: str) -> str:
    return MARKER_PREFIX + marker


def summary_of(pipeline: str, table: str, run_number: int, marker: str) -> dict[str, str]:
    """What a run's commit carries in its snapshot summary."""
    return {SUMMARY_PIPELINE: pipeline, SUMMARY_TABLE: table, SUMMARY_RUN: str(run_number),
            SUMMARY_MARKER: marker}


def landed(properties: dict[str, str], summaries: list[dict[str, str]], marker: str, run_number: int,
           *, replay: bool, where: str) -> bool:
    """Whether run `run_number` of `marker` landed in a table with these properties and these retained
    snapshot summaries. The property is the proof (set in the run's own commit, kept through expiry); a
    retained summary carrying the run is one too. A replay that finds the property missing or behind a
    retained snapshot of a later run of the same marker cannot tell whether its own snapshot was expired
    with the property removed: it refuses (SinkRejected) rather than risk writing twice."""
    text = properties.get(marker_property(marker))
    value = int(text) if text is not None and text.lstrip("-").isdigit() else None
    if value is not None and value >= run_number:
        return True
    runs = [int(s[SUMMARY_RUN]) for s in summaries
            if s.get(SUMMARY_MARKER) == marker and s.get(SUMMARY_RUN, "").isdigit()]
    if run_number in runs:
        return True
    if replay and runs and (value is None or value < max(runs)):
        raise SinkRejected(
            f"{where}: cannot tell whether run {run_number} landed: its marker property "
            f"{marker_property(marker)} is {'missing' if text is None else repr(text)} while a snapshot of "
            f"run {max(runs)} remains (someone removed or changed the property). Set it back to the last run "
            f"that landed here (`loader runs` lists them; with pyiceberg: table.transaction().set_properties"
            f"({{{marker_property(marker)!r}: '<run>'}})), then run again")
    return False


def sqlite_file(uri: str) -> str | None:
    """The file of a sqlite:/// URL (None: another database, or one in memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else path


class Catalogs:
    """Opens the configured catalog once per process (cached; `close` forgets it), and says where."""

    def __init__(self, settings: IcebergSinkConfig, root: str) -> None:
        self.settings = settings
        self.root = root  # the warehouse location of the tables' files
        if settings.catalog == "sql":
            default = None if is_remote(root) else f"sqlite:///{root.rstrip('/')}/catalog.db"
            uri = settings.uri or default
            if uri is None:  # an s3:// warehouse reached through the loader's own (relative `warehouse`)
                raise ConfigError(
                    f"sinks.iceberg: the default catalog file would lie in {root}, which cannot hold a "
                    "SQLite file: set sinks.iceberg.uri to a local one "
                    "(sqlite:////var/lib/loader/iceberg.db) or use catalog: rest")
            path = sqlite_file(uri)
            if path is not None and not os.path.isabs(path) and not is_remote(root):
                uri = f"sqlite:///{root.rstrip('/')}/{path}"  # relative: under the Iceberg warehouse folder
            self.uri = uri
        else:
            assert settings.uri is not None  # the config requires it
            self.uri = settings.uri
        self.name = f"{settings.catalog} catalog {settings.catalog_name!r} ({self._shown_uri()})"
        self._catalog: Any = None

    def _shown_uri(self) -> str:
        parts = urlsplit(self.uri)
        if parts.password:  # the redaction masks it too; a message needs no user info at all
            return self.uri.replace(f"{parts.username}:{parts.password}@", "")
        return self.uri

    def __getstate__(self) -> dict[str, Any]:  # travels to Ray workers; the catalog is opened there
        return {**self.__dict__, "_catalog": None}

    def properties(self) -> dict[str, str]:
        warehouse = self.root if is_remote(self.root) else "file://" + self.root
        props = {**self.settings.properties, "uri": self.uri, "warehouse": warehouse}
        if self.settings.token:
            props["token"] = self.settings.token
        if self.settings.credential:
            props["credential"] = self.settings.credential
        if is_remote(self.root):
            props.update(_s3_properties(props))
        return props

    def get(self) -> Any:
        """The catalog, opened now if not yet (a SQLite file's folder made first)."""
        if self._catalog is None:
            with self.errors():
                if self.settings.catalog == "sql":
                    from pyiceberg.catalog.sql import SqlCatalog

                    path = sqlite_file(self.uri)
                    if path is not None:
                        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    self._catalog = SqlCatalog(self.settings.catalog_name, **self.properties())
                else:
                    from pyiceberg.catalog.rest import RestCatalog

                    self._refuse_unreachable()
                    self._catalog = RestCatalog(self.settings.catalog_name, **self.properties())
        return self._catalog

    def forget(self) -> None:
        self._catalog = None

    def _refuse_unreachable(self) -> None:
        """A REST catalog whose port does not answer: said in seconds (pyiceberg's HTTP has no timeout)."""
        from loader.net import unreachable

        parts = urlsplit(self.uri)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        problem = unreachable(parts.hostname or "", port)
        if problem is not None:
            raise SinkUnavailable(f"Iceberg {self.name}: {problem}. Check sinks.iceberg.uri and that the "
                                  "catalog is running, then run again")

    @contextmanager
    def errors(self, table: str | None = None) -> Iterator[None]:
        """pyiceberg's, the catalog's and the file system's errors -> loader errors naming the catalog (and
        the table) and the fix."""
        where = f"Iceberg {self.name}" + (f", table {table}" if table else "")
        try:
            yield
        except LoaderError:
            raise
        except (UnauthorizedError, ForbiddenError, OAuthError, AuthorizationExpiredError) as error:
            raise SinkRejected(f"{where} refused the credentials: {short_error(error)}. Set "
                               "sinks.iceberg.token (or credential) from the environment, e.g. token: "
                               "${ICEBERG_TOKEN}, then run again") from error
        except (ValidationError, BadRequestError, NoSuchNamespaceError) as error:
            raise SinkRejected(f"{where} refused the change: {short_error(error)}. Fix the table or the "
                               "config, then run again: the run replays") from error
        except CommitFailedException as error:
            raise SinkUnavailable(f"{where}: commit failed: {short_error(error)}. Run again: the run replays "
                                  "safely") from error
        except (ServiceUnavailableError, ServerError, RESTError) as error:
            raise SinkUnavailable(f"{where} failed: {short_error(error)}. Check the catalog, then run again")\
                from error
        except pa.ArrowInvalid as error:
            raise SinkRejected(f"{where}: the rows do not fit the table: {short_error(error)}. Make the "
                               "table's schema match the source (or move the table away), then run again") \
                from error
        except OSError as error:
            if _is_network(error):
                raise SinkUnavailable(f"{where} unreachable: {short_error(error)}. Check sinks.iceberg.uri "
                                      "and that the catalog is running, then run again") from error
            raise storage_error(error, self.root, side="sink", doing="Iceberg write to") from error
        except Exception as error:
            if _is_database_error(error):
                raise SinkUnavailable(f"{where}: the catalog database failed: {short_error(error)}. Check "
                                      "sinks.iceberg.uri (the file or server, and its permissions), then run "
                                      "again") from error
            raise


def _is_network(error: BaseException) -> bool:
    try:
        import requests

        return isinstance(error, requests.exceptions.RequestException)
    except ImportError:  # pragma: no cover - requests comes with pyiceberg
        return False


def _is_database_error(error: BaseException) -> bool:
    try:
        from sqlalchemy.exc import SQLAlchemyError

        return isinstance(error, SQLAlchemyError)
    except ImportError:  # pragma: no cover - SQLAlchemy comes with pyiceberg[sql-sqlite]
        return False


def _s3_properties(given: dict[str, str]) -> dict[str, str]:
    """pyiceberg's S3 settings from the environment pyarrow uses (an endpoint for emulators), unless set."""
    found: dict[str, str] = {}
    endpoint = s3_endpoint()
    if endpoint and "s3.endpoint" not in given:
        found["s3.endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and "s3.region" not in given:
        found["s3.region"] = region
    return found


def load(catalog: Any, namespace: str, table: str) -> Any:
    """The table, or None where it does not exist."""
    try:
        return catalog.load_table((namespace, table))
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def create(catalog: Any, namespace: str, table: str, schema: pa.Schema, *, partitioned: bool,
           key: tuple[str, ...] | None) -> Any:
    """Make the table (and its namespace): `schema`'s columns, all optional; partitioned by identity(region)
    where asked. A table made meanwhile by another writer is loaded instead."""
    with suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(namespace)
    properties = dict(TABLE_PROPERTIES)
    if key is not None:
        properties[KEY_PROPERTY] = ",".join(key)
    optional = pa.schema([f.with_nullable(True) for f in storable(schema)])
    try:
        with catalog.create_table_transaction((namespace, table), schema=optional,
                                              properties=properties) as tx:
            if partitioned:
                with tx.update_spec() as spec:
                    spec.add_identity("region")
    except TableAlreadyExistsError:
        pass
    return catalog.load_table((namespace, table))


def partition_columns(table: Any) -> list[str]:
    """The table's partition spec as `transform(column)` texts."""
    schema = table.schema()
    return [f"{field.transform}({schema.find_column_name(field.source_id)})" for field in table.spec().fields]


def refuse_other_layout(table: Any, where: str, *, partitioned: bool, key: tuple[str, ...] | None) -> None:
    """A table whose partition spec or merge key differs from what this sink writes: refused, naming both."""
    want = ["identity(region)"] if partitioned else []
    have = partition_columns(table)
    if have != want:
        raise SinkRejected(
            f"{where} is partitioned by [{', '.join(have) or 'nothing'}], the loader writes it partitioned "
            f"by [{', '.join(want) or 'nothing'}]. Move the table away (drop or rename it in the catalog) to "
            "let the loader recreate it, then run again")
    stored = table.properties.get(KEY_PROPERTY)
    if key is not None and stored is not None and stored != ",".join(key):
        raise SinkRejected(
            f"{where} is merged on key ({stored}), the config's key is ({', '.join(key)}). Fix the source's "
            "primary_key, or move the table away to let the loader recreate it, then run again")


def storable(schema: pa.Schema) -> pa.Schema:
    """`schema` as Iceberg stores it, for comparing with the table's: Iceberg's narrowest integer is int
    (int8 and int16 columns, the transform's small date parts, are stored as int32, holding the same
    values), timestamps are in microseconds, strings and binaries have one type each."""
    fields = []
    for f in schema:
        kind = f.type
        if kind in (pa.int8(), pa.int16(), pa.uint8(), pa.uint16()):
            kind = pa.int32()
        elif kind == pa.uint32():
            kind = pa.int64()
        elif pa.types.is_timestamp(kind) and kind.unit == "ns":
            kind = pa.timestamp("us", tz=kind.tz)
        fields.append(f.with_type(kind))
    return pa.schema(fields)


def stored_arrow_schema(table: Any) -> pa.Schema:
    """The table's current schema as Arrow types (what its files are written with: field ids attached)."""
    schema: pa.Schema = schema_to_pyarrow(table.schema())
    return schema


def with_new_columns(tx: Any, table: Any, incoming: pa.Schema | None) -> pa.Schema:
    """The columns of `incoming` the table lacks added in `tx`, nullable (the stored rows read them as
    null); the Arrow schema the transaction's files are then written with (field ids attached)."""
    if incoming is not None:
        known = {column.name for column in table.schema().fields}
        new = [f.with_nullable(True) for f in storable(incoming) if f.name not in known]
        if new:
            with tx.update_schema() as update:
                update.union_by_name(pa.schema(new))
    schema: pa.Schema = schema_to_pyarrow(tx.table_metadata.schema())
    return schema


def summaries(table: Any) -> list[dict[str, str]]:
    """The retained snapshots' summary properties (the loader's keys among them)."""
    return [dict(snapshot.summary.additional_properties) for snapshot in table.snapshots()]



@dataclass(frozen=True)
class Tables:
    """What the sink's write functions (facts.py, tombstones.py, dimensions.py) are given of it: its
    catalog and namespace, the size of the data files it writes and the snapshots each table keeps."""

    catalogs: Catalogs
    namespace: str
    target_bytes: int
    keep_snapshots: int

    def where(self, table: str) -> str:
        """The table, for messages."""
        return f"Iceberg table {self.namespace}.{table} ({self.catalogs.name})"

    def load(self, table: str) -> Any:
        return load(self.catalogs.get(), self.namespace, table)

    def create(self, table: str, schema: pa.Schema, *, partitioned: bool, key: tuple[str, ...] | None) -> Any:
        return create(self.catalogs.get(), self.namespace, table, schema, partitioned=partitioned, key=key)


def probe(catalogs: Catalogs, namespace: str) -> str | None:
    """The catalog reachable with its credentials and the namespace there or creatable (None), or what is
    wrong. Writes nothing: a SQLite catalog file not made yet is only checked to be creatable."""
    path = sqlite_file(catalogs.uri) if catalogs.settings.catalog == "sql" else None
    if path is not None and not os.path.exists(path):
        blocked = unwritable(Path(path).parent)
        return (None if blocked is None else
                f"cannot make the Iceberg catalog file {path} (under {blocked}): fix the permissions or "
                "sinks.iceberg.uri")
    if path is not None and not os.access(path, os.W_OK):
        return f"cannot write the Iceberg catalog file {path}: fix its permissions or sinks.iceberg.uri"
    try:
        with catalogs.errors():
            catalogs.get().namespace_exists(namespace)
    except (SinkUnavailable, SinkRejected) as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - the probe reports, it never raises
        return f"Iceberg {catalogs.name}: {short_error(error)}: check sinks.iceberg"
    finally:
        catalogs.forget()
    return None
