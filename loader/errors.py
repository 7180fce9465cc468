"""The loader's error hierarchy.

One root (`LoaderError`), one base per phase (config, source, sink, state) and two marker mixins
(`Transient`, `Terminal`). Retries (tenacity) only ever retry `Transient` errors. Driver errors are
converted at the boundary of the phase that called the driver, with the original kept as `__cause__`.
Every message says what to do next. Errors cross Ray workers, so each one pickles: the constructor's
only argument is the message.
"""

from __future__ import annotations

# Process exit codes, documented in the README and `loader --help`.
EXIT_OK = 0
EXIT_FAILED = 1  # the run failed; the checkpoint did not move
EXIT_USAGE = 2  # bad command line or configuration; nothing ran
EXIT_LEASE_HELD = 3  # another live run of the same pipeline holds the lease; nothing ran


class LoaderError(Exception):
    """Root of every error the loader raises on purpose."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))


class Transient:
    """Marker: the same call may succeed if tried again (network, timeouts, commit conflicts)."""


class Terminal:
    """Marker: trying again cannot help (bad credentials, bad data, bad config)."""


class ConfigError(LoaderError, Terminal):
    """The configuration or command line is wrong. Raised before anything runs."""

    exit_code = EXIT_USAGE


class SourceError(LoaderError):
    """Reading or checking the landing zone failed."""


class BadSourceData(SourceError, Terminal):
    """The landing zone holds data the loader must not load as it is (null keys, missing columns...)."""


class SourceUnavailable(SourceError, Transient):
    """The landing zone could not be read just now (I/O error, timeout)."""


class SinkError(LoaderError):
    """Writing or committing to a sink failed."""


class SinkUnavailable(SinkError, Transient):
    """A sink could not be written just now; the same idempotent step may be retried."""


class SinkRejected(SinkError, Terminal):
    """A sink refused the data or the credentials; retrying will not help."""


class StateError(LoaderError):
    """The state store (checkpoints, run ledger, lease) failed or holds something unexpected."""


class StateUnavailable(StateError, Transient):
    """The state database could not be reached or was locked just now."""


class StateCorrupt(StateError, Terminal):
    """The state database holds something this version cannot use (newer schema, broken ledger row)."""


class CheckpointConflict(StateError, Terminal):
    """The checkpoint moved under this run (compare-and-set failed): another run committed first."""


class LeaseHeld(StateError, Terminal):
    """Another live run of the same pipeline holds the lease."""

    exit_code = EXIT_LEASE_HELD


def is_transient(error: BaseException) -> bool:
    """True when retrying the failed step may help."""
    return isinstance(error, Transient)
