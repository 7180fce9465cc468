"""The Apache Iceberg sink: one row per key, merged by rewriting only the data files a batch's keys can
touch, one catalog commit per batch, exactly once by a run marker kept as a table property
(loader/sinks/__init__.py says what each file of a sink folder holds; catalog.py opens the catalog and
keeps the markers). Imports nothing: the config imports this folder's config.py."""
