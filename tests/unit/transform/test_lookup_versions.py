"""Every version of the prepared dimension lookups, kept as changes (loader/transform/lookup_versions.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from loader.transform.lookup_cache import pack
from loader.transform.lookup_versions import VersionLookups, apply, diff
from loader.transform.lookups import Lookups
from state import StateStore


def prepared(customers: dict[int, tuple[str, str | None, int]], suppliers: dict[int, int]) -> Lookups:
    """customers: key -> (name, phone, nation key); suppliers: key -> nation key."""
    keys = list(customers)
    return Lookups.from_tables(
        pa.table({"c_custkey": keys, "c_name": [customers[k][0] for k in keys],
                  "c_phone": pa.array([customers[k][1] for k in keys], pa.string()),
                  "c_acctbal": pa.array(["1.50"] * len(keys)).cast(pa.decimal128(15, 2)),
                  "c_nationkey": [customers[k][2] for k in keys]}),
        pa.table({"s_suppkey": list(suppliers), "s_nationkey": list(suppliers.values())}),
        pa.table({"n_nationkey": [0, 1], "n_name": ["KENYA", "JAPAN"], "n_regionkey": [0, 1]}),
        pa.table({"r_regionkey": [0, 1], "r_name": ["AFRICA", "ASIA"]}))


def same(a: Lookups, b: Lookups) -> bool:
    return all(getattr(a, part).equals(getattr(b, part)) for part in ("customers", "suppliers", "nations"))


V1 = prepared({1: ("a", "11", 0), 2: ("b", None, 0), 3: ("c", "33", 1)}, {7: 0, 8: 1})
# customer 1 moved to ASIA, 2's phone went from null to a value, 3 left, 4 came; supplier 8 left
V2 = prepared({1: ("a", "11", 1), 2: ("b", "22", 0), 4: ("d", "44", 0)}, {7: 0})
V3 = prepared({1: ("a", "11", 1), 2: ("b", None, 0), 4: ("d", "44", 0)}, {7: 0, 9: 1})


def test_a_delta_holds_only_what_changed_and_rebuilds_the_version_exactly() -> None:
    assert same(apply(V1, diff(V1, V2)), V2) and same(apply(V2, diff(V2, V1)), V1)
    assert same(apply(V2, diff(V2, V3)), V3)
    assert same(apply(V1, diff(V1, V1)), V1)
    from loader.transform.lookup_cache import unpack_tables

    changed_customers, removed_customers, changed_suppliers, removed_suppliers, *_ = unpack_tables(
        diff(V1, V2))
    assert changed_customers["c_custkey"].to_pylist() == [1, 2, 4]  # moved, null -> value, new
    assert removed_customers["c_custkey"].to_pylist() == [3]
    assert changed_suppliers.num_rows == 0 and removed_suppliers["s_suppkey"].to_pylist() == [8]
    assert len(diff(V1, V1)) < len(pack(V1))


def test_any_kept_version_is_rebuilt_from_the_state_store(tmp_path: Path) -> None:
    """v1 whole (no base), v2 and v3 as deltas whose whole lookups were dropped: each comes back as it
    was, walked in order or not; a version with neither is None."""
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.record_lookup_version("p", "v1", b"r", pack(V1))
        store.record_lookup_version("p", "v2", b"r", pack(V2), base="v1", delta=diff(V1, V2))
        store.record_lookup_version("p", "v3", b"r", pack(V3), base="v2", delta=diff(V2, V3))
        store.record_lookup_version("p", "lost", b"r")
        assert store.drop_prepared_lookups("p", keep=set()) == 2  # v2 and v3; v1 is the base of all
        versions = VersionLookups(store, "p")
        assert versions.order(["v3", "lost", "v1", "v2"]) == ["v1", "v2", "v3", "lost"]
        assert [versions.recoverable(v) for v in ("v1", "v2", "v3", "lost", "never")] == [
            True, True, True, False, False]
        for version, want in (("v3", V3), ("v1", V1), ("v2", V2), ("v3", V3), ("v3", V3)):
            got = versions.get(version)
            assert got is not None and same(got, want), version
        assert versions.get("lost") is None and versions.get("never") is None
