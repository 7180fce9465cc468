"""What the Parquet sink is, as data (loader/sinks/base.py: `Capabilities`)."""

from __future__ import annotations

from loader.sinks.base import Capabilities

# Parts write disjoint files, nothing is committed to a log; a retry of the whole write replays it.
CAPABILITIES = Capabilities(parts_in_sequence=False, retries_own_steps=False, holds="versions",
                            replay_of_landed="rewrites", replay_of_interrupted="whole")
