"""What the Delta sink is, as data (loader/sinks/base.py: `Capabilities`)."""

from __future__ import annotations

from loader.sinks.base import Capabilities

# Every part commits to the table: one at a time, the last carries the run. A retry of the whole
# write replays it (each commit is idempotent).
CAPABILITIES = Capabilities(parts_in_sequence=True, retries_own_steps=False, holds="latest",
                            replay_of_landed="skips", replay_of_interrupted="rest")
