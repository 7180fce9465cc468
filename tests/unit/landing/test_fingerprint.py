"""The dimension files' fingerprint (loader/landing/fingerprint.py) names their content, not where the
zone sits: a copy elsewhere keeps it (its prepared lookups stay valid), any change to a file changes it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from loader.landing.fingerprint import folder_fingerprint
from loader.storage import locate


def _zone(root: Path) -> Path:
    folder = root / "customer"
    (folder / "part=1").mkdir(parents=True)
    pq.write_table(pa.table({"c_custkey": [1, 2, 3], "c_name": ["a", "b", "c"]}),
                   folder / "part=1" / "one.parquet")
    pq.write_table(pa.table({"c_custkey": [4], "c_name": ["d"]}), folder / "two.parquet")
    return folder


def _of(folder: Path) -> str:
    return folder_fingerprint(locate(str(folder)))[0]


def test_a_copy_elsewhere_keeps_the_fingerprint_and_a_change_does_not(tmp_path: Path) -> None:
    original = _zone(tmp_path / "zone")
    copy = tmp_path / "moved" / "deeper" / "customer"
    shutil.copytree(original, copy)  # copy2: sizes and modification times kept
    assert _of(copy) == _of(original)

    renamed = tmp_path / "renamed" / "customer"
    shutil.copytree(original, renamed)
    (renamed / "two.parquet").rename(renamed / "three.parquet")  # same bytes, another name
    assert _of(renamed) != _of(original)

    touched = tmp_path / "touched" / "customer"
    shutil.copytree(original, touched)
    stat = (touched / "two.parquet").stat()
    os.utime(touched / "two.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _of(touched) != _of(original)

    rewritten = tmp_path / "rewritten" / "customer"
    shutil.copytree(original, rewritten)
    pq.write_table(pa.table({"c_custkey": [5], "c_name": ["d"]}), rewritten / "two.parquet")  # same size
    stat = (original / "two.parquet").stat()
    assert (rewritten / "two.parquet").stat().st_size == stat.st_size
    os.utime(rewritten / "two.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same clock
    assert _of(rewritten) != _of(original)  # the footer's statistics tell it
