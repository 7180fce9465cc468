"""Reading the landing zone: the planned row groups of each source, its checks and the quarantine of bad
rows."""
