"""Observability: logs, progress, metrics, the run history and its report, and the checks people run
(`loader verify`, `loader doctor`)."""
