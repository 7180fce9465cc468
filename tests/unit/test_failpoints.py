"""Failpoint specs: `action[+skip][*times]`, where a `wait:FILE` path may hold those characters too."""

from __future__ import annotations

from loader import failpoints


def test_counts_parse_after_any_action_and_a_wait_path_keeps_its_own_characters() -> None:
    parsed = failpoints._parse("delta.write=sleep:4*1,plan.recorded=wait:/tmp/a+b*c/gate+2*1,"
                               "checkpoint.after=wait:/tmp/g+1,parquet.write=crash")
    assert parsed == {
        "delta.write": ["sleep:4", 1, 0],
        "plan.recorded": ["wait:/tmp/a+b*c/gate", 1, 2],
        "checkpoint.after": ["wait:/tmp/g", -1, 1],
        "parquet.write": ["crash", -1, 0],
    }
