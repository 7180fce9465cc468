"""Transforms and their engines: dedupe, enrichment, the region lookup and per-region rules, written once
against the DataFrame API pandas (CPU) and cuDF (GPU) share."""
