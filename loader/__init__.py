"""loader: incremental, exactly-once loads from a TPC-H-style landing zone into a warehouse."""

__version__ = "0.1.0"
