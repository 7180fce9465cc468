"""Exact decimal rules shared by the fact transforms (loader/transforms.py) and the customer dimension
(loader/dimensions.py): money must be decimal, and values are labelled by decimal thresholds. Written
against the DataFrame API pandas and cuDF share, like the transforms. A module of its own so that the
dimensions need not import the transforms, which import the dimensions."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa

from loader.errors import BadSourceData
from loader.frames import Frame, Frames, Series

SEGMENTS = (("standard", "premium", "enterprise"), ("5000", "10000"))


def decimal_type(values: Series, b: Frames, name: str, where: str = "the landing zone's schema") -> pa.Decimal128Type:
    arrow_type = b.arrow_type(values)
    if not pa.types.is_decimal(arrow_type):
        raise BadSourceData(
            f"column {name} is {arrow_type}, but money must be decimal (never float): fix {where} for that column"
        )
    return arrow_type


def labels(values: Series, spec: tuple[tuple[str, ...], tuple[str, ...]], b: Frames, *, strict: bool = False) -> Series:
    """Label each value by the thresholds it reaches: labels[0] below thresholds[0], labels[i] from
    thresholds[i-1] on (`strict`: above it). Compared exactly in decimal; a null value has a null label,
    and so (unless `strict`) has a negative one."""
    labels, thresholds = spec
    out = b.full(values, None, pa.string())
    base = values.notna() if strict else (values >= Decimal("0")).fillna(False)
    out = out.mask(base, labels[0])
    for label, threshold in zip(labels[1:], thresholds, strict=True):
        reached = values > Decimal(threshold) if strict else values >= Decimal(threshold)
        out = out.mask(reached.fillna(False), label)
    return out


def customer_segment(df: Frame, b: Frames) -> Frame:
    """Add customer_segment: 'enterprise' above 10000, 'premium' above 5000, else 'standard' (by
    c_acctbal, exact; null balance -> null). Run on the customer dimension."""
    balance = df["c_acctbal"]
    decimal_type(balance, b, "c_acctbal")
    df["customer_segment"] = labels(balance, SEGMENTS, b, strict=True)
    return df
