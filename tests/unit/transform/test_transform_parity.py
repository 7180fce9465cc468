"""Every transform on both engines over the same fixture: the GPU (cuDF) must give exactly what the CPU
(pandas over Arrow) gives, values and types. Runs where cuDF and a CUDA device are usable; elsewhere the
parity cases are skipped with the reason, and the CPU engine is tested by
tests/unit/transform/test_transforms.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal as D
from typing import Any

import pyarrow as pa
import pytest

from loader.transform import facts as transforms
from loader.transform.facts import (
    apply_region_rules,
    attach_region,
    customer_segment,
    enrich_lineitem,
    enrich_orders,
    on_table,
    transform_fact,
)
from loader.transform.frames import frames_for, gpu_status
from loader.transform.lookups import Lookups
from loader.transform.region_rules import DEFAULT_REGION_RULES

GPU = gpu_status()
needs_gpu = pytest.mark.skipif(not GPU.usable,
                               reason=f"GPU parity needs cuDF and a CUDA device: {GPU.detail}")
may_skip = pytest.mark.may_skip  # a machine without a GPU: not a missing environment

MONEY = pa.decimal128(15, 2)
TS = pa.timestamp("us", tz="UTC")


def _money(values: list[str | None]) -> pa.Array:
    return pa.array([None if v is None else D(v) for v in values], MONEY)


def _orders() -> pa.Table:
    """Tier boundaries, null and negative prices, urgent/null priorities, unknown and null customers."""
    prices = ["49999.99", "50000.00", "149999.99", "150000.00", "200000.00", "200000.01", "300000.00", None,
              "-1.00", "0.00"]
    n = len(prices)
    return pa.table({
        "o_orderkey": pa.array(range(1, n + 1), pa.int64()),
        "o_custkey": pa.array([1, 2, 3, 99, 1, 2, None, 3, 1, 2], pa.int64()),
        "o_orderstatus": pa.array(["O"] * n, pa.string_view()),
        "o_totalprice": _money(prices),
        "o_orderdate": pa.array([dt.date(2024, m, 28) for m in range(1, n + 1)], pa.date32()),
        "o_orderpriority": pa.array(["1-URGENT", "2-HIGH", "3-MEDIUM", None, "5-LOW"] * 2, pa.large_string()),
        "o_clerk": pa.array(["Clerk#000000001"] * n, pa.string()),
        "o_shippriority": pa.array([0] * n, pa.int32()),
        "o_comment": pa.array(["a comment"] * n, pa.string()),
        "o_updated_at": pa.array([dt.datetime(2024, 2, 1, h, tzinfo=dt.UTC) for h in range(n)], TS),
    })


def _lineitem() -> pa.Table:
    """Volume boundaries, null money, receipt before ship, unknown suppliers."""
    quantities = ["1.00", "9.99", "10.00", "49.00", "50.00", "99.00", "100.00", None]
    n = len(quantities)
    return pa.table({
        "l_orderkey": pa.array([1] * n, pa.int64()),
        "l_suppkey": pa.array([1, 2, 3, 99, 1, 2, 3, 1], pa.int64()),
        "l_linenumber": pa.array(range(1, n + 1), pa.int32()),
        "l_quantity": _money(quantities),
        "l_extendedprice": _money(["100.00", "99999.99", "0.01", None, "12345.67", "1.00", "2.50", "3.33"]),
        "l_discount": _money(["0.00", "0.10", "0.05", "0.04", None, "0.01", "0.02", "0.03"]),
        "l_tax": _money(["0.00", "0.08", "0.07", "0.06", "0.05", None, "0.03", "0.02"]),
        "l_shipdate": pa.array([dt.date(2024, 1, 10)] * n, pa.date32()),
        "l_receiptdate": pa.array([dt.date(2024, 1, d) for d in (1, 9, 10, 11, 20, 31, 15, 12)], pa.date32()),
        "l_comment": pa.array(["c"] * n, pa.string_view()),
        "l_updated_at": pa.array([dt.datetime(2024, 2, 1, h, tzinfo=dt.UTC) for h in range(n)], TS),
    })


def _customers() -> pa.Table:
    return pa.table({
        "c_custkey": pa.array([1, 2, 3, 4], pa.int64()),
        "c_name": ["Customer#000000001", "Zoë Müller", "Ann", None],
        "c_phone": ["25-989-741-2988", "11-719-748-3364", "12", "1234"],
        "c_acctbal": _money(["5000.00", "5000.01", "10000.01", None]),
        "c_nationkey": pa.array([7, 1, 42, 7], pa.int64()),
    })


def _dims() -> Lookups:
    return Lookups.from_tables(
        _customers(),
        pa.table({"s_suppkey": pa.array([1, 2, 3], pa.int64()),
                  "s_nationkey": pa.array([7, 1, 5], pa.int64())}),
        pa.table({"n_nationkey": pa.array([1, 7, 5], pa.int64()),
                  "n_name": ["ARGENTINA", "GERMANY", "ATLANTIS"],
                  "n_regionkey": pa.array([1, 3, 9], pa.int64())}),
        pa.table({"r_regionkey": pa.array([0, 1, 3], pa.int64()), "r_name": ["AFRICA", "AMERICA", "EUROPE"]}),
    )


def _cases() -> dict[str, tuple[Callable[..., Any], Callable[[], pa.Table], dict[str, Any]]]:
    dims = _dims()
    orders_with_region = on_table(attach_region, on_table(enrich_orders, _orders()), kind="orders", dims=dims)
    lineitem_with_region = on_table(attach_region, on_table(enrich_lineitem, _lineitem()), kind="lineitem",
                                    dims=dims)
    return {
        "enrich_orders": (enrich_orders, _orders, {}),
        "enrich_lineitem": (enrich_lineitem, _lineitem, {}),
        "customer_segment": (customer_segment, _customers, {}),
        "attach_region orders": (attach_region, _orders, {"kind": "orders", "dims": dims}),
        "attach_region lineitem": (attach_region, _lineitem, {"kind": "lineitem", "dims": dims}),
        "apply_region_rules orders": (apply_region_rules, lambda: orders_with_region,
                                      {"kind": "orders", "rules": DEFAULT_REGION_RULES,
                                       "amount_column": "o_totalprice"}),
        "apply_region_rules lineitem": (apply_region_rules, lambda: lineitem_with_region,
                                        {"kind": "lineitem", "rules": DEFAULT_REGION_RULES,
                                         "amount_column": "charge"}),
    }


CASES = list(_cases())


def test_parity_covers_every_transform() -> None:
    """A transform added to the module without a parity case fails here, on every machine."""
    covered = {case.split()[0] for case in CASES} | {"on_table", "output_schema", "transform_fact", "Kind"}
    assert set(transforms.__all__) <= covered, set(transforms.__all__) - covered


@needs_gpu
@may_skip
@pytest.mark.parametrize("case", CASES)
def test_transform_gives_identical_rows_and_types_on_gpu(case: str) -> None:
    transform, make, options = _cases()[case]
    cpu = on_table(transform, make(), frames_for("cpu"), **options)
    gpu = on_table(transform, make(), frames_for("gpu"), **options)
    assert gpu.schema == cpu.schema
    assert gpu.equals(cpu), f"{case}: the GPU's rows differ from the CPU's"


@needs_gpu
@may_skip
@pytest.mark.parametrize("kind", ["orders", "lineitem"])
@pytest.mark.parametrize("rows", [0, 1, None])
def test_transform_fact_identical_on_gpu(kind: str, rows: int | None) -> None:
    table = _orders() if kind == "orders" else _lineitem()
    table = table if rows is None else table.slice(0, rows)
    dims = _dims()
    cpu = transform_fact(table, kind=kind, dims=dims, rules=DEFAULT_REGION_RULES, frames=frames_for("cpu"))  # type: ignore[arg-type]
    gpu = transform_fact(table, kind=kind, dims=dims, rules=DEFAULT_REGION_RULES, frames=frames_for("gpu"))  # type: ignore[arg-type]
    assert gpu.schema == cpu.schema
    assert gpu.equals(cpu)


def test_cpu_fixture_values_are_the_documented_ones() -> None:
    """The parity fixture exercises what it claims (so a GPU machine compares non-trivial rows)."""
    dims = _dims()
    orders = transform_fact(_orders(), kind="orders", dims=dims, rules=DEFAULT_REGION_RULES)
    assert orders.column("revenue_tier").to_pylist() == [
        "Small", "Medium", "Medium", "Large", "Large", "Large", "Enterprise", None, None, "Small"]
    assert orders.column("is_urgent").to_pylist() == [True, True, False, None, False] * 2
    assert (orders.column("region").to_pylist()[3] == "UNKNOWN"
            and orders.column("region").to_pylist()[6] == "UNKNOWN")
    assert orders.column("c_name").to_pylist()[0] == "**************0001"  # EUROPE masks c_name
    lineitem = transform_fact(_lineitem(), kind="lineitem", dims=dims, rules=DEFAULT_REGION_RULES)
    assert lineitem.column("ship_delay_days").to_pylist() == [-9, -1, 0, 1, 10, 21, 5, 2]
    assert lineitem.column("volume_category").to_pylist() == [
        "Low", "Low", "Medium", "Medium", "High", "High", "Bulk", None]
    assert lineitem.column("charge").to_pylist()[1] == D("97199.990280")  # 99999.99 * 0.90 * 1.08
    segments = on_table(customer_segment, _customers()).column("customer_segment").to_pylist()
    assert segments == ["standard", "premium", "enterprise", None]
