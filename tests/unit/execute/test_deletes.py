"""Upstream deletes, the source side: the `deletes` config block and the stage chain's handling of
tombstones (dedupe with them, set them apart, give them a region, join them back with `_deleted`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from loader.config import DeletesConfig, LoaderConfig, load_config
from loader.errors import BadSourceData, ConfigError
from loader.execute.stages import StageChain
from loader.landing.quarantine import REASON
from loader.sinks.base import DELETED
from loader.transform.lookups import Lookups
from tests.support.cli import LOCAL_CONFIG
from tests.unit.transform.test_transforms import dims, orders  # noqa: F401  (dims: a fixture)

TS = pa.timestamp("us", tz="UTC")
FAR = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


def _local() -> dict[str, Any]:
    return yaml.safe_load(LOCAL_CONFIG.read_text())


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "cfg" / "loader.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------------------------- config


def test_the_demo_config_declares_op_deletes_on_both_sources() -> None:
    config = load_config(LOCAL_CONFIG)
    for name in ("orders", "lineitem"):
        assert config.sources[name].deletes == DeletesConfig(column="op", values=("D",), mode="hard")


def test_deletes_block_defaults_and_value_types(tmp_path: Path) -> None:
    raw = _local()
    raw["sources"]["orders"]["deletes"] = {"column": "_deleted", "values": [True]}
    del raw["sources"]["lineitem"]["deletes"]
    config = load_config(_write(tmp_path, raw))
    assert config.sources["orders"].deletes == DeletesConfig(column="_deleted", values=(True,), mode="hard")
    assert config.sources["lineitem"].deletes is None
    raw["sources"]["orders"]["deletes"] = {"column": "op", "values": ["D", 3], "mode": "soft"}
    deletes = load_config(_write(tmp_path, raw)).sources["orders"].deletes
    assert deletes is not None and deletes.values == ("D", 3) and deletes.mode == "soft"


@pytest.mark.parametrize(("block", "problem"), [
    ({"column": "op", "values": []}, "sources.orders.deletes.values: name at least one value"),
    ({"column": "op"}, "sources.orders.deletes.values: required key is missing"),
    ({"column": "", "values": ["D"]}, "sources.orders.deletes.column"),
    ({"column": "o_updated_at", "values": ["D"]}, "deletes.column 'o_updated_at' is the cursor"),
    ({"column": "o_orderkey", "values": ["D"]}, "deletes.column 'o_orderkey' is a primary key column"),
    ({"column": "op", "values": ["D"], "mode": "gone"}, "sources.orders.deletes.mode"),
    ({"column": "op", "values": ["D"], "colum": "op"}, "sources.orders.deletes.colum: unknown key"),
])
def test_deletes_block_is_validated(tmp_path: Path, block: dict[str, Any], problem: str) -> None:
    raw = _local()
    raw["sources"]["orders"]["deletes"] = block
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, raw))
    assert problem in caught.value.message


def test_a_key_column_of_a_composite_key_is_refused(tmp_path: Path) -> None:
    raw = _local()
    raw["sources"]["lineitem"]["deletes"] = {"column": "l_linenumber", "values": ["D"]}
    with pytest.raises(ConfigError, match="'l_linenumber' is a primary key column"):
        load_config(_write(tmp_path, raw))


# -------------------------------------------------------------------------------------------- chain


@pytest.fixture(scope="module")
def config() -> LoaderConfig:
    return load_config(LOCAL_CONFIG)


def _chain(config: LoaderConfig, name: str = "orders", **deletes: Any) -> StageChain:
    chain = StageChain.for_source(config, name, _window())
    if deletes:
        source = chain.source.model_copy(update={"deletes": DeletesConfig(**deletes)})
        chain = StageChain(chain.name, source, chain.window, chain.checks, chain.rules)
    return chain


def _window() -> Any:
    from state import Window

    return Window(lower=None, upper=FAR)


def _versions(*rows: tuple[int | None, int, int | None, str | None]) -> pa.Table:
    """Orders versions (key, hour of the cursor, customer, op), each a full row otherwise."""
    base = orders(["1000.00"] * len(rows))
    columns = {name: base[name] for name in base.column_names}
    columns["o_orderkey"] = pa.array([r[0] for r in rows], pa.int64())
    columns["o_updated_at"] = pa.array([dt.datetime(2024, 1, 1, r[1], tzinfo=dt.UTC) for r in rows], TS)
    columns["o_custkey"] = pa.array([r[2] for r in rows], pa.int64())
    columns["op"] = pa.array([r[3] for r in rows], pa.string())
    return pa.table(columns)


def _by_key(table: pa.Table) -> dict[int, dict[str, Any]]:
    return {row["o_orderkey"]: row for row in table.to_pylist()}


def test_the_newest_version_decides_tombstones_included(
        config: LoaderConfig, dims: Lookups) -> None:  # noqa: F811
    rows = _versions(
        (1, 1, 1, "I"), (1, 2, 1, "D"),               # tombstone newest: deleted
        (2, 1, 2, "D"), (2, 2, 2, "U"),               # an older tombstone loses: live
        (3, 1, 1, "I"), (3, 2, 1, "D"), (3, 3, 2, "I"),  # re-inserted after the tombstone: live
        (4, 5, 2, None),                              # a null op: live
    )
    out, bad = _chain(config).run(rows, dims)
    assert bad is None
    got = _by_key(out)
    assert sorted(got) == [1, 2, 3, 4]
    assert out["o_orderkey"].to_pylist() == [1, 2, 3, 4]  # key order, tombstones among the live rows
    assert {k: r[DELETED] for k, r in got.items()} == {1: True, 2: False, 3: False, 4: False}
    assert out.schema.field(DELETED).type == pa.bool_() and out[DELETED].null_count == 0
    assert "op" not in out.column_names  # landing bookkeeping: no sink gets it
    # the tombstone: key, cursor, region (customer 1 is in EUROPE); nothing derived, nothing looked up
    dead = got[1]
    assert dead["o_updated_at"] == dt.datetime(2024, 1, 1, 2, tzinfo=dt.UTC)
    assert dead["region"] == "EUROPE"
    assert dead["o_totalprice"] is None and dead["revenue_tier"] is None and dead["c_name"] is None
    assert dead["amount_local"] is None and dead["nation"] is None
    # live rows as the transforms make them
    assert (got[2]["o_updated_at"] == dt.datetime(2024, 1, 1, 2, tzinfo=dt.UTC)
            and got[2]["region"] == "AMERICA")
    assert got[2]["revenue_tier"] == "Small" and got[2]["currency"] == "USD"
    assert (got[3]["o_updated_at"] == dt.datetime(2024, 1, 1, 3, tzinfo=dt.UTC)
            and got[3]["region"] == "AMERICA")


def test_a_tombstone_wins_a_tie_with_a_live_version_in_one_batch(
        config: LoaderConfig, dims: Lookups) -> None:  # noqa: F811
    """The delete rule of every sink (loader/sinks/base.py): a tombstone at a live version's cursor is
    the newer, whichever comes first in the batch's rows (key 1: the tombstone first, key 2: last)."""
    first = [(1, 2, 1, "D"), (1, 2, 1, "U"), (2, 3, 2, "I"), (2, 3, 2, "D"), (3, 1, 1, "I")]
    for rows in (first, [first[i] for i in (1, 0, 3, 2, 4)]):
        out, _ = _chain(config).run(_versions(*rows), dims)
        assert {r["o_orderkey"]: r[DELETED] for r in out.to_pylist()} == {1: True, 2: True, 3: False}


