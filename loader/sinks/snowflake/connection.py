"""Snowflake connections: the login (password or key pair), the idle connections a sink keeps between
steps, one step's session and its retries, transactions, and connector errors turned into loader errors
(naming the object and the fix, secrets cut out). Also the sweep of the temp folders a killed process
left behind (the files staged for PUT)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from loader import scratch
from loader.errors import LoaderError, SinkError, SinkRejected, SinkUnavailable
from loader.retry import call_with_retries
from loader.sinks.snowflake.config import SnowflakeSinkConfig
from loader.storage import short_error

# The region files staged for PUT live in a temp folder per write, removed when the write ends. A
# process killed mid-write cannot remove its own: the next write removes those of dead processes (a
# loader process's own temp folder is its scratch folder, swept as a whole: this is for the workers of a
# Ray cluster, whose temp folder is the system's).
_FOLDER_PREFIX = "loader-snowflake-"


def _sweep_stale_folders() -> None:
    for folder in scratch.system_temp().glob(f"{_FOLDER_PREFIX}*-*"):
        pid = folder.name[len(_FOLDER_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not scratch.alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def temp_folder() -> Path:
    """A new temp folder for one write's files to PUT, named by this process (the stale ones of dead
    processes removed first); the caller removes it when the write ends."""
    _sweep_stale_folders()
    return Path(tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-"))


T = TypeVar("T")
_AUTH_WORDS = ("password", "authenticat", "jwt", "private key", "user is locked", "mfa", "incorrect username")
# Snowflake's "session no longer exists / expired / token expired": log in again, i.e. retry.
_SESSION_LOST = {390111, 390112, 390114}


def where(settings: SnowflakeSinkConfig) -> str:
    """The account, database and schema, for people: `Snowflake <account>/<database>.<schema>`."""
    return f"Snowflake {settings.account}/{settings.database}.{settings.schema_}"


def schema_name(settings: SnowflakeSinkConfig) -> str:
    return f"{settings.database}.{settings.schema_}"


def connect(settings: SnowflakeSinkConfig) -> Any:
    import snowflake.connector

    s = settings
    options: dict[str, Any] = {
        "account": s.account, "user": s.user, "database": s.database, "schema": s.schema_,
        "login_timeout": s.login_timeout.total_seconds(),
        "network_timeout": s.network_timeout.total_seconds(),
        "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
    }
    for name in ("role", "warehouse", "host", "port", "protocol"):
        if getattr(s, name) is not None:
            options[name] = getattr(s, name)
    if s.private_key_file or s.private_key:
        options["private_key"] = private_key_der(s)
    else:
        options["password"] = s.password
    return snowflake.connector.connect(**options)


def private_key_der(settings: SnowflakeSinkConfig) -> bytes:
    """The configured PEM private key (file or inline), decrypted with the passphrase if any, as the
    DER bytes the connector takes; a clear terminal error if it cannot be read."""
    from cryptography.hazmat.primitives import serialization

    where = (f"sinks.snowflake.private_key_file {settings.private_key_file}" if settings.private_key_file
             else "sinks.snowflake.private_key")
    try:
        inline = (settings.private_key or "").strip()
        if "\n" not in inline:  # a secret store that kept the PEM on one line, newlines as \n
            inline = inline.replace("\\n", "\n")
        pem = Path(settings.private_key_file).read_bytes() if settings.private_key_file else inline.encode()
    except OSError as error:
        raise SinkRejected(f"Snowflake: cannot read {where} ({error.strerror}): fix the path") from error
    passphrase = settings.private_key_passphrase.encode() if settings.private_key_passphrase else None
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError) as error:
        reason = str(error).split("\n")[0]
        raise SinkRejected(
            f"Snowflake: {where} is not a PEM private key this passphrase opens ({reason}): check the "
            f"key and sinks.snowflake.private_key_passphrase (needed only for an encrypted key)"
        ) from None
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def convert(settings: SnowflakeSinkConfig, error: Exception, *, doing: str) -> SinkError:
    """Driver error -> loader error naming the object and the fix; secrets are cut out."""
    from snowflake.connector import errors as e

    detail = short_error(error)
    for secret in (settings.password, settings.private_key_passphrase, settings.private_key):
        if secret:
            detail = detail.replace(secret, "***")
    place = where(settings)
    text = detail.lower()
    session_lost = getattr(error, "errno", None) in _SESSION_LOST
    if (isinstance(error, e.DatabaseError) and not session_lost
            and any(word in text for word in _AUTH_WORDS)):
        return SinkRejected(
            f"{doing} {place} failed: authentication refused ({detail}). Check sinks.snowflake.user, "
            f"account and SNOWFLAKE_PASSWORD (or the private key), then run again: the run replays"
        )
    transient = (e.OperationalError, e.InterfaceError, e.InternalServerError, e.ServiceUnavailableError,
                 e.GatewayTimeoutError, e.BadGatewayError, e.OtherHTTPRetryableError,
                 e.RequestTimeoutError)
    if session_lost or (isinstance(error, transient) and not isinstance(error, e.ProgrammingError)):
        return SinkUnavailable(
            f"{doing} {place} failed: {detail}. Snowflake was unreachable or busy: check sinks.snowflake "
            f"host/account and the network, then run again: the run replays safely"
        )
    return SinkRejected(
        f"{doing} {place} failed: {detail}. Check that the role may use the database, schema and "
        f"warehouse and create stages and tables there (see docs/sinks.md, Snowflake), and that the "
        f"table's columns match the source, then run again: the run replays"
    )


class ConnectionPool:
    """A sink's connections, logged in and idle, reused by the next step (`Session`): one login per run."""

    def __init__(self, settings: SnowflakeSinkConfig) -> None:
        self.settings = settings
        self._idle: list[Any] = []
        self._idle_lock = threading.Lock()

    def take_connection(self) -> Any:
        """An idle connection of this sink's (logged in already), else a new one."""
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        return connect(self.settings)

    def give_back(self, conn: Any) -> None:
        """Keep `conn` for the next step (a step that succeeded left no transaction open)."""
        with self._idle_lock:
            self._idle.append(conn)

    def close(self) -> None:
        """Log out of the idle connections."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def __del__(self) -> None:  # a sink dropped without close() (a check, a dimension load) logs out too
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:  # to a Ray worker: without connections or the lock
        return {**self.__dict__, "_idle": [], "_idle_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _idle_lock=threading.Lock())


class Session:
    """One connector session, opened lazily (or taken from the sink's idle ones) and dropped after an
    error so the retry reconnects (a lost or expired session is one of the transient faults)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.conn: Any = None

    def cursor(self) -> Any:
        if self.conn is None:
            self.conn = self.pool.take_connection()
        return self.conn.cursor()

    def discard(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def done(self) -> None:
        """The work ended: the connection goes back to the sink for the next step (one login per run,
        not per step), unless an error is on its way out (then it is closed: it may be broken)."""
        if sys.exc_info()[0] is not None:
            self.discard()
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.give_back(conn)


def drop_unless_refused(session: Session, error: Exception) -> None:
    """After a failed statement: a statement Snowflake refused (a ProgrammingError: SQL it did not take)
    leaves the connection good for the next step; any other error may have broken it: closed."""
    from snowflake.connector.errors import ProgrammingError

    if not isinstance(error, ProgrammingError):
        session.discard()


def run_step(settings: SnowflakeSinkConfig, table: str, step: str, session: Session,
             work: Callable[[Any], T]) -> T:
    """`work(cursor)` with retries of transient faults (the sink's `retry` policy, of each step);
    connector errors become loader errors."""
    import snowflake.connector.errors as sf_errors

    def attempt() -> T:
        try:
            cur = session.cursor()
        except sf_errors.Error as error:
            session.discard()
            raise convert(settings, error, doing="connecting to") from error
        try:
            return work(cur)
        except sf_errors.Error as error:
            session.discard()
            raise convert(settings, error, doing=f"{step} of {table} in") from error
        except LoaderError:
            session.discard()
            raise

    return call_with_retries(f"{table} -> snowflake {step}", settings.retry, attempt)


@contextlib.contextmanager
def transaction(conn: Any) -> Iterator[None]:
    """AUTOCOMMIT off for the block, which commits itself; an error rolls the transaction back (a lost
    connection rolls back on its own: the first error is kept) and goes on."""
    conn.autocommit(False)
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise
    finally:
        with contextlib.suppress(Exception):
            conn.autocommit(True)


__all__ = ["ConnectionPool", "Session", "connect", "convert", "drop_unless_refused", "private_key_der",
           "run_step", "schema_name", "temp_folder", "transaction", "where"]
