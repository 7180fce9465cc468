"""The C allocator's arenas capped at start-up (loader/memory.py), unless the environment chose."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = "from loader.memory import cap_malloc_arenas; print(cap_malloc_arenas())"


def _capped(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_arenas_are_capped_at_a_few_unless_the_environment_says_how_many() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _capped(env) == str(max(2, min(4, os.cpu_count() or 2)))  # glibc here: mallopt took it
    assert _capped({**env, "MALLOC_ARENA_MAX": "8"}) == "None"  # the user's choice stands
