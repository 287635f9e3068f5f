"""Judging: Evidently reports, the check steps, screening before training, the paired tests, the gate, approval."""
