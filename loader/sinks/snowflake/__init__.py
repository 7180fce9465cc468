"""The Snowflake sink: staged files and one MERGE transaction per batch, exactly once by a ledger table
(loader/sinks/__init__.py says what each file of a sink folder holds). Imports nothing: the config
imports this folder's config.py."""
