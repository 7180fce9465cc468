"""Row-local and dedupe transforms of the pipeline, on pyarrow Tables.

The in-process executor and Ray Data (`map_batches(batch_format="pyarrow")`) call the very same
functions, so every function takes and returns a `pa.Table`, works on any batch (an empty one gives an
empty table with the output schema) and uses `pyarrow.compute` only: no per-row Python. Money stays
decimal128 end to end; every product is cast to a declared precision/scale with a *safe* cast, so a value
that does not fit raises instead of being silently truncated or routed through float.

Pipeline order (see DESIGN.md): `dedupe_latest` needs the whole window, so it runs on its own;
`transform_fact` = `normalize_strings` -> `enrich_orders` / `enrich_lineitem` -> `attach_region` ->
`apply_region_rules`, all row-local, so any split of a window into batches gives the same rows.

Null handling, everywhere: a null input gives a null derived value (SQL semantics), never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from loader.errors import BadSourceData, ConfigError

__all__ = [
    "DEFAULT_REGION_RULES",
    "UNKNOWN_REGION",
    "Dimensions",
    "Kind",
    "RegionRule",
    "apply_region_rules",
    "attach_region",
    "dedupe_latest",
    "enrich_lineitem",
    "enrich_orders",
    "normalize_strings",
    "output_schema",
    "split_by_region",
    "transform_fact",
]

Kind = Literal["orders", "lineitem"]

#: Region of a row whose customer / supplier / nation is not in the dimensions. Such rows are kept.
UNKNOWN_REGION = "UNKNOWN"

# Declared TPC-H money type: inputs are cast to it (safely) so products never exceed 38 digits.
MONEY = pa.decimal128(15, 2)
DISCOUNTED_PRICE = pa.decimal128(18, 4)
CHARGE = pa.decimal128(22, 6)
FX_RATE = pa.decimal128(18, 6)
VAT_RATE = pa.decimal128(6, 4)
AMOUNT_LOCAL = pa.decimal128(24, 2)
_FX_SCALE = 6
_VAT_SCALE = 4
_MAX_DECIMAL128_PRECISION = 38

_REVENUE_TIERS = (("Small", "Medium", "Large", "Enterprise"), ("50000", "150000", "300000"))
_VOLUME_CATEGORIES = (("Low", "Medium", "High", "Bulk"), ("10", "50", "100"))
_URGENT_PRIORITIES = ("1-URGENT", "2-HIGH")
_PREMIUM_ACCTBAL = Decimal("5000")
_ENTERPRISE_ACCTBAL = Decimal("10000")

_STRINGISH = (pa.types.is_large_string, pa.types.is_string_view)


# --------------------------------------------------------------------------------------------------
# helpers


def _require(table: pa.Table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise BadSourceData(
            f"{what} is missing column(s) {missing} (it has {table.column_names}); the landing zone's "
            "files must carry the TPC-H columns: fix the files or the source's path in the config"
        )


def _put(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Append `name`, or replace it in place if present, so re-applying a transform is harmless."""
    index = table.schema.get_field_index(name)
    if index >= 0:
        return table.set_column(index, name, values)
    return table.append_column(name, values)


def _dec(value: str) -> pa.Scalar:
    """An exact decimal scalar of the smallest type holding `value` (comparisons widen exactly)."""
    d = Decimal(value)
    _, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    scale = max(-exponent, 0)
    precision = max(len(digits) + max(exponent, 0), scale, 1)
    return pa.scalar(d, pa.decimal128(precision, scale))


def _to_money(column: pa.ChunkedArray, name: str, target: pa.DataType = MONEY) -> pa.ChunkedArray:
    if not pa.types.is_decimal(column.type):
        raise BadSourceData(
            f"column {name} is {column.type}, but money must be decimal (never float): "
            "fix the landing zone's schema for that column"
        )
    try:
        return column.cast(target)
    except pa.ArrowInvalid as error:
        raise BadSourceData(
            f"column {name} holds values that do not fit {target}: {error}; "
            "fix or remove those rows in the landing zone"
        ) from error


