"""The run protocol, one copy for incremental runs and backfill:

    lease -> (replay an unfinished batch) -> plan -> cut into batches ->
    for each batch: read, transform, write every sink -> one atomic commit of checkpoints and ledger

planning.py plans the window and files, batches.py cuts it, steps.py holds the lease, the session and one
batch's steps and commits, incremental.py (`loader run`) and backfill.py (`loader backfill`) drive them.
"""
