"""Exact decimal rules shared by the fact transforms (loader/transform/facts.py) and the customer dimension
(loader/transform/lookups.py): money must be decimal, and values are labelled by decimal thresholds.
Written against the DataFrame API pandas and cuDF share, like the transforms. A module of its own so that
the dimensions need not import the transforms, which import the dimensions."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa

from loader.errors import BadSourceData
from loader.transform.frames import Frame, Frames, Series

SEGMENTS = (("standard", "premium", "enterprise"), ("5000", "10000"))


def decimal_type(values: Series, b: Frames, name: str,
                 where: str = "the landing zone's schema") -> pa.Decimal128Type:
    arrow_type = b.arrow_type(values)
    if not pa.types.is_decimal(arrow_type):
        raise BadSourceData(
            f"column {name} is {arrow_type}, but money must be decimal (never float): "
            f"fix {where} for that column"
        )
    return arrow_type


def labels(values: Series, spec: tuple[tuple[str, ...], tuple[str, ...]], b: Frames, *,
           strict: bool = False) -> Series:
    """Label each value by the thresholds it reaches: labels[0] below thresholds[0], labels[i] from
    thresholds[i-1] on (`strict`: above it). Compared exactly in decimal; a null value has a null label,
    and so (unless `strict`) has a negative one.

    The thresholds ascend, so a value's label number is the count of thresholds it reaches: one
    comparison per threshold, summed, then one lookup of the label (rewriting a string column once
    per label cost several times more)."""
    names, thresholds = spec
    limits = [Decimal(t) for t in thresholds]
    if limits != sorted(limits) or len(names) != len(limits) + 1:
        raise ValueError(f"label thresholds must ascend, one fewer than the labels: {spec}")
    small = b.dtype(pa.int8())
    number = b.full(values, 0, pa.int8())
    for limit in limits:  # a null value reaches none: its label is nulled below
        number = number + (values > limit if strict else values >= limit).fillna(False).astype(small)
    base = values.notna() if strict else (values >= Decimal("0")).fillna(False)
    return _label_of(number, names, b).where(base)


def _label_of(number: Series, names: tuple[str, ...], b: Frames) -> Series:
    """names[number] for each number (null where it is null), typed string even when empty."""
    lookup = _label_lookup(names, b)
    return number.map(lookup).astype(lookup.dtype)


_LABEL_LOOKUPS: dict[tuple[tuple[str, ...], str], Series] = {}


def _label_lookup(names: tuple[str, ...], b: Frames) -> Series:
    """The labels indexed by number, made once per engine (on the GPU: copied to the device once)."""
    if (names, b.name) not in _LABEL_LOOKUPS:
        table = pa.table({"number": pa.array(range(len(names)), pa.int8()),
                          "label": pa.array(names, pa.string())})
        _LABEL_LOOKUPS[(names, b.name)] = b.frame(table).set_index("number")["label"]
    return _LABEL_LOOKUPS[(names, b.name)]


def customer_segment(df: Frame, b: Frames) -> Frame:
    """Add customer_segment: 'enterprise' above 10000, 'premium' above 5000, else 'standard' (by
    c_acctbal, exact; null balance -> null). Run on the customer dimension."""
    balance = df["c_acctbal"]
    decimal_type(balance, b, "c_acctbal")
    df["customer_segment"] = labels(balance, SEGMENTS, b, strict=True)
    return df
