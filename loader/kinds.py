"""The fact kinds, each declared once: how its rows find their region, how they are enriched, which
amount the region's exchange rate converts. Everything kind-specific elsewhere is derived from here:
the config's `sources.<name>.kind` (validated against `FACT_KINDS`), the dimension lookups
(loader/transform/lookups.py), the enrichment and the rules' amount (loader/transform/facts.py), and
the column verify reads to find a row's region (loader/audit/verify.py).

Plain data, no pyarrow: the config imports it, and `loader --help` must not pay for the data stack.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Region of a row whose customer / supplier / nation is not in the dimensions. Such rows are kept.
UNKNOWN_REGION = "UNKNOWN"


@dataclass(frozen=True)
class RegionLookup:
    """The path from a fact row to its region: the fact's `fact_key` column points at the `key` of the
    dimension table `dimension` (an attribute of `Lookups`: the TPC-H table pre-joined to nation and
    region), which adds `columns` (and `region`) to the row."""

    dimension: str
    key: str
    fact_key: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class FactKind:
    name: str
    lookup: RegionLookup
    #: The enrichment transform: a function of that name in loader/transform/facts.py.
    enrich: str
    #: The amount column the region's fx_rate converts into `amount_local` (after the enrichment).
    amount_column: str


ORDERS = FactKind(
    name="orders",
    lookup=RegionLookup("customers", "c_custkey", "o_custkey",
                        ("c_name", "c_phone", "customer_segment", "nation")),
    enrich="enrich_orders",
    amount_column="o_totalprice",
)
LINEITEM = FactKind(
    name="lineitem",
    lookup=RegionLookup("suppliers", "s_suppkey", "l_suppkey", ("nation",)),
    enrich="enrich_lineitem",
    amount_column="charge",
)

#: Every fact kind, by name.
FACT_KINDS: dict[str, FactKind] = {kind.name: kind for kind in (ORDERS, LINEITEM)}


def kind_names() -> str:
    """'orders' or 'lineitem' (for messages)."""
    names = [repr(name) for name in FACT_KINDS]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def fact_kind(name: str) -> FactKind:
    """The kind called `name`; ValueError naming the kinds when there is none."""
    try:
        return FACT_KINDS[name]
    except KeyError:
        raise ValueError(f"kind must be {kind_names()}, not {name!r}") from None
