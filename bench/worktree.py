"""Another revision of this repository, checked out for a side-by-side benchmark and removed after."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def reference_worktree(revision: str | None, parent: Path) -> Iterator[Path | None]:
    """A detached git worktree of `revision` under `parent` (None: nothing checked out)."""
    if not revision:
        yield None
        return
    worktree = parent / "reference"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), revision],
                   check=True, capture_output=True)
    try:
        yield worktree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                       check=False, capture_output=True)
