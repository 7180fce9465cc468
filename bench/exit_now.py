"""How the bench scripts that drive delta-rs leave: without the interpreter's teardown, as the loader's
CLI does, where delta-rs' runtime threads sometimes abort the process ("terminate called without an
active exception") after the work is done."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Flush stdout and stderr, then end the process with `code`, skipping the teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
