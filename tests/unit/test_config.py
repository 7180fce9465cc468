"""Config parsing: typed and frozen, env interpolation, paths relative to the file, all errors at once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from loader.config import load_config, parse_duration
from loader.errors import ConfigError
from tests.support.cli import LOCAL_CONFIG, local_raw, write_raw


def test_embedded_default_parses() -> None:
    config = load_config(LOCAL_CONFIG)
    assert config.sources["orders"].primary_key == ("o_orderkey",)
    assert config.sources["lineitem"].lookback == timedelta(hours=1)
    assert config.landing_zone == str((LOCAL_CONFIG.parent / "../data/landing").resolve())


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    config = load_config(write_raw(tmp_path, {**local_raw(), "landing_zone": "lz"}))
    assert config.landing_zone == str(tmp_path / "cfg" / "lz")
    assert config.state.url == f"sqlite:///{(tmp_path / 'data' / 'state' / 'loader.db').resolve()}"
    assert config.source_path("orders") == str(tmp_path / "cfg" / "lz" / "orders")


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LZ_ROOT", "/srv/lz")
    raw = {**local_raw(), "landing_zone": "${LZ_ROOT}", "warehouse": "${WH_ROOT:-/srv/wh}"}
    config = load_config(write_raw(tmp_path, raw))
    assert (config.landing_zone, config.warehouse) == ("/srv/lz", "/srv/wh")


def test_missing_env_var_is_named(tmp_path: Path) -> None:
    raw = {**local_raw(), "landing_zone": "${SURELY_NOT_SET_VAR}"}
    with pytest.raises(ConfigError, match="SURELY_NOT_SET_VAR not set"):
        load_config(write_raw(tmp_path, raw))


def test_all_problems_reported_with_key_paths(tmp_path: Path) -> None:
    raw = local_raw()
    raw["sources"]["orders"]["lookback"] = "soon"
    raw["sources"]["lineitem"]["kind"] = "parts"
    raw["sinks"]["parquet"]["compresion"] = "zstd"
    with pytest.raises(ConfigError) as caught:
        load_config(write_raw(tmp_path, raw))
    message = caught.value.message
    assert "3 problem(s)" in message
    assert "sources.orders.lookback" in message and "not a duration" in message
    assert "sources.lineitem.kind" in message
    assert "sinks.parquet.compresion: unknown key" in message


def test_config_objects_are_frozen() -> None:
    config = load_config(LOCAL_CONFIG)
    with pytest.raises(ValidationError):
        config.pipeline = "other"  # type: ignore[misc]


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config FILE or set LOADER_CONFIG"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("1h", 3600), ("1d", 86400), (15, 15), ("1.5h", 5400)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", [0, -5, 2.5, "many", None])
def test_max_batch_rows_must_be_a_positive_integer(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match=r"run\.max_batch_rows") as info:
        load_config(write_raw(tmp_path, {**local_raw(), "run": {"max_batch_rows": bad}}))
    assert "run.max_batch_rows" in str(info.value)


def test_max_batch_rows_default_and_override(tmp_path: Path) -> None:
    assert load_config(LOCAL_CONFIG).run.max_batch_rows == 1_000_000
    assert load_config(write_raw(tmp_path, {**local_raw(),
                                            "run": {"max_batch_rows": 5000}})).run.max_batch_rows == 5000


def test_dimensions_plain_paths_take_each_tables_default_mode(tmp_path: Path) -> None:
    raw = local_raw()
    raw["dimensions"] = {"customer": "cust", "nation": "nat"}
    config = load_config(write_raw(tmp_path, raw))
    customer, supplier, nation = (config.dimensions.named(t) for t in ("customer", "supplier", "nation"))
    assert (customer.path, customer.mode, customer.load, customer.missing) == ("cust", "scd2", True, "close")
    assert (supplier.path, supplier.mode) == ("supplier", "scd2")
    assert (nation.path, nation.mode) == ("nat", "replace")
    assert config.dimensions.key_of("customer") == ("c_custkey",)
    assert config.dimension_path("customer") == str(Path(config.landing_zone) / "cust")


def test_dimension_blocks_keep_the_defaults_they_do_not_set(tmp_path: Path) -> None:
    raw = local_raw()
    raw["dimensions"] = {"region": {"load": False}, "customer": {"cursor": "c_updated_at", "track": "c_phone",
                                                                  "key": "c_custkey", "missing": "keep"}}
    config = load_config(write_raw(tmp_path, raw))
    region, customer = config.dimensions.region, config.dimensions.customer
    assert (region.path, region.mode, region.load) == ("region", "replace", False)
    assert (customer.cursor, customer.track, customer.key, customer.missing) == ("c_updated_at", ("c_phone",),
                                                                                ("c_custkey",), "keep")


@pytest.mark.parametrize(("block", "message"), [
    ({"mode": "replace", "cursor": "c_updated_at"}, "mode replace loads whole snapshots: remove cursor"),
    ({"cursor": "c_custkey"}, "cursor 'c_custkey' is a key column"),
    ({"mode": "history"}, "dimensions.customer.mode"),
    ({"missing": "drop"}, "dimensions.customer.missing"),
])
def test_bad_dimension_blocks_are_named(tmp_path: Path, block: dict, message: str) -> None:
    raw = local_raw()
    raw["dimensions"] = {"customer": {**block, **({"key": "c_custkey"} if "cursor" in block else {})}}
    with pytest.raises(ConfigError, match=message):
        load_config(write_raw(tmp_path, raw))


def test_the_command_line_overrides_fold_into_the_config_and_are_validated(tmp_path: Path) -> None:
    config = load_config(write_raw(tmp_path, local_raw()))
    overridden = config.overridden(executor="ray", engine="cpu", max_batch_rows=5_000)
    assert (overridden.ray.mode, overridden.transform.engine,
            overridden.run.max_batch_rows) == ("ray", "cpu", 5_000)
    assert (config.ray.mode, config.run.max_batch_rows) == ("auto", 1_000_000)  # the loaded one is unchanged
    assert overridden.ray.local_max_rows == config.ray.local_max_rows and overridden.sources == config.sources
    assert config.overridden() is config
    with pytest.raises(ConfigError, match="max_batch_rows"):
        config.overridden(max_batch_rows=0)
    with pytest.raises(ConfigError, match="mode"):
        config.overridden(executor="spark")


def test_ray_address_from_the_environment_is_settled_into_the_config(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert load_config(write_raw(tmp_path / "a", local_raw())).ray.address == "ray://head:10001"
    raw = local_raw()
    raw["ray"] = {**raw.get("ray", {}), "address": "ray://configured:10001"}
    # the file wins
    assert load_config(write_raw(tmp_path / "b", raw)).ray.address == "ray://configured:10001"
    monkeypatch.delenv("RAY_ADDRESS")
    assert load_config(write_raw(tmp_path / "c", local_raw())).ray.address is None


def test_problems_read_as_sentences_and_an_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    raw = local_raw()
    raw["sources"]["orders"]["lookbak"] = "1h"
    raw["sources"]["orders"]["deletes"] = {"column": "op", "values": [], "mdoe": "hard"}
    raw["sources"]["lineitem"]["kind"] = "parts"
    raw["sinks"]["snowflake"] = {"shcema": "PUBLIC"}  # an alias (schema_ in the model)
    raw["dimensions"]["custmer"] = "customer"
    raw["ray"]["zzzz"] = 1
    raw["run"]["max_batch_rows"] = 0
    with pytest.raises(ConfigError) as caught:
        load_config(write_raw(tmp_path, raw))
    message = caught.value.message
    assert "Value error" not in message and "Input should" not in message, message
    for line in ("sources.orders.lookbak: unknown key; did you mean lookback?",
                 "sources.orders.deletes.mdoe: unknown key; did you mean mode?",
                 "sources.orders.deletes.values: name at least one value",
                 "sources.lineitem.kind: kind must be",
                 "sinks.snowflake.shcema: unknown key; did you mean schema?",
                 "dimensions.custmer: unknown key; did you mean customer?",
                 "run.max_batch_rows: should be greater than 0 (found 0)"):
        assert f"  - {line}" in message, (line, message)
    # nothing close: the keys valid there
    assert "ray.zzzz: unknown key: the keys here are address, " in message


def test_a_secret_of_the_wrong_type_is_named_but_not_echoed(tmp_path: Path) -> None:
    raw = local_raw()
    raw["sinks"]["snowflake"] = {"password": 987654321}
    with pytest.raises(ConfigError) as caught:
        load_config(write_raw(tmp_path, raw))
    assert "  - sinks.snowflake.password: should be a valid string" in caught.value.message
    assert "987654321" not in caught.value.message


def test_the_state_folder_is_that_of_a_sqlite_file_only() -> None:
    from loader.config import StateConfig

    assert StateConfig(url="sqlite:////srv/data/state/loader.db?password=x").sqlite_folder == \
        Path("/srv/data/state")
    assert StateConfig(url="sqlite:///:memory:").sqlite_folder is None
    assert StateConfig(url="postgresql+psycopg://u@db/loader").sqlite_folder is None
