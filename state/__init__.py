"""The loader's state store: checkpoints, run ledger and leases in SQLite or PostgreSQL.

Importable without Ray or any sink driver (stdlib + SQLAlchemy only), so `loader status` stays fast.
Names are resolved on first use (PEP 562): importing `state.errors` alone, as every loader module does
through loader/errors.py, loads no SQLAlchemy, so `loader --help` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from state.migrations import migrate
    from state.models import (
        ALL_SINKS,
        Checkpoint,
        DimensionLoad,
        FactGap,
        LeaseInfo,
        LookupVersion,
        RunMode,
        RunRecord,
        RunStatus,
        Window,
    )
    from state.schema import SCHEMA_VERSION
    from state.store import StateStore, cas_conflicts, create_state_engine, next_cursor

_HOME = {
    "migrate": "state.migrations",
    "ALL_SINKS": "state.models", "FactGap": "state.models",
    "Checkpoint": "state.models", "DimensionLoad": "state.models", "LeaseInfo": "state.models",
    "LookupVersion": "state.models", "RunMode": "state.models",
    "RunRecord": "state.models", "RunStatus": "state.models", "Window": "state.models",
    "SCHEMA_VERSION": "state.schema",
    "StateStore": "state.store", "cas_conflicts": "state.store", "create_state_engine": "state.store",
    "next_cursor": "state.store",
}

__all__ = [
    "ALL_SINKS", "SCHEMA_VERSION", "Checkpoint", "DimensionLoad", "FactGap", "LeaseInfo", "LookupVersion",
    "RunMode", "RunRecord", "RunStatus", "StateStore", "Window",
    "cas_conflicts", "create_state_engine", "migrate", "next_cursor",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'state' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
