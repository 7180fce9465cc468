"""Make the dlt side's own virtual environment: dlt must not share the project's venv (its own pins).

    python bench/dlt_env.py [--venv PATH]        # any python3.11; default bench/out/dlt-venv (gitignored)

Creates the venv if missing and pip-installs bench/dlt-requirements.txt into it. A marker file in the
venv holds the requirements' hash, so a second call with the same requirements does nothing, and a call
after they changed (e.g. the Iceberg pins: pyiceberg, pyiceberg-core, SQLAlchemy) installs them over the
existing venv. Progress goes to stderr; the last line on stdout is the venv's python, for
`$(python bench/dlt_env.py | tail -1)`.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "dlt-requirements.txt"
MARKER = ".dlt-requirements.sha256"


def ensure(path: Path) -> Path:
    python = path / "bin" / "python"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    marker = path / MARKER
    if python.exists() and marker.exists() and marker.read_text().strip() == digest:
        return python
    if not python.exists():
        print(f"creating {path} ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=path.exists()).create(path)
    print(f"installing {REQUIREMENTS.name} into {path} ...", file=sys.stderr)
    marker.unlink(missing_ok=True)  # a failed install must not look done
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(REQUIREMENTS)], check=True, stdout=sys.stderr)
    marker.write_text(digest + "\n")
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=HERE / "out" / "dlt-venv", help="where the venv goes")
    args = parser.parse_args()
    print(ensure(args.venv.absolute()))


if __name__ == "__main__":
    main()
