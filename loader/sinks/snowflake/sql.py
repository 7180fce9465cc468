"""The Snowflake sink's statements, as text: the names of its stage folders, staging and tombstone
tables, the ledger's statements, a batch's MERGE (with deletes: hard or soft) and the tombstones it
remembers, and a dimension load's statements. Pure: nothing here runs SQL."""

from __future__ import annotations

import pyarrow as pa

from loader.sinks.base import DELETED, DELETED_AT, TableBatch
from loader.sinks.snowflake.schema import ident
from loader.transform.dimension_changes import IS_CURRENT, VALID_FROM, VALID_TO, DimensionSpec


def stage_prefix(stage: str, batch: TableBatch) -> str:
    return f"@{ident(stage)}/{batch.pipeline}/{batch.table}/run={batch.run_number}/"


def staging_table(batch: TableBatch) -> str:
    return ident(f"{batch.table}_LOADER_STAGING")


def dimension_staging(spec: DimensionSpec, side: str) -> str:
    return ident(f"{spec.table}_LOADER_{side.upper()}")


def create_ledger_sql(ledger_table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {ident(ledger_table)} (PIPELINE VARCHAR NOT NULL, "
        f"TABLE_NAME VARCHAR NOT NULL, RUN_NUMBER NUMBER(19,0) NOT NULL, LOADED_AT TIMESTAMP_TZ, "
        f"ROWS_LOADED NUMBER(19,0), PRIMARY KEY (PIPELINE, TABLE_NAME, RUN_NUMBER))"
    )


def landed_sql(ledger_table: str) -> str:
    """Counts the ledger rows of one run (parameters: pipeline, table, run number)."""
    return (
        f"SELECT COUNT(*) FROM {ident(ledger_table)} "
        f"WHERE PIPELINE = %s AND TABLE_NAME = %s AND RUN_NUMBER = %s"
    )


def record_run_sql(ledger_table: str) -> str:
    """Inserts the ledger row of one run (parameters: pipeline, table, run number, rows loaded)."""
    return (
        f"INSERT INTO {ident(ledger_table)} (PIPELINE, TABLE_NAME, RUN_NUMBER, "
        f"LOADED_AT, ROWS_LOADED) SELECT %s, %s, %s, CURRENT_TIMESTAMP(), %s"
    )


def target_schema(batch: TableBatch) -> pa.Schema:
    """The target's columns: the batch's, without the tombstone flag; soft deletes add `_DELETED_AT`
    (nullable, the cursor's type)."""
    schema = batch.data.schema
    if batch.deletes is None:
        return schema
    if DELETED in schema.names:
        schema = schema.remove(schema.get_field_index(DELETED))
    if batch.deletes == "soft" and DELETED_AT not in schema.names:
        schema = schema.append(pa.field(DELETED_AT, schema.field(batch.cursor).type, nullable=True))
    return schema


def tombstones_table(batch: TableBatch) -> str:
    """The table remembering a hard-deleting target's tombstones (unquoted; `ident` quotes it)."""
    return f"{batch.table}__TOMBSTONES"


def tombstones_schema(batch: TableBatch) -> pa.Schema:
    schema = batch.data.schema
    return pa.schema([schema.field(k) for k in batch.key] + [schema.field(batch.cursor)])


def remember_tombstones_sql(batch: TableBatch) -> list[str]:
    """After the target's MERGE, in its transaction: the entries of keys a newer live version revived
    removed, the staged tombstones moved to a newer cursor or inserted. Plain DML, not a MERGE (the
    emulator runs a MERGE through DDL of its own, which would commit the transaction early)."""
    key, cursor, flag = [ident(k) for k in batch.key], ident(batch.cursor), ident(DELETED)
    columns = [*key, cursor]
    table, latest = ident(tombstones_table(batch)), _latest_sql(batch, [*columns, flag])
    match = " AND ".join(f"t.{k} = s.{k}" for k in key)
    newer = f"s.{cursor} > t.{cursor}"
    return [
        f"DELETE FROM {table} t USING ({latest}) s WHERE {match} AND NOT s.{flag} AND {newer}",
        f"UPDATE {table} t SET {cursor} = s.{cursor} FROM ({latest}) s "
        f"WHERE {match} AND s.{flag} AND {newer}",
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join('s.' + c for c in columns)} "
        f"FROM ({latest}) s WHERE s.{flag} AND NOT EXISTS (SELECT 1 FROM {table} t WHERE {match})",
    ]


def _latest_sql(batch: TableBatch, columns: list[str]) -> str:
    """The staged rows, one per key: the greatest cursor's, a tombstone winning a tie (the delete rule
    of every sink, loader/sinks/base.py)."""
    key, cursor = [ident(k) for k in batch.key], ident(batch.cursor)
    flagged = batch.deletes is not None and DELETED in batch.data.schema.names
    tie = f", {ident(DELETED)} DESC" if flagged else ""
    return (f"SELECT {', '.join(columns)} FROM {staging_table(batch)} "
            f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {', '.join(key)} ORDER BY {cursor} DESC{tie}) = 1")


def merge_sql(batch: TableBatch) -> str:
    """A newer version updates the stored row; one with the stored cursor changes nothing: the version
    landed first stays, as in Delta and the Parquet log (the lookback re-reads versions every run, and
    its dimension version may differ from the one they loaded with)."""
    if batch.deletes is not None:
        return _merge_with_deletes_sql(batch)
    columns = [ident(c) for c in batch.data.column_names]
    key, cursor = [ident(k) for k in batch.key], ident(batch.cursor)
    latest = _latest_sql(batch, columns)
    updates = ", ".join(f"{c} = s.{c}" for c in columns if c not in key)
    return (
        f"MERGE INTO {ident(batch.table)} t USING ({latest}) s "
        f"ON {' AND '.join(f't.{k} = s.{k}' for k in key)} "
        f"WHEN MATCHED AND s.{cursor} > t.{cursor} THEN UPDATE SET {updates} "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)}) VALUES ({', '.join('s.' + c for c in columns)})"
    )


