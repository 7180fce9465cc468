"""The Delta Lake sink: one row per key, merged, exactly once by app transactions (loader/sinks/__init__.py
says what each file of a sink folder holds). Imports nothing: the config imports this folder's config.py."""
