"""The loader's error hierarchy.

One root (`LoaderError`), one base per phase (config, source, sink), the state store's own errors
(state/errors.py, re-exported here) and two marker mixins (`Transient`, `Terminal`, defined there).
Retries (tenacity) only ever retry `Transient` errors. Driver errors are converted at the boundary of
the phase that called the driver, with the original kept as `__cause__`.
Every message says what to do next. Errors cross Ray workers, so each one pickles: the constructor's
only argument is the message.
"""

from __future__ import annotations

from state.errors import (
    CheckpointConflict,
    LeaseHeld,
    MessageError,
    StateCorrupt,
    StateError,
    StateUnavailable,
    StateUrlInvalid,
    Terminal,
    Transient,
)

__all__ = [  # the state store's errors, re-exported: callers name every error from here
    "CheckpointConflict", "LeaseHeld", "StateCorrupt", "StateError", "StateUnavailable", "StateUrlInvalid",
    "Terminal", "Transient",
]

# Process exit codes, documented in docs/commands.md and `loader --help`.
EXIT_OK = 0
EXIT_FAILED = 1  # the run failed; the checkpoint did not move
EXIT_USAGE = 2  # bad command line or configuration; nothing ran
EXIT_LEASE_HELD = 3  # another live run of the same pipeline holds the lease; nothing ran


class LoaderError(MessageError):
    """Root of every error the loader raises on purpose."""

    exit_code = EXIT_FAILED


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


# The state store's errors are its own (state/errors.py: the store depends on nothing in the loader);
# they are re-exported here, and the command line maps both roots to a message and an exit code.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (LoaderError, StateError)
_STATE_EXIT_CODES: dict[type[StateError], int] = {LeaseHeld: EXIT_LEASE_HELD, StateUrlInvalid: EXIT_USAGE}


def exit_code_of(error: BaseException) -> int:
    """The process exit code for an expected error (docs/commands.md: "Exit codes")."""
    if isinstance(error, LoaderError):
        return error.exit_code
    return next((code for kind, code in _STATE_EXIT_CODES.items() if isinstance(error, kind)), EXIT_FAILED)


def is_transient(error: BaseException) -> bool:
    """True when retrying the failed step may help."""
    return isinstance(error, Transient)