def _merge_with_deletes_sql(batch: TableBatch) -> str:
    """The MERGE of a batch with deletes: the first WHEN that holds applies. A tombstone removes (hard)
    or marks (soft) a stored version no newer than itself; a live version updates as without deletes
    (soft: and revives the key unless it was deleted at its cursor or later: the newest version
    decides); tombstones are never inserted."""
    stored = [ident(f.name) for f in target_schema(batch) if f.name != DELETED_AT]
    key, cursor, flag = [ident(k) for k in batch.key], ident(batch.cursor), ident(DELETED)
    latest = _latest_sql(batch, [*stored, flag])
    updates = ", ".join(f"{c} = s.{c}" for c in stored if c not in key)
    tombstone, live = f"s.{flag} AND t.{cursor} <= s.{cursor}", f"NOT s.{flag}"
    if batch.deletes == "hard":  # live versions no newer than their key's remembered tombstone: left out
        join = " AND ".join(f"d.{k} = l.{k}" for k in key)
        latest = (f"SELECT l.* FROM ({latest}) l LEFT JOIN {ident(tombstones_table(batch))} d ON {join} "
                  f"WHERE l.{flag} OR d.{cursor} IS NULL OR l.{cursor} > d.{cursor}")
    merge = (f"MERGE INTO {ident(batch.table)} t USING ({latest}) s "
             f"ON {' AND '.join(f't.{k} = s.{k}' for k in key)} ")
    insert = (f"WHEN NOT MATCHED AND {live} THEN INSERT ({', '.join(stored)}) "
              f"VALUES ({', '.join('s.' + c for c in stored)})")
    if batch.deletes == "hard":
        return (f"{merge}WHEN MATCHED AND {tombstone} THEN DELETE "
                f"WHEN MATCHED AND {live} AND s.{cursor} > t.{cursor} THEN UPDATE SET {updates} {insert}")
    marked = f"t.{ident(DELETED_AT)}"
    return (
        f"{merge}WHEN MATCHED AND {tombstone} AND ({marked} IS NULL OR {marked} < s.{cursor}) "
        f"THEN UPDATE SET {ident(DELETED_AT)} = s.{cursor} "
        f"WHEN MATCHED AND {live} AND s.{cursor} > t.{cursor} THEN UPDATE SET {updates}, "
        f"{ident(DELETED_AT)} = CASE WHEN {marked} >= s.{cursor} THEN {marked} ELSE NULL END {insert}"
    )


def marked_sql(batch: TableBatch) -> str:
    """How many stored rows the soft MERGE's tombstones will mark (run inside its transaction, first)."""
    stored = [ident(f.name) for f in target_schema(batch) if f.name != DELETED_AT]
    key, cursor, flag, marked = ([ident(k) for k in batch.key], ident(batch.cursor), ident(DELETED),
                                 ident(DELETED_AT))
    return (
        f"SELECT COUNT(*) FROM ({_latest_sql(batch, [*stored, flag])}) s JOIN {ident(batch.table)} t "
        f"ON {' AND '.join(f't.{k} = s.{k}' for k in key)} WHERE s.{flag} AND t.{cursor} <= s.{cursor} "
        f"AND (t.{marked} IS NULL OR t.{marked} < s.{cursor})"
    )


def dimension_sql(spec: DimensionSpec, columns: list[str], staged: set[str]) -> list[str]:
    """The statements applying a dimension load's staged `opens` and `closes` (those in `staged`)."""
    table, key = ident(spec.table), [ident(k) for k in spec.key]
    names = [ident(c) for c in columns]
    insert = f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join('o.' + c for c in names)} " \
             f"FROM {dimension_staging(spec, 'opens')} o"
    closes = dimension_staging(spec, "closes")
    statements = []
    if spec.mode == "scd2":
        version = " AND ".join(f"t.{k} = {{s}}.{k}" for k in [*key, ident(VALID_FROM)])
        if "closes" in staged:
            statements.append(f"UPDATE {table} t SET {ident(VALID_TO)} = c.{ident(VALID_TO)}, "
                              f"{ident(IS_CURRENT)} = FALSE "
                              f"FROM {closes} c WHERE {version.format(s='c')} AND t.{ident(IS_CURRENT)}")
        if "opens" in staged:  # versions stored already (a COMMIT whose acknowledgement was lost): not again
            statements.append(f"{insert} WHERE NOT EXISTS "
                              f"(SELECT 1 FROM {table} t WHERE {version.format(s='o')})")
        return statements
    if spec.mode == "replace":
        return [f"DELETE FROM {table}", *([insert] if "opens" in staged else [])]
    match = " AND ".join(f"t.{k} = s.{k}" for k in key)
    for side in ("closes", "opens"):  # merge: the closed keys deleted, the opened ones replaced
        if side in staged:
            statements.append(f"DELETE FROM {table} t USING {dimension_staging(spec, side)} s WHERE {match}")
    if "opens" in staged:
        statements.append(insert)
    return statements


__all__ = ["create_ledger_sql", "dimension_sql", "dimension_staging", "landed_sql", "marked_sql", "merge_sql",
           "record_run_sql", "remember_tombstones_sql", "stage_prefix", "staging_table", "target_schema",
           "tombstones_schema", "tombstones_table"]
