"""What the Iceberg sink is, as data (loader/sinks/base.py: `Capabilities`)."""

from __future__ import annotations

from loader.sinks.base import Capabilities

# - parts_in_sequence: a batch is one catalog commit, made by its last part: the parts before it only
#   stage their rows (files the last part reads back), so they run one after another, the last one last.
# - retries_own_steps False: the runner replays the whole write on a transient fault (nothing is visible
#   before the commit); the sink itself retries only a commit lost to a concurrent writer, on fresh
#   metadata, recomputing the rewrite.
# - holds "latest": one row per key, the newest version (copy-on-write merges).
# - replay_of_landed "skips": `begin` finds the run's marker (a table property set in the run's commit).
# - replay_of_interrupted "whole": an interrupted attempt left nothing visible (at most staged rows and
#   unreferenced files; and, with hard deletes, the tombstones table updated, which is idempotent), so
#   the replay writes and counts every row and delete again.
CAPABILITIES = Capabilities(parts_in_sequence=True, retries_own_steps=False, holds="latest",
                            replay_of_landed="skips", replay_of_interrupted="whole")
