"""Every version of the prepared dimension lookups, kept small: as the changes from another version.

A batch records the version (fingerprint) of the dimension files its rows were enriched from. For a
replay and for `loader verify --deep` to enrich a row exactly as its batch did, the prepared lookups of
every version a committed row may still show must stay recoverable. Kept whole, each version would cost
the whole lookups (4.5 MB at SF1, about 45 MB at SF10) per change of a dimension file; kept as a delta
from the version before (the rows added or changed, the keys removed, per part), a version costs what
changed. The state store keeps, per version, its `base` and `delta`, and the whole lookups of the newest
version, of those unfinished runs recorded, and of a version no delta rebuilds (the first one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loader.transform.lookup_cache import PARTS, pack_tables, unpack, unpack_tables
from loader.transform.lookups import Lookups
from state import StateStore

#: The key of each part of `Lookups` (each part is sorted by it, keys unique).
PART_KEYS = {"customers": "c_custkey", "suppliers": "s_suppkey", "nations": "n_nationkey"}


def diff(base: Lookups, new: Lookups) -> bytes:
    """The changes that make `new` from `base`: per part (in `PARTS` order) the rows of `new` that
    `base` lacks or holds otherwise (compared exactly, column by column, null equal to null), then the
    keys of `base` that `new` lacks."""
    tables: list[pa.Table] = []
    for part in PARTS:
        before, after = getattr(base, part), getattr(new, part)
        key = PART_KEYS[part]
        if before.schema != after.schema:  # another preparation: every row changed
            changed, removed = after, before.select([key])
        else:
            changed, removed = _part_changes(before, after, key)
        tables += [changed, removed]
    return pack_tables(tables)


def apply(base: Lookups, delta: bytes) -> Lookups:
    """`diff`'s changes applied to `base`: the version they were taken of, sorted by key as prepared."""
    tables = unpack_tables(delta)
    parts = {}
    for index, part in enumerate(PARTS):
        key = PART_KEYS[part]
        before, changed, removed = getattr(base, part), tables[2 * index], tables[2 * index + 1]
        gone = np.union1d(_keys(removed, key), _keys(changed, key))
        kept = before.filter(pa.array(~np.isin(_keys(before, key), gone))) if len(gone) else before
        both = pa.concat_tables([kept, changed.cast(kept.schema)]) if changed.num_rows else kept
        parts[part] = both.take(pc.sort_indices(both[key])).combine_chunks() if changed.num_rows else both
    return Lookups(**parts)


def _keys(table: pa.Table, key: str) -> np.ndarray:
    return np.asarray(table[key].to_numpy())


def _part_changes(before: pa.Table, after: pa.Table, key: str) -> tuple[pa.Table, pa.Table]:
    """(rows of `after` new or different from `before`'s row of their key, `before`'s keys `after` lacks)."""
    old, new = _keys(before, key), _keys(after, key)
    slot = np.clip(np.searchsorted(old, new), 0, max(len(old) - 1, 0))
    found = (old[slot] == new) if len(old) else np.zeros(len(new), dtype=bool)
    same = found.copy()
    if found.any():
        rows = np.flatnonzero(found)
        was, now = before.take(pa.array(slot[rows])), after.take(pa.array(rows))
        equal = np.ones(len(rows), dtype=bool)
        for name in after.column_names:
            a, b = was[name], now[name]
            both_null = pc.and_(pc.is_null(a), pc.is_null(b))
            equal &= np.asarray(pc.or_(pc.fill_null(pc.equal(a, b), False), both_null)
                                .to_numpy(zero_copy_only=False))
        same[rows] = equal
    removed = old[~np.isin(old, new)] if len(old) else old
    return after.filter(pa.array(~same)), pa.table({key: pa.array(removed, before.schema.field(key).type)})


class VersionLookups:
    """The prepared lookups of any kept version, rebuilt from a whole one through the deltas. Holds the
    last rebuilt version only (a caller walking the versions oldest first applies one delta a step)."""

    def __init__(self, store: StateStore, pipeline: str,
                 local: Callable[[str], Lookups | None] = lambda _version: None) -> None:
        self.store, self.pipeline, self.local = store, pipeline, local
        self.chain = {v.fingerprint: v for v in store.lookup_chain(pipeline)}
        self._last: tuple[str, Lookups] | None = None

    def order(self, versions: Sequence[str]) -> list[str]:
        """`versions`, oldest first (the order that rebuilds each from the one before)."""
        rank = {fingerprint: at for at, fingerprint in enumerate(self.chain)}
        return sorted(versions, key=lambda v: rank.get(v, len(rank)))

    def recoverable(self, version: str) -> bool:
        """Whether the version's lookups are kept whole or rebuildable from a whole one."""
        seen: set[str] = set()
        while version not in seen:
            seen.add(version)
            found = self.chain.get(version)
            if found is None:
                return False
            if found.whole:
                return True
            if found.base is None:
                return False
            version = found.base
        return False

    def get(self, version: str) -> Lookups | None:
        """The version's prepared lookups, or None when they cannot be had."""
        path: list[str] = []  # from `version` back to the one held or one kept whole
        start: Lookups | None = None
        at: str | None = version
        while at is not None and at not in path:
            if self._last is not None and self._last[0] == at:
                start = self._last[1]
                break
            found = self.chain.get(at)
            if found is None:
                return None
            if found.whole:
                start = self.local(at)
                if start is None:
                    raw = self.store.prepared_lookups(self.pipeline, at)
                    start = None if raw is None else unpack(raw)
                if start is not None:
                    break
            path.append(at)
            at = found.base
        if start is None:
            return None
        for step in reversed(path):
            delta = self.store.lookup_delta(self.pipeline, step)
            if delta is None:
                return None
            start = apply(start, delta)
        self._last = (version, start)
        return start
