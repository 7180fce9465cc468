"""What the Snowflake sink is, declared as data (loader/sinks/base.py: `Capabilities`)."""

from __future__ import annotations

from loader.sinks.base import Capabilities

# Parts only stage files (the one transaction is finish's); each step is retried on its own.
CAPABILITIES = Capabilities(parts_in_sequence=False, retries_own_steps=True, holds="latest",
                            replay_of_landed="skips", replay_of_interrupted="whole")

__all__ = ["CAPABILITIES"]
