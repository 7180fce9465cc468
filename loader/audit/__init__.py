"""What users ask of runs and warehouses after the fact: verify (every sink against the landing zone),
the status, plan, history and HTML reports, and doctor's checks of the config and its services."""
