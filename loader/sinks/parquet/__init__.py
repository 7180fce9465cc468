"""The Parquet sink: a log of versions in region folders (loader/sinks/__init__.py says what each file
of a sink folder holds). Imports nothing: the config imports this folder's config.py."""