def test_the_live_rows_are_what_a_source_without_deletes_gives(
        config: LoaderConfig, dims: Lookups) -> None:  # noqa: F811
    rows = _versions((1, 1, 1, "I"), (2, 1, 2, "U"), (2, 2, 2, "D"), (3, 4, 1, "U"))
    out, _ = _chain(config).run(rows, dims)
    chain = _chain(config)
    plain = StageChain("orders", chain.source.model_copy(update={"deletes": None}), chain.window,
                       chain.checks, chain.rules)
    expected, _ = plain.run(rows.drop_columns(["op"]), dims)
    assert DELETED not in expected.column_names
    expected = expected.filter(pc.not_equal(expected["o_orderkey"], 2))  # the key deleted upstream
    live = out.filter(pc.invert(out[DELETED])).drop_columns([DELETED])
    assert live.to_pylist() == expected.to_pylist()
    assert live.schema.types == expected.schema.types


def test_a_tombstone_without_its_lookup_column_is_unknown_and_never_quarantined(
    config: LoaderConfig, dims: Lookups  # noqa: F811
) -> None:
    # a null customer (a CDC tool sending only the key) and an unknown customer (99): UNKNOWN, kept
    rows = _versions((1, 1, 1, "I"), (1, 2, None, "D"), (2, 2, 99, "D"), (3, 2, 99, "I"))
    out, bad = _chain(config).run(rows, dims)
    got = _by_key(out)
    assert (got[1][DELETED], got[1]["region"]) == (True, "UNKNOWN")
    assert (got[2][DELETED], got[2]["region"]) == (True, "UNKNOWN")
    assert 3 not in got  # a live row of no region is quarantined, as ever
    assert bad is not None and bad[REASON].to_pylist() == ["no region"]
    assert bad["o_orderkey"].to_pylist() == [3] and DELETED not in bad.column_names
    # tombstones carrying only the key and the cursor
    narrow = rows.select(["o_orderkey", "o_updated_at", "op"]).slice(1, 2)
    placed = _chain(config).tombstones(narrow, dims)
    assert placed.column_names == ["o_orderkey", "o_updated_at", "region"]
    assert placed["region"].to_pylist() == ["UNKNOWN", "UNKNOWN"]


