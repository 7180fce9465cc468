"""Property tests (Hypothesis) of untrusted values through the real sinks, in this process: arbitrary text
as region names, note values and a new column's name written to Parquet and Delta. Whatever the values,
every file stays under the sink's root, what is read back is what was written, and a column a sink
cannot take is refused by `check_columns` before anything is written (issue #27)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.errors import SinkRejected
from loader.sinks.snowflake.schema import ident
from tests.support.conformance import CURSOR, KEY, SCHEMA, TABLE, batch_of, make_sink, row, table_of

pytestmark = pytest.mark.integration

# Not empty: the region table refuses an empty r_name (Lookups.from_tables: Delta would store it as null).
REGION_TEXT = st.text(min_size=1, max_size=40) | st.sampled_from(
    ["X/../../../../ESCAPED", "..", "a\\b", "%2F", "\n"])


def _everything_under(folder: Path) -> list[Path]:
    return [Path(root, name) for root, dirs, names in os.walk(folder) for name in [*dirs, *names]]


@pytest.mark.parametrize("sink_name", ["parquet", "delta"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(regions=st.lists(REGION_TEXT, min_size=1, max_size=4, unique=True), note=st.text(max_size=30))
def test_any_region_and_value_lands_inside_the_sink_and_reads_back(sink_name: str, regions: list[str],
                                                                   note: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        sut = make_sink(sink_name, folder / "project")
        rows = [{**row(key), "region": region, "note": note} for key, region in enumerate(regions, start=1)]
        sut.write(batch_of(1, table_of(rows)))
        warehouse = (folder / "project" / "warehouse").resolve()
        for path in _everything_under(folder):
            assert path.resolve().is_relative_to(warehouse) or path.resolve().is_relative_to(
                (folder / "project").resolve()), path
        assert not any(p.name == "ESCAPED" for p in _everything_under(folder))
        back = sut.sink.read_back(TABLE, [*KEY, CURSOR, "note"])
        assert back is not None
        got = sorted(zip(back["id"].to_pylist(), back["region"].to_pylist(), back["note"].to_pylist(),
                         strict=True))
        assert got == sorted((r["id"], r["region"], note) for r in rows)
        if sink_name == "parquet":  # each row in its own region's folder, decoded as hive readers decode it
            from loader.sinks.base import PARTITION_REGION

            assert back[PARTITION_REGION].to_pylist() == back["region"].to_pylist()


@pytest.mark.parametrize("sink_name", ["parquet", "delta"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=st.text(min_size=1, max_size=20))
def test_a_new_column_of_any_name_is_taken_whole_or_refused_before_writing(sink_name: str,
                                                                           column: str) -> None:
    """Written after a first run: either `check_columns` refuses it (a control character, in any sink; a
    name equal to another but for case, in Delta) and the sink holds the first run only, or it is stored
    under exactly that name."""
    with tempfile.TemporaryDirectory() as scratch:
        sut = make_sink(sink_name, Path(scratch) / "project")
        sut.write(batch_of(1, table_of([row(1)])))
        before = sut.stored()
        schema = SCHEMA.append(pa.field(column, pa.string()))
        data = table_of([{**row(2), column: "v"}] if column not in SCHEMA.names else [row(2)],
                        schema if column not in SCHEMA.names else SCHEMA)
        clash = any(column.lower() == name.lower() for name in SCHEMA.names)
        control = any(ord(c) < 0x20 or ord(c) == 0x7F for c in column)  # a NUL cuts a native name short
        refusable = control or (sink_name == "delta" and clash and column not in SCHEMA.names)
        try:
            sut.sink.check_columns(TABLE, data.schema)
        except SinkRejected as refused:
            assert refusable, (column, refused)
            assert sut.stored().equals(before)
            return
        assert not refusable, column
        sut.write(batch_of(2, data))
        back = sut.sink.read_back(TABLE, [*KEY, *([column] if column not in (*KEY, "region") else [])])
        assert back is not None and 2 in back["id"].to_pylist()


@given(name=st.text(max_size=20))
def test_snowflake_takes_a_name_only_as_a_plain_identifier(name: str) -> None:
    """`ident` quotes a plain identifier upper-cased, and refuses anything else (never SQL)."""
    import re

    try:
        quoted = ident(name)
    except SinkRejected:
        assert not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name)
        return
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name) and quoted == f'"{name.upper()}"'
