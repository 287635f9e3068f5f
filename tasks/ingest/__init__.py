"""The landing zone to staged rows and batches, each file exactly once, bad rows quarantined with a reason."""
