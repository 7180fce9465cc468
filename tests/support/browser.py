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
# prefers-color-scheme as the page sees it (Blink's PreferredColorScheme: 0 is dark, 1 is light).
SCHEMES = {"light": "--blink-settings=preferredColorScheme=1",
           "dark": "--blink-settings=preferredColorScheme=0"}


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("Chromium is not installed: `make test` installs Debian's package "
                    "(apt-get install chromium)")
    return found


def _run(page: Path, *args: str, scheme: str, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="loader-chromium-") as profile:
        done = subprocess.run([chromium(), *FLAGS, SCHEMES[scheme], f"--user-data-dir={profile}", *args,
                               page.resolve().as_uri()], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dump_dom(page: Path, *, scheme: str = "light", timeout: float = 60) -> str:
    """The page's DOM after its scripts ran (file:// URL, no network), in the light or dark scheme."""
    return _run(page, "--dump-dom", scheme=scheme, timeout=timeout)


def screenshot(page: Path, png: Path, *, scheme: str = "light", width: int = 1366, height: int = 2400,
               timeout: float = 60) -> Path:
    """A PNG of the page's top `height` pixels in a window `width` wide (a laptop's, by default)."""
    _run(page, f"--screenshot={png.resolve()}", f"--window-size={width},{height}", "--hide-scrollbars",
         scheme=scheme, timeout=timeout)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"Chromium wrote no PNG at {png}"
    return png