def _safe_cast(values: pa.ChunkedArray | pa.Array, target: pa.DataType, name: str) -> pa.ChunkedArray:
    try:
        return values.cast(target)
    except pa.ArrowInvalid as error:
        raise BadSourceData(
            f"derived column {name} overflows {target}: {error}; "
            "fix or remove the rows with out-of-range amounts in the landing zone"
        ) from error


def _bin(values: pa.ChunkedArray, spec: tuple[tuple[str, ...], tuple[str, ...]]) -> pa.ChunkedArray:
    """Label each value by half-open bins [0, t1), [t1, t2), ..., [tn, inf); negative or null -> null.

    The bin index is the count of thresholds the value reaches, computed with exact decimal
    comparisons, then mapped to its label with one `take`.
    """
    labels, thresholds = spec
    index: pa.ChunkedArray | None = None
    for threshold in thresholds:
        reached = pc.greater_equal(values, _dec(threshold)).cast(pa.int8())
        index = reached if index is None else pc.add(index, reached)
    assert index is not None
    index = pc.if_else(pc.less(values, _dec("0")), pa.scalar(None, pa.int8()), index)
    return pc.take(pa.array(labels, pa.string()), index)


def _null_if_null(source: pa.ChunkedArray, values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.if_else(pc.is_null(source), pa.scalar(None, values.type), values)


# --------------------------------------------------------------------------------------------------
# strings


def normalize_strings(table: pa.Table) -> pa.Table:
    """Cast top-level string_view and large_string columns to plain string.

    tpchgen and some readers produce string_view, which several pyarrow kernels (take, filter on
    tables) reject; one string type also keeps batch schemas identical for concatenation and sinks.
    Returns the same table object when nothing needs casting.
    """
    fields = [
        f.with_type(pa.string()) if any(check(f.type) for check in _STRINGISH) else f for f in table.schema
    ]
    schema = pa.schema(fields, metadata=table.schema.metadata)
    if schema.equals(table.schema):
        return table
    return table.cast(schema)


# --------------------------------------------------------------------------------------------------
# dedupe


def dedupe_latest(table: pa.Table, *, key: Sequence[str], cursor: str) -> pa.Table:
    """One row per `key`: the row with the greatest `cursor` wins. Output sorted by `key` ascending.

    Tie-break (same key, same cursor): the row that comes LAST in input order wins. This relies on
    `pc.sort_indices` being a stable sort: after sorting by (key..., cursor) ascending, equal rows keep
    their input order, and the last row of each key run is taken (found by comparing each sorted key
    with its successor, vectorized). Feed batches in a deterministic order (e.g. file path, then row
    order) for a reproducible winner.

    Raises BadSourceData when a key or cursor value is null: such rows cannot be deduplicated or
    checkpointed. String columns are normalized first (take rejects string_view).
    """
    key = list(key)
    if not key:
        raise ValueError("dedupe_latest needs at least one key column")
    _require(table, [*key, cursor], "the batch to deduplicate")
    bad = [
        (name, table.column(name).null_count)
        for name in dict.fromkeys([*key, cursor])
        if table.column(name).null_count
    ]
    if bad:
        detail = ", ".join(f"{count} row(s) with a null {name}" for name, count in bad)
        raise BadSourceData(
            f"cannot deduplicate on key {key} and cursor {cursor}: found {detail}; every row needs a "
            "key and a cursor: fix or remove those rows in the landing zone"
        )
    table = normalize_strings(table)
    rows = table.num_rows
    if rows <= 1:
        return table
    sort_keys = [(name, "ascending") for name in key] + [(cursor, "ascending")]
    order = pc.sort_indices(table.select(list(dict.fromkeys([*key, cursor]))), sort_keys=sort_keys)
    sorted_keys = table.select(key).take(order)
    is_last: pa.Array | None = None
    for name in key:
        column = sorted_keys.column(name).combine_chunks()
        differs = pc.not_equal(column.slice(0, rows - 1), column.slice(1))
        is_last = differs if is_last is None else pc.or_(is_last, differs)
    assert is_last is not None
    is_last = pa.concat_arrays([is_last, pa.array([True])])
    return table.take(pc.filter(order, is_last))


# --------------------------------------------------------------------------------------------------
# enrichment


def enrich_orders(table: pa.Table) -> pa.Table:
    """Add order_year int16, order_quarter int8, order_month int8, is_large_order, is_urgent, revenue_tier.

    is_large_order = o_totalprice > 200000 and revenue_tier bins are exact decimal comparisons; a
    negative or null price has a null tier; a null priority has a null is_urgent.
    """
    _require(table, ["o_orderdate", "o_totalprice", "o_orderpriority"], "orders batch")
    date = table.column("o_orderdate")
    price = _to_money(table.column("o_totalprice"), "o_totalprice", table.schema.field("o_totalprice").type)
    priority = table.column("o_orderpriority")
    if any(check(priority.type) for check in _STRINGISH):
        priority = priority.cast(pa.string())
    table = _put(table, "order_year", pc.year(date).cast(pa.int16()))
    table = _put(table, "order_quarter", pc.quarter(date).cast(pa.int8()))
    table = _put(table, "order_month", pc.month(date).cast(pa.int8()))
    table = _put(table, "is_large_order", pc.greater(price, _dec("200000")))
    urgent = pc.is_in(priority, value_set=pa.array(_URGENT_PRIORITIES, pa.string()))
    table = _put(table, "is_urgent", _null_if_null(priority, urgent))
    return _put(table, "revenue_tier", _bin(price, _REVENUE_TIERS))


def enrich_lineitem(table: pa.Table) -> pa.Table:
    """Add discounted_price decimal128(18,4), charge decimal128(22,6), volume_category, ship_delay_days int32.

    discounted_price = l_extendedprice * (1 - l_discount) and charge = discounted_price * (1 + l_tax),
    both exact: operands are cast to decimal128(15,2) first so pyarrow's precision growth stays below 38
    digits ((15,2)*(16,2) -> (32,4); (18,4)*(16,2) -> (35,6)), then safely cast down to the declared
    type. ship_delay_days = l_receiptdate - l_shipdate in days (negative if received before shipped).
    """
    _require(
        table,
        ["l_extendedprice", "l_discount", "l_tax", "l_quantity", "l_shipdate", "l_receiptdate"],
        "lineitem batch",
    )
    extended = _to_money(table.column("l_extendedprice"), "l_extendedprice")
    discount = _to_money(table.column("l_discount"), "l_discount")
    tax = _to_money(table.column("l_tax"), "l_tax")
    one = _dec("1")
    discounted = _safe_cast(
        pc.multiply(extended, pc.subtract(one, discount)), DISCOUNTED_PRICE, "discounted_price"
    )
    charge = _safe_cast(pc.multiply(discounted, pc.add(one, tax)), CHARGE, "charge")
    quantity = table.column("l_quantity")
    if not pa.types.is_decimal(quantity.type) and not pa.types.is_integer(quantity.type):
        raise BadSourceData(
            f"column l_quantity is {quantity.type}, expected decimal or integer: "
            "fix the landing zone's schema for that column"
        )
    if pa.types.is_integer(quantity.type):
        quantity = quantity.cast(pa.decimal128(20, 0))
    delay = pc.days_between(table.column("l_shipdate"), table.column("l_receiptdate")).cast(pa.int32())
    table = _put(table, "discounted_price", discounted)
    table = _put(table, "charge", charge)
    table = _put(table, "volume_category", _bin(quantity, _VOLUME_CATEGORIES))
    return _put(table, "ship_delay_days", delay)


# --------------------------------------------------------------------------------------------------
# dimensions and region lookup


def _check_unique_keys(table: pa.Table, key: str, what: str) -> None:
    column = table.column(key)
    if column.null_count:
        raise BadSourceData(
            f"{what} has {column.null_count} row(s) with a null {key}: fix or remove those rows in "
            "the landing zone"
        )
    distinct = pc.count_distinct(column).as_py()
    if distinct != table.num_rows:
        raise BadSourceData(
            f"{what} has {table.num_rows - distinct} duplicate {key} value(s), so the lookup would be "
            "ambiguous: keep one row per key in the landing zone"
        )


def _lookup(keys: pa.ChunkedArray | pa.Array, value_set: pa.ChunkedArray) -> pa.ChunkedArray:
    """Row index of each key in `value_set` (null when absent or null). Preserves input order."""
    values = value_set.combine_chunks() if isinstance(value_set, pa.ChunkedArray) else value_set
    if keys.type != values.type:
        keys = keys.cast(values.type)
    return pc.index_in(keys, value_set=values, skip_nulls=True)


def _segment(acctbal: pa.ChunkedArray) -> pa.ChunkedArray:
    segment = pc.if_else(
        pc.greater(acctbal, _dec(str(_ENTERPRISE_ACCTBAL))),
        "enterprise",
        pc.if_else(pc.greater(acctbal, _dec(str(_PREMIUM_ACCTBAL))), "premium", "standard"),
    )
    return _null_if_null(acctbal, segment.cast(pa.string()))


@dataclass(frozen=True, eq=False)
class Dimensions:
    """Small lookup tables for the region lookup, pre-joined once so each batch needs one lookup.

    customers: c_custkey, c_name, c_phone, c_acctbal, c_nationkey, customer_segment, nation, region
    suppliers: s_suppkey, s_nationkey, nation, region
    nations:   n_nationkey, n_name, r_name
    `nation`/`region` are null here when the nation or region is missing; `attach_region` turns a
    null region into UNKNOWN. Plain Arrow tables, so the object pickles (Ray broadcasts it).
    Equality is identity (tables are not hashable); compare the tables to compare contents.
    """

    customers: pa.Table
    suppliers: pa.Table
    nations: pa.Table

    def __repr__(self) -> str:
        return (
            f"Dimensions(customers={self.customers.num_rows} rows, suppliers={self.suppliers.num_rows} rows, "
            f"nations={self.nations.num_rows} rows)"
        )

    @classmethod
    def from_tables(
        cls, customer: pa.Table, supplier: pa.Table, nation: pa.Table, region: pa.Table
    ) -> Dimensions:
        """Build from whole TPC-H dimension tables (extra columns are ignored).

        Raises BadSourceData on missing columns, null keys or duplicate keys (an ambiguous lookup).
        """
        _require(customer, ["c_custkey", "c_name", "c_phone", "c_acctbal", "c_nationkey"], "customer")
        _require(supplier, ["s_suppkey", "s_nationkey"], "supplier")
        _require(nation, ["n_nationkey", "n_name", "n_regionkey"], "nation")
        _require(region, ["r_regionkey", "r_name"], "region")
        customer = normalize_strings(
            customer.select(["c_custkey", "c_name", "c_phone", "c_acctbal", "c_nationkey"])
        )
        supplier = normalize_strings(supplier.select(["s_suppkey", "s_nationkey"]))
        nation = normalize_strings(nation.select(["n_nationkey", "n_name", "n_regionkey"]))
        region = normalize_strings(region.select(["r_regionkey", "r_name"]))
        for table, key, what in (
            (customer, "c_custkey", "customer"),
            (supplier, "s_suppkey", "supplier"),
            (nation, "n_nationkey", "nation"),
            (region, "r_regionkey", "region"),
        ):
            _check_unique_keys(table, key, what)

        region_index = _lookup(nation.column("n_regionkey"), region.column("r_regionkey"))
        nations = pa.table(
            {
                "n_nationkey": nation.column("n_nationkey"),
                "n_name": nation.column("n_name"),
                "r_name": pc.take(region.column("r_name"), region_index),
            }
        ).combine_chunks()

        def with_geo(table: pa.Table, nation_key: str) -> pa.Table:
            index = _lookup(table.column(nation_key), nations.column("n_nationkey"))
            table = table.append_column("nation", pc.take(nations.column("n_name"), index))
            return table.append_column("region", pc.take(nations.column("r_name"), index))

        customers = customer.append_column("customer_segment", _segment(customer.column("c_acctbal")))
        return cls(
            customers=with_geo(customers, "c_nationkey").combine_chunks(),
            suppliers=with_geo(supplier, "s_nationkey").combine_chunks(),
            nations=nations,
        )

    @classmethod
    def empty(cls) -> Dimensions:
        """No rows, TPC-H types: every lookup misses (region UNKNOWN). Used to derive output schemas."""
        return cls.from_tables(
            pa.schema(
                [
                    ("c_custkey", pa.int64()),
                    ("c_name", pa.string()),
                    ("c_phone", pa.string()),
                    ("c_acctbal", MONEY),
                    ("c_nationkey", pa.int64()),
                ]
            ).empty_table(),
            pa.schema([("s_suppkey", pa.int64()), ("s_nationkey", pa.int64())]).empty_table(),
            pa.schema(
                [("n_nationkey", pa.int64()), ("n_name", pa.string()), ("n_regionkey", pa.int64())]
            ).empty_table(),
            pa.schema([("r_regionkey", pa.int64()), ("r_name", pa.string())]).empty_table(),
        )


def attach_region(table: pa.Table, *, kind: Kind, dims: Dimensions) -> pa.Table:
    """Add the customer / geography columns by key lookup (index_in + take): input row order is kept.

    orders:   c_name, c_phone, customer_segment, nation, region   (via o_custkey -> customer -> nation)
    lineitem: nation, region                                       (via l_suppkey -> supplier -> nation)
    A row whose customer/supplier/nation/region is unknown is kept, with null nation and region
    'UNKNOWN' (and null customer columns): never dropped.
    """
    if kind == "orders":
        _require(table, ["o_custkey"], "orders batch")
        lookup = dims.customers
        index = _lookup(table.column("o_custkey"), lookup.column("c_custkey"))
        added = ["c_name", "c_phone", "customer_segment", "nation"]
    elif kind == "lineitem":
        _require(table, ["l_suppkey"], "lineitem batch")
        lookup = dims.suppliers
        index = _lookup(table.column("l_suppkey"), lookup.column("s_suppkey"))
        added = ["nation"]
    else:
        raise ValueError(f"kind must be 'orders' or 'lineitem', not {kind!r}")
    for name in added:
        table = _put(table, name, pc.take(lookup.column(name), index))
    region = pc.fill_null(pc.take(lookup.column("region"), index), UNKNOWN_REGION)
    return _put(table, "region", region)


# --------------------------------------------------------------------------------------------------
# per-region rules


def _decimal_option(value: object, name: str, scale: int, integer_digits: int) -> Decimal:
    if isinstance(value, (float, bool)):
        raise ConfigError(f'{name}={value!r}: write it as a string (e.g. "18.25"), never a float')
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation as error:
        raise ConfigError(f"{name}={value!r} is not a decimal number: fix it in the config") from error
    if not number.is_finite() or number < 0:
        raise ConfigError(f"{name}={value!r} must be a finite number >= 0: fix it in the config")
    if number != number.quantize(Decimal(1).scaleb(-scale), rounding="ROUND_DOWN"):
        raise ConfigError(f"{name}={value!r} has more than {scale} decimal places: round it in the config")
    if number >= Decimal(10) ** integer_digits:
        raise ConfigError(f"{name}={value!r} is too large (max {integer_digits} integer digits)")
    return number


@dataclass(frozen=True)
class RegionRule:
    """Per-region rules: currency code, fx_rate (local units per USD, <= 6 decimals), vat_rate (a
    fraction, <= 4 decimals, < 1) and the columns masked for rows of that region.

    Strings and ints are accepted for the rates and converted to Decimal; floats are refused
    (ConfigError), since money never goes through float.
    """

    currency: str
    fx_rate: Decimal
    vat_rate: Decimal
    mask_columns: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or not self.currency:
            raise ConfigError(f"currency={self.currency!r} must be a currency code such as 'EUR'")
        fx = _decimal_option(self.fx_rate, "fx_rate", _FX_SCALE, FX_RATE.precision - _FX_SCALE)
        if fx == 0:
            raise ConfigError("fx_rate must be > 0 (local units per USD): fix it in the config")
        vat = _decimal_option(self.vat_rate, "vat_rate", _VAT_SCALE, VAT_RATE.precision - _VAT_SCALE)
        if vat >= 1:
            raise ConfigError(f"vat_rate={self.vat_rate!r} is a fraction: write 0.20 for 20%")
        if isinstance(self.mask_columns, str):
            raise ConfigError(f"mask_columns={self.mask_columns!r} must be a list of column names")
        object.__setattr__(self, "fx_rate", fx)
        object.__setattr__(self, "vat_rate", vat)
        object.__setattr__(self, "mask_columns", tuple(self.mask_columns))


#: Defaults matching configs/local.yaml (rates are illustrative, not market data).
DEFAULT_REGION_RULES: dict[str, RegionRule] = {
    "AFRICA": RegionRule("ZAR", Decimal("18.250000"), Decimal("0.1500")),
    "AMERICA": RegionRule("USD", Decimal("1.000000"), Decimal("0.0000")),
    "ASIA": RegionRule("JPY", Decimal("151.500000"), Decimal("0.1000")),
    "EUROPE": RegionRule("EUR", Decimal("0.920000"), Decimal("0.2000"), ("c_name", "c_phone")),
    "MIDDLE EAST": RegionRule("AED", Decimal("3.672500"), Decimal("0.0500")),
}


def _combine(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _mask(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Keep the last 4 characters, replace the others with '*' (same length in characters).

    Values of 4 characters or fewer are left as they are; null stays null.
    """
    hidden = pc.max_element_wise(pc.subtract(pc.utf8_length(values), 4), 0)
    return pc.binary_join_element_wise(
        pc.binary_repeat("*", hidden), pc.utf8_slice_codeunits(values, start=-4), ""
    )


def _integer_digits(value: Decimal) -> int:
    return max(len(str(int(value))), 1)


def _decimal_places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(-exponent, 0)


def apply_region_rules(
    table: pa.Table, *, kind: Kind, rules: Mapping[str, RegionRule], amount_column: str
) -> pa.Table:
    """Add currency, fx_rate decimal128(18,6), vat_rate decimal128(6,4) and
    amount_local decimal128(24,2) = round_half_even(amount * fx_rate, 2), and mask the rule's columns.

    Vectorized without splitting: each row's rule is found by one index_in on `region`, its values
    gathered with take, so row order is preserved. Masking computes the masked strings for the rows
    whose region masks that column only and scatters them back (replace_with_mask); columns named by a rule but absent from the table are ignored (lineitem has no
    c_name). A region without a rule (e.g. UNKNOWN) gets null currency/fx/vat/amount_local and no mask.
    The product is computed exactly: in decimal128 when its precision fits 38 digits (fx_rate is
    narrowed to the digits the rules need), otherwise in decimal256.
    `kind` is accepted for symmetry with the other transforms; the rules do not depend on it.
    """
    if kind not in ("orders", "lineitem"):
        raise ValueError(f"kind must be 'orders' or 'lineitem', not {kind!r}")
    _require(table, ["region", amount_column], f"{kind} batch")
    region = table.column("region")
    if any(check(region.type) for check in _STRINGISH):
        region = region.cast(pa.string())
    amount = table.column(amount_column)
    if not pa.types.is_decimal(amount.type):
        raise BadSourceData(
            f"column {amount_column} is {amount.type}, but money must be decimal (never float): "
            "fix the landing zone's schema or the transform order"
        )
    names = list(rules)
    index = _lookup(region, pa.chunked_array([pa.array(names, pa.string())]))
    fx_values = [rules[n].fx_rate for n in names]

    currency = pc.take(pa.array([rules[n].currency for n in names], pa.string()), index)
    fx_rate = pc.take(pa.array(fx_values, FX_RATE), index)
    vat_rate = pc.take(pa.array([rules[n].vat_rate for n in names], VAT_RATE), index)

    # Narrow fx_rate to the digits the rules use: the product stays in fast decimal128 and has fewer
    # digits to round (exact either way: these casts only drop zeros).
    fx_scale = max((_decimal_places(v) for v in fx_values), default=0)
    fx_precision = max((_integer_digits(v) for v in fx_values), default=1) + fx_scale
    product_precision = amount.type.precision + fx_precision + 1
    if product_precision <= _MAX_DECIMAL128_PRECISION:
        product = pc.multiply(amount, fx_rate.cast(pa.decimal128(fx_precision, fx_scale)))
    else:
        product = pc.multiply(
            amount.cast(pa.decimal256(amount.type.precision, amount.type.scale)),
            fx_rate.cast(pa.decimal256(fx_precision, fx_scale)),
        )
    rounded = pc.round(product, ndigits=2, round_mode="half_to_even")
    amount_local = _safe_cast(rounded, AMOUNT_LOCAL, "amount_local")

    masked_by: dict[str, list[str]] = {}
    for name in names:
        for column in rules[name].mask_columns:
            masked_by.setdefault(column, []).append(name)
    for column, regions in sorted(masked_by.items()):
        if column not in table.column_names:
            continue
        values = table.column(column)
        if any(check(values.type) for check in _STRINGISH):
            values = values.cast(pa.string())
        if not pa.types.is_string(values.type):
            raise ConfigError(
                f"region rules mask column {column}, which is {values.type}, not a string: "
                "remove it from mask_columns or mask a string column"
            )
        rows = pc.is_in(region, value_set=pa.array(regions, pa.string()))
        if not pc.any(rows).as_py():
            continue
        # mask only the rows that need it, then scatter them back in place (row order kept)
        rows, values = _combine(rows), _combine(values)
        table = _put(table, column, pc.replace_with_mask(values, rows, _mask(pc.filter(values, rows))))

    table = _put(table, "currency", currency)
    table = _put(table, "fx_rate", fx_rate)
    table = _put(table, "vat_rate", vat_rate)
    return _put(table, "amount_local", amount_local)


# --------------------------------------------------------------------------------------------------
# fan-out and the whole row-local chain


def split_by_region(table: pa.Table) -> dict[str, pa.Table]:
    """One table per distinct `region` value, keys sorted, input row order kept within each.

    A null region (only possible when attach_region was skipped) is filed, and filled, as UNKNOWN.
    An empty table gives an empty dict.
    """
    _require(table, ["region"], "the batch to split by region")
    region = table.column("region")
    if region.null_count:
        region = pc.fill_null(region, UNKNOWN_REGION)
        table = _put(table, "region", region)
    values = sorted(v for v in pc.unique(region).to_pylist() if v is not None)
    if len(values) == 1:
        return {values[0]: table}
    return {value: table.filter(pc.equal(region, value)) for value in values}


_ENRICH: dict[str, Callable[[pa.Table], pa.Table]] = {
    "orders": enrich_orders,
    "lineitem": enrich_lineitem,
}
_AMOUNT_COLUMN = {"orders": "o_totalprice", "lineitem": "charge"}


def transform_fact(
    table: pa.Table, *, kind: Kind, dims: Dimensions, rules: Mapping[str, RegionRule]
) -> pa.Table:
    """normalize_strings -> enrich_<kind> -> attach_region -> apply_region_rules. Row-local."""
    if kind not in _ENRICH:
        raise ValueError(f"kind must be 'orders' or 'lineitem', not {kind!r}")
    table = _ENRICH[kind](normalize_strings(table))
    table = attach_region(table, kind=kind, dims=dims)
    return apply_region_rules(table, kind=kind, rules=rules, amount_column=_AMOUNT_COLUMN[kind])


def output_schema(kind: Kind, input_schema: pa.Schema) -> pa.Schema:
    """The schema `transform_fact` gives for batches of `input_schema` (for sinks that create tables
    up front). Derived by running the chain on an empty table: types depend on neither dims nor rules.
    """
    return transform_fact(input_schema.empty_table(), kind=kind, dims=Dimensions.empty(), rules={}).schema
