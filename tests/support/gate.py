"""A loader process held at a failpoint until the test lets it go (`wait:FILE`, loader/failpoints.py):
the test does what it must while the process waits there, however busy the machine, instead of racing
a fixed sleep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.cli import ROOT


class Gate:
    """The file a `wait:FILE` failpoint waits for; `open()` creates it and lets the process go on."""

    def __init__(self, folder: Path, name: str = "gate") -> None:
        self.path = folder / f"{name}.open"

    def failpoint(self, point: str, suffix: str = "") -> str:
        """`point=wait:FILE` plus `suffix` (`+N`: pass the first N hits; `*N`: the first N only)."""
        return f"{point}=wait:{self.path}{suffix}"

    def open(self) -> None:
        self.path.touch()

    def waiting(self) -> bool:
        """Whether a process waits at this gate now (the failpoint keeps FILE.waiting meanwhile)."""
        return self.path.with_name(self.path.name + ".waiting").exists()


class HeldProcess:
    """A `loader` command started with failpoints; `held()` returns once it waits at its gate."""

    def __init__(self, config: Path, *args: str, failpoints: str,
                 stdout: int | None = subprocess.DEVNULL) -> None:
        command = [sys.executable, "-m", "loader.cli", "--config", str(config), *args]
        env = {**os.environ, "LOADER_FAILPOINTS": failpoints}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.PIPE,
                                        text=True)
        self.stderr: list[str] = []

    def held(self) -> HeldProcess:
        assert self.process.stderr is not None
        for line in self.process.stderr:  # the failpoint says when it waits
            self.stderr.append(line)
            if ": waiting for " in line:
                return self
        raise AssertionError(f"the command ended (exit {self.process.wait()}) before its gate:\n"
                             f"{''.join(self.stderr)}")

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Its exit code, stdout and all of its stderr, once it ended."""
        out, rest = self.process.communicate(timeout=timeout)
        return self.process.returncode, out or "", "".join(self.stderr) + rest

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate(timeout=60)
