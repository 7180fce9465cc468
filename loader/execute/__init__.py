"""Executors: the same stage chain (stages.py) in this process (local.py: threads) or on a Ray cluster
(ray_cluster.py: tasks per key-range part); which one, and which engine, a run uses (choice.py)."""
