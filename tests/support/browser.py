"""Debian's headless Chromium (installed by `make test`), for tests of what a person sees in a browser."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Without the background-networking flags Chromium keeps trying (and failing) to reach Google's hosts.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("Chromium is not installed: `make test` installs Debian's package (apt-get install chromium)")
    return found


def dump_dom(page: Path, *, timeout: float = 60) -> str:
    """The page's DOM after its scripts ran (file:// URL, no network)."""
    with tempfile.TemporaryDirectory(prefix="loader-chromium-") as profile:
        done = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
