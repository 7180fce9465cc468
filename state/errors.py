"""The state store's errors: its own, so the store depends on nothing in `loader` above it.

The loader treats them as it treats its own (loader/errors.py): one message for people, retried by the
same rule (the `Transient` marker), mapped to an exit code in one place by the command line. The two
marker mixins live here, at the bottom of the dependency graph, and the loader's errors reuse them.
Each error pickles (it crosses Ray workers): the constructor's only argument is the message.
"""

from __future__ import annotations


class Transient:
    """Marker: the same call may succeed if tried again (network, timeouts, commit conflicts)."""


class Terminal:
    """Marker: trying again cannot help (bad credentials, bad data, bad config)."""


class MessageError(Exception):
    """An error whose only constructor argument is its message, so it pickles: the root of the state
    store's errors and of the loader's (`LoaderError`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))


class StateError(MessageError):
    """The state store (checkpoints, run ledger, lease) failed or holds something unexpected."""


class StateUnavailable(StateError, Transient):
    """The state database could not be reached or was locked just now."""


class StateCorrupt(StateError, Terminal):
    """The state database holds something this version cannot use (newer schema, broken ledger row)."""


class StateUrlInvalid(StateError, Terminal):
    """The state store's URL is not a database URL: a configuration error, nothing ran."""


class CheckpointConflict(StateError, Terminal):
    """The checkpoint moved under this run (compare-and-set failed): another run committed first."""


class LeaseHeld(StateError, Terminal):
    """Another live run of the same pipeline holds the lease."""
