"""The enrichment and per-region transforms, written once against the DataFrame API pandas and cuDF share.

Each transform takes a frame and the `Frames` backend it lives in (loader/transform/frames.py: pandas with
Arrow-backed columns on the CPU, cuDF on the GPU), adds or replaces columns and returns the frame.
Nothing here imports either library: the backend is passed in, chosen once per run. `on_table` runs
one transform on a pyarrow Table; `transform_fact` runs the row-local chain
enrich_<kind> -> attach_region -> apply_region_rules, converting Arrow in and out once. In that chain,
what depends on the region alone (the rule's currency and rates, the masking of looked-up columns) is
worked out once per dimension row and looked up with the rest (`_region_and_rules`): same result.

Exactness, on both libraries: money stays decimal (a float column is refused); comparisons use exact
Decimal scalars; every derived decimal is checked against its declared precision before the cast
(`_fit`), so a value that does not fit raises BadSourceData instead of wrapping or truncating, which
cuDF's casts would do silently; rounding is half to even.

Null handling, everywhere: a null input gives a null derived value (SQL semantics), never a guess.
Rows are never reordered or dropped, so any split of a window into batches gives the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING

import pyarrow as pa

from loader.errors import BadSourceData, ConfigError
from loader.kinds import FACT_KINDS, UNKNOWN_REGION, fact_kind
from loader.landing.sources import normalize_strings
from loader.transform.decimal_rules import customer_segment, decimal_type, labels
from loader.transform.frames import Frame, Frames, PandasFrames, Series, frames_for, on_table
from loader.transform.region_rules import FX_RATE, VAT_RATE, RegionRule
from loader.transform.tables import MONEY, require_columns

if TYPE_CHECKING:
    from loader.transform.lookups import Lookups

__all__ = [
    "apply_region_rules",
    "attach_region",
    "customer_segment",
    "enrich_lineitem",
    "enrich_orders",
    "on_table",
    "output_schema",
    "transform_fact",
]

DISCOUNTED_PRICE = pa.decimal128(18, 4)
CHARGE = pa.decimal128(22, 6)
AMOUNT_LOCAL = pa.decimal128(24, 2)
_MAX_DECIMAL128_PRECISION = 38

_REVENUE_TIERS = (("Small", "Medium", "Large", "Enterprise"), ("50000", "150000", "300000"))
_VOLUME_CATEGORIES = (("Low", "Medium", "High", "Bulk"), ("10", "50", "100"))
_URGENT_PRIORITIES = ["1-URGENT", "2-HIGH"]


# --------------------------------------------------------------------------------------------------
# helpers


def _fit(values: Series, target: pa.DataType, name: str, b: Frames, *, derived: bool = True,
         rounded: bool = False) -> Series:
    """`values` cast to the decimal `target`, after checking that every value fits its integer digits
    and (unless the caller just `rounded` them to the target's scale) loses no decimal place: both
    libraries would otherwise round, truncate or wrap."""
    source = b.arrow_type(values)
    integer_digits = target.precision - target.scale
    # Skipped when the source type cannot exceed it (cuDF also refuses a scalar wider than the column).
    too_large = source.precision - source.scale > integer_digits and bool(
        (values.abs() >= Decimal(10) ** integer_digits).any())
    loses_digits = (not rounded and source.scale > target.scale
                    and bool((values.round(target.scale) != values).any()))
    if too_large or loses_digits:
        what = f"derived column {name}" if derived else f"column {name}"
        problem = "overflows" if too_large else "has more decimal places than"
        raise BadSourceData(
            f"{what} {problem} {target}; fix or remove the rows with out-of-range amounts in the landing zone"
        )
    return values.astype(b.dtype(target))


def _money(values: Series, name: str, b: Frames, target: pa.DataType = MONEY) -> Series:
    decimal_type(values, b, name)
    return _fit(values, target, name, b, derived=False)


def _string(values: Series, name: str, b: Frames, what: str) -> Series:
    arrow_type = b.arrow_type(values)
    if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)):
        raise ConfigError(f"{what} column {name}, which is {arrow_type}, not a string: "
                          "remove it from mask_columns or mask a string column")
    return values


def _mapped(keys: Series, lookup: Series) -> Series:
    """lookup's value for each key (null when absent), in key order, typed as lookup even when empty."""
    return keys.map(lookup).astype(lookup.dtype)


# --------------------------------------------------------------------------------------------------
# enrichment


def enrich_orders(df: Frame, b: Frames) -> Frame:
    """Add order_year int16, order_quarter int8, order_month int8, is_large_order, is_urgent, revenue_tier.

    is_large_order = o_totalprice > 200000 and revenue_tier bins are exact decimal comparisons; a
    negative or null price has a null tier; a null priority has a null is_urgent.
    """
    require_columns(["o_orderdate", "o_totalprice", "o_orderpriority"], list(df.columns), "orders batch")
    date = df["o_orderdate"]
    price = df["o_totalprice"]
    decimal_type(price, b, "o_totalprice")
    priority = df["o_orderpriority"]
    df["order_year"] = date.dt.year.astype(b.dtype(pa.int16()))
    df["order_quarter"] = date.dt.quarter.astype(b.dtype(pa.int8()))
    df["order_month"] = date.dt.month.astype(b.dtype(pa.int8()))
    df["is_large_order"] = price > Decimal("200000")
    urgent = priority.isin(_URGENT_PRIORITIES).astype(b.dtype(pa.bool_()))
    df["is_urgent"] = urgent.where(priority.notna(), None)
    df["revenue_tier"] = labels(price, _REVENUE_TIERS, b)
    return df


def enrich_lineitem(df: Frame, b: Frames) -> Frame:
    """Add discounted_price decimal128(18,4), charge decimal128(22,6), volume_category, ship_delay_days int32.

    discounted_price = l_extendedprice * (1 - l_discount) and charge = discounted_price * (1 + l_tax),
    both exact: operands are cast to decimal128(15,2) first so precision growth stays below 38 digits
    ((15,2)*(16,2) -> (32,4); (18,4)*(16,2) -> (35,6)), then checked and cast down to the declared
    type. ship_delay_days = l_receiptdate - l_shipdate in days (negative if received before shipped).
    """
    require_columns(
        ["l_extendedprice", "l_discount", "l_tax", "l_quantity", "l_shipdate", "l_receiptdate"],
        list(df.columns), "lineitem batch",
    )
    extended = _money(df["l_extendedprice"], "l_extendedprice", b)
    discount = _money(df["l_discount"], "l_discount", b)
    tax = _money(df["l_tax"], "l_tax", b)
    one = Decimal("1")
    discounted = _fit(extended * (one - discount), DISCOUNTED_PRICE, "discounted_price", b)
    charge = _fit(discounted * (one + tax), CHARGE, "charge", b)
    quantity = df["l_quantity"]
    quantity_type = b.arrow_type(quantity)
    if pa.types.is_integer(quantity_type):
        quantity = quantity.astype(b.dtype(pa.decimal128(20, 0)))
    elif not pa.types.is_decimal(quantity_type):
        raise BadSourceData(
            f"column l_quantity is {quantity_type}, expected decimal or integer: "
            "fix the landing zone's schema for that column"
        )
    delay = (df["l_receiptdate"] - df["l_shipdate"]).dt.days.astype(b.dtype(pa.int32()))
    df["discounted_price"] = discounted
    df["charge"] = charge
    df["volume_category"] = labels(quantity, _VOLUME_CATEGORIES, b)
    df["ship_delay_days"] = delay
    return df


# --------------------------------------------------------------------------------------------------
# region lookup


def attach_region(df: Frame, b: Frames, *, kind: str, dims: Lookups) -> Frame:
    """Add the customer / geography columns by key lookup (the dimension indexed by its key, keys
    found once for all columns: `Frames.gather`): input row order is kept.

    orders:   c_name, c_phone, customer_segment, nation, region   (via o_custkey -> customer -> nation)
    lineitem: nation, region                                       (via l_suppkey -> supplier -> nation)
    A row whose customer/supplier/nation/region is unknown is kept, with null nation and region
    'UNKNOWN' (and null customer columns): never dropped.
    """
    df, _ = _attach(df, b, kind=kind, dims=dims)
    return df


def _attach(df: Frame, b: Frames, *, kind: str, dims: Lookups,
            prepare: Callable[[Frame], Frame] | None = None,
            extra: Sequence[str] = ()) -> tuple[Frame, dict[str, Series]]:
    """attach_region; with `prepare`, the lookup frame goes through it first (it may add columns, or
    rewrite the added ones: they are what the rows get). Also returns the looked-up `extra` columns."""
    lookup_path = fact_kind(kind).lookup
    fact_key, added = lookup_path.fact_key, lookup_path.columns
    require_columns([fact_key], list(df.columns), f"{kind} batch")
    lookup = dims.lookups(b, kind, df[fact_key])  # only the rows this batch references
    if prepare is not None:
        lookup = prepare(lookup)
    keys = df[fact_key]
    if b.arrow_type(keys) != pa.int64():
        keys = keys.astype(lookup.index.dtype)
    found = b.gather(keys, lookup, [*added, "region", *extra])
    for name in added:
        df[name] = found[name]
    df["region"] = found["region"].fillna(UNKNOWN_REGION)
    return df, found


# --------------------------------------------------------------------------------------------------
# per-region rules


def _integer_digits(value: Decimal) -> int:
    return max(len(str(int(value))), 1)


def _decimal_places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(-exponent, 0)


def _fx_narrow(rules: Mapping[str, RegionRule]) -> pa.Decimal128Type:
    """fx_rate in the narrowest type that holds every rule's rate: the product with an amount stays in
    decimal128 and has fewer digits to round (exact either way: narrowing only drops zeros)."""
    fx_values = [rule.fx_rate for rule in rules.values()]
    fx_scale = max((_decimal_places(v) for v in fx_values), default=0)
    fx_precision = max((_integer_digits(v) for v in fx_values), default=1) + fx_scale
    return pa.decimal128(fx_precision, fx_scale)


def _rules_lookup(rules: Mapping[str, RegionRule], b: Frames, fx_narrow: pa.DataType) -> Frame:
    """currency / fx_rate / vat_rate per rule number (0..n-1), and all null for -1 (no rule); fx_narrow
    is fx_rate in the narrowest type that holds every rule's rate, for the product."""
    names = list(rules)
    fx_rates = [*(rules[n].fx_rate for n in names), None]
    table = pa.table({
        "rule": pa.array([*range(len(names)), -1], pa.int32()),
        "currency": pa.array([*(rules[n].currency for n in names), None], pa.string()),
        "fx_rate": pa.array(fx_rates, FX_RATE),
        "fx_narrow": pa.array(fx_rates, fx_narrow),
        "vat_rate": pa.array([*(rules[n].vat_rate for n in names), None], VAT_RATE),
    })
    return b.frame(table).set_index("rule")


_RULE_COLUMNS = ("currency", "fx_rate", "fx_narrow", "vat_rate")


def _rule_columns(region: Series, b: Frames, rules: Mapping[str, RegionRule]) -> dict[str, Series]:
    """currency, fx_rate, fx_narrow, vat_rate of each row's region (null where no rule names it).

    Each row's rule number is found by comparing `region` with each rule's name (a handful), then the
    rule's values are looked up by number, so row order is preserved."""
    rule = b.full(region, -1, pa.int32())
    for number, name in enumerate(rules):
        rule = rule.mask((region == name).fillna(False), number)
    lookup = _rules_lookup(rules, b, _fx_narrow(rules))
    return {column: _mapped(rule, lookup[column]) for column in _RULE_COLUMNS}


def _amount_local(amount: Series, amount_type: pa.Decimal128Type, fx_narrow: Series, b: Frames,
                  rules: Mapping[str, RegionRule]) -> Series:
    """round_half_even(amount * fx_rate, 2) as decimal128(24,2), exact: in decimal128 when the product
    fits 38 digits, else (CPU engine) in decimal256; the GPU engine (cuDF stops at 38) refuses."""
    narrow = _fx_narrow(rules)
    if amount_type.precision + narrow.precision + 1 <= _MAX_DECIMAL128_PRECISION:
        product = amount * fx_narrow
    else:
        product = amount.astype(
            b.dtype(pa.decimal256(amount_type.precision, amount_type.scale))
        ) * fx_narrow.astype(
            b.dtype(pa.decimal256(narrow.precision, narrow.scale))
        )
    return _fit(product.round(AMOUNT_LOCAL.scale), AMOUNT_LOCAL, "amount_local", b, rounded=True)


def _masked_by(rules: Mapping[str, RegionRule]) -> dict[str, list[str]]:
    """Per masked column, the regions whose rows mask it."""
    masked_by: dict[str, list[str]] = {}
    for name, rule in rules.items():
        for column in rule.mask_columns:
            masked_by.setdefault(column, []).append(name)
    return masked_by


def _mask_columns(df: Frame, region: Series, b: Frames, masked_by: Mapping[str, list[str]],
                  columns: Sequence[str] | None = None) -> Frame:
    """Mask each column of `masked_by` (of `columns`, when given) that `df` has, in the rows of its
    regions; columns `df` lacks are ignored."""
    for column, regions in sorted(masked_by.items()):
        if column not in df.columns or (columns is not None and column not in columns):
            continue
        values = _string(df[column], column, b, "region rules mask")
        rows = region.isin(regions).fillna(False)
        if bool(rows.any()):  # masked where needed only, then put back in place by row label
            df[column] = values.mask(rows, _mask(values[rows], b).reindex(values.index))
    return df


def mask_rows(table: pa.Table, region: pa.Array | pa.ChunkedArray,
              rules: Mapping[str, RegionRule]) -> pa.Table:
    """`table` (a dimension's rows) with the columns its rows' regions mask masked as the facts' are, so
    a dimension table in the warehouse shows no more than its facts do. On the CPU engine."""
    masked_by = {c: r for c, r in _masked_by(rules).items() if c in table.column_names}
    if not masked_by or table.num_rows == 0:
        return table
    b = PandasFrames()
    df = b.frame(table)
    df = _mask_columns(df, b.frame(pa.table({"region": region}))["region"], b, masked_by)
    return b.table(df, table.schema)


def _mask(values: Series, b: Frames) -> Series:
    """Keep the last 4 characters, replace the others with '*' (same length in characters).

    Values of 4 characters or fewer are left as they are; null stays null. Padding needs one width
    per call, so it runs once per distinct length (a handful for keys, names and phone numbers).
    """
    length = values.str.len()
    last4 = values.str.slice(-4)
    longer = (length > 4).fillna(False)
    out = values
    for width in sorted(b.host_list(length[longer].unique())):
        out = out.mask((length == width).fillna(False), last4.str.pad(width, side="left", fillchar="*"))
    return out


def apply_region_rules(
    df: Frame, b: Frames, *, kind: str, rules: Mapping[str, RegionRule], amount_column: str
) -> Frame:
    """Add currency, fx_rate decimal128(18,6), vat_rate decimal128(6,4) and
    amount_local decimal128(24,2) = round_half_even(amount * fx_rate, 2), and mask the rule's columns.

    Each row's rule number is found by comparing `region` with each rule's name (a handful), then
    the rule's values are looked up by number, so row order is preserved. Masking applies to the rows
    whose region masks that column only; columns named by a rule but absent from the frame are ignored
    (lineitem has no c_name). A region without a rule (e.g. UNKNOWN) gets null currency/fx/vat/
    amount_local and no mask. The product is exact: fx_rate is narrowed to the digits the rules use,
    so it stays in decimal128; beyond 38 digits the CPU engine computes in decimal256 and the GPU
    engine (cuDF stops at 38) refuses with the fix.
    `kind` is accepted for symmetry with the other transforms; the rules do not depend on it.
    """
    fact_kind(kind)
    require_columns(["region", amount_column], list(df.columns), f"{kind} batch")
    region = df["region"]
    amount = df[amount_column]
    amount_type = decimal_type(amount, b, amount_column, "the landing zone's schema or the transform order")
    ruled = _rule_columns(region, b, rules)
    amount_local = _amount_local(amount, amount_type, ruled["fx_narrow"], b, rules)
    df = _mask_columns(df, region, b, _masked_by(rules))
    df["currency"] = ruled["currency"]
    df["fx_rate"] = ruled["fx_rate"]
    df["vat_rate"] = ruled["vat_rate"]
    df["amount_local"] = amount_local
    return df


def _region_and_rules(df: Frame, b: Frames, *, kind: str, dims: Lookups, rules: Mapping[str, RegionRule],
                      amount_column: str) -> Frame:
    """attach_region then apply_region_rules, with what depends on the region alone (the rule's
    columns, and masking the looked-up columns) worked out once per dimension row instead of once per
    fact row: a batch has many rows per customer (orders) or supplier (lineitem), and comparing every
    row's region string with each rule's name, then masking its strings, cost more than the lookups.
    Same result as the two transforms in turn: a row's looked-up columns and region are its dimension
    row's, and the rules depend on the region only."""
    masked_by = _masked_by(rules)

    def prepare(lookup: Frame) -> Frame:
        region = lookup["region"].fillna(UNKNOWN_REGION)
        lookup = _mask_columns(lookup, region, b, masked_by, [c for c in lookup.columns if c != "region"])
        for column, values in _rule_columns(region, b, rules).items():
            lookup[column] = values
        return lookup

    df, ruled = _attach(df, b, kind=kind, dims=dims, prepare=prepare, extra=_RULE_COLUMNS)
    require_columns(["region", amount_column], list(df.columns), f"{kind} batch")
    amount = df[amount_column]
    amount_type = decimal_type(amount, b, amount_column, "the landing zone's schema or the transform order")
    amount_local = _amount_local(amount, amount_type, ruled["fx_narrow"], b, rules)
    # columns of the fact rows themselves (not looked up) are masked row by row
    looked_up = set(fact_kind(kind).lookup.columns)
    df = _mask_columns(df, df["region"], b, masked_by, [c for c in masked_by if c not in looked_up])
    df["currency"] = ruled["currency"]
    df["fx_rate"] = ruled["fx_rate"]
    df["vat_rate"] = ruled["vat_rate"]
    df["amount_local"] = amount_local
    return df


# --------------------------------------------------------------------------------------------------
# running on Arrow tables


#: Each kind's enrichment: the transform its declaration (loader/kinds.py) names.
_ENRICH: dict[str, Callable[[Frame, Frames], Frame]] = {
    kind.name: globals()[kind.enrich] for kind in FACT_KINDS.values()
}


def fact_chain(df: Frame, b: Frames, *, kind: str, dims: Lookups,
               rules: Mapping[str, RegionRule]) -> Frame:
    """enrich_<kind> -> attach_region -> apply_region_rules, on one frame. Row-local."""
    amount_column = fact_kind(kind).amount_column
    df = _ENRICH[kind](df, b)
    masked_by = _masked_by(rules)
    if UNKNOWN_REGION in rules or "region" in masked_by:
        # A rule for UNKNOWN applies to rows no dimension row matches, and a masked region changes
        # what the rules compare: the per-row path, as specified.
        df = attach_region(df, b, kind=kind, dims=dims)
        return apply_region_rules(df, b, kind=kind, rules=rules, amount_column=amount_column)
    return _region_and_rules(df, b, kind=kind, dims=dims, rules=rules, amount_column=amount_column)


def transform_fact(
    table: pa.Table, *, kind: str, dims: Lookups, rules: Mapping[str, RegionRule],
    frames: Frames | None = None
) -> pa.Table:
    """The row-local chain on a pyarrow Table, on `frames` (the CPU engine by default)."""
    frames = frames or frames_for("cpu")
    table = normalize_strings(table)
    schema = None if frames.name == "cpu" else output_schema(kind, table.schema)
    result = frames.table(fact_chain(frames.frame(table), frames, kind=kind, dims=dims, rules=rules), schema)
    return result.replace_schema_metadata(table.schema.metadata)


@lru_cache(maxsize=32)
def output_schema(kind: str, input_schema: pa.Schema) -> pa.Schema:
    """The schema `transform_fact` gives for batches of `input_schema` (for sinks that create tables
    up front, and the GPU's way back). Derived by running the chain on an empty table on the CPU:
    types depend on neither dims nor rules."""
    from loader.transform.lookups import Lookups

    return transform_fact(input_schema.empty_table(), kind=kind, dims=Lookups.empty(), rules={}).schema
