"""Landing values that become folder and file names (loader/sinks/names.py), fed arbitrary text."""

from __future__ import annotations

from pathlib import PurePosixPath

from hypothesis import given
from hypothesis import strategies as st

from loader.sinks.names import file_part, partition_folder, partition_value

HOSTILE = ["X/../../../../../ESCAPED", "..", ".", "", "a\\b", "a%2Fb", "region=ASIA", "MIDDLE EAST",
           "MIDDLE_EAST", "line\nbreak", "東京", "x\x00y", "%", "/abs", "C:\\temp"]


@given(st.text() | st.sampled_from(HOSTILE))
def test_a_partition_folder_is_one_safe_segment_that_decodes_back(value: str) -> None:
    folder = partition_folder("region", value)
    assert "/" not in folder and "\\" not in folder and "\x00" not in folder
    assert folder not in (".", "..") and folder.startswith("region=")
    root = PurePosixPath("/warehouse/parquet/orders")
    assert (root / folder / "date=2026-12-06").parent.parent == root  # never outside the table's folder
    assert partition_value(folder, "region") == value


@given(st.text() | st.sampled_from(HOSTILE), st.text() | st.sampled_from(HOSTILE))
def test_two_values_never_share_a_folder_or_a_file_name(a: str, b: str) -> None:
    if a != b:
        assert partition_folder("region", a) != partition_folder("region", b)
        assert file_part(a) != file_part(b)


@given(st.text() | st.sampled_from(HOSTILE))
def test_a_file_part_holds_only_letters_digits_dash_and_underscore(value: str) -> None:
    part = file_part(value)
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in part)


def test_the_collisions_of_the_issue_stay_apart() -> None:
    assert file_part("MIDDLE EAST") == "MIDDLE_20EAST" and file_part("MIDDLE_EAST") == "MIDDLE_5FEAST"
    assert partition_folder("region", "X/../ESCAPED") == "region=X%2F..%2FESCAPED"
