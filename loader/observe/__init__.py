"""What a run tells while it runs and records of itself: logs, progress, metrics, and the run history
read back from the ledger. Below the protocol (which uses it); the reports above read it."""
