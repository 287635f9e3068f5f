"""What an operator does and reads: history and status, rollback and reproduce, failures, recovery, the demo."""
