"""The loader's state store: checkpoints, run ledger and leases in SQLite or PostgreSQL.

Importable without Ray or any sink driver (stdlib + SQLAlchemy only), so `loader status` stays fast.
"""

from state.migrations import migrate
from state.models import Checkpoint, LeaseInfo, RunMode, RunRecord, RunStatus, Window
from state.schema import SCHEMA_VERSION
from state.store import StateStore, cas_conflicts, create_state_engine, next_cursor

__all__ = [
    "SCHEMA_VERSION",
    "Checkpoint",
    "LeaseInfo",
    "RunMode",
    "RunRecord",
    "RunStatus",
    "StateStore",
    "Window",
    "cas_conflicts",
    "create_state_engine",
    "migrate",
    "next_cursor",
]
