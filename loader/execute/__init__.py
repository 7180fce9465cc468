"""Executors: the same stage chain in this process (threads) or on a Ray cluster (tasks per part)."""