def test_only_tombstones_give_the_live_rows_schema(config: LoaderConfig, dims: Lookups) -> None:  # noqa: F811
    out, _ = _chain(config).run(_versions((5, 1, 2, "D"), (6, 1, 1, "D")), dims)
    live, _ = _chain(config).run(_versions((5, 1, 2, "I")), dims)
    assert out.column_names == live.column_names
    assert out[DELETED].to_pylist() == [True, True]
    assert out["region"].to_pylist() == ["AMERICA", "EUROPE"]
    empty, _ = _chain(config).run(_versions((5, 1, 2, "D")).slice(0, 0), dims)
    assert empty.column_names == live.column_names and empty.num_rows == 0


def test_a_tombstone_with_a_null_key_is_quarantined(
        config: LoaderConfig, dims: Lookups) -> None:  # noqa: F811
    out, bad = _chain(config).run(_versions((None, 1, 1, "D"), (1, 1, 1, "I")), dims)
    assert out["o_orderkey"].to_pylist() == [1] and out[DELETED].to_pylist() == [False]
    assert bad is not None and bad[REASON].to_pylist() == ["null key o_orderkey"]


def test_boolean_and_integer_delete_markers(config: LoaderConfig, dims: Lookups) -> None:  # noqa: F811
    rows = _versions((1, 1, 1, None), (2, 1, 1, None)).drop_columns(["op"])
    flagged = rows.append_column("is_gone", pa.array([True, None], pa.bool_()))
    out, _ = _chain(config, column="is_gone", values=(True,)).run(flagged, dims)
    assert out[DELETED].to_pylist() == [True, False] and "is_gone" not in out.column_names
    coded = rows.append_column("change", pa.array([3, 1], pa.int8()))
    out, _ = _chain(config, column="change", values=(3,)).run(coded, dims)
    assert out[DELETED].to_pylist() == [True, False]
    with pytest.raises(BadSourceData, match=r"deletes.values: 'D' is no value of column 'is_gone'.*bool"):
        _chain(config, column="is_gone", values=("D",)).run(flagged, dims)


def test_rows_without_the_deletes_column_are_refused(
        config: LoaderConfig, dims: Lookups) -> None:  # noqa: F811
    with pytest.raises(BadSourceData, match=r"source 'orders' have no column 'op'.*deletes"):
        _chain(config).run(_versions((1, 1, 1, "I")).drop_columns(["op"]), dims)


def test_a_source_without_deletes_gets_no_deleted_column(
        config: LoaderConfig, dims: Lookups) -> None:  # noqa: F811
    source = config.sources["orders"].model_copy(update={"deletes": None})
    chain = StageChain("orders", source, _window(), _chain(config).checks, _chain(config).rules)
    out, _ = chain.run(_versions((1, 1, 1, "I"), (1, 2, 1, "D")), dims)
    assert DELETED not in out.column_names
    assert out["op"].to_pylist() == ["D"]  # just a column, as any other
