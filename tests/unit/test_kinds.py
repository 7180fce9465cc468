"""The fact kinds are declared once (loader/kinds.py): every declaration names what exists."""

from __future__ import annotations

import pytest

from loader.kinds import FACT_KINDS, fact_kind
from loader.transform import facts
from loader.transform.lookups import Lookups


def test_every_kind_names_an_enrichment_and_a_lookup_the_dimensions_have() -> None:
    dims = Lookups.empty()
    for name, kind in FACT_KINDS.items():
        assert kind.name == name
        assert callable(getattr(facts, kind.enrich)), kind.enrich
        table = getattr(dims, kind.lookup.dimension)
        assert {kind.lookup.key, *kind.lookup.columns, "region"} <= set(table.column_names), name


def test_an_unknown_kind_is_refused_naming_the_kinds() -> None:
    with pytest.raises(ValueError, match="^kind must be 'orders' or 'lineitem', not 'parts'$"):
        fact_kind("parts")
