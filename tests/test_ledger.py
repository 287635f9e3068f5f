"""The ledger's trust record, and a ledger written before it existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kaizen.tasks.ledger import Ledger


def test_a_ledger_from_before_the_trust_columns_gets_them_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE batches (batch_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, rows INTEGER NOT NULL,
            files TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', run_id TEXT, model_version TEXT,
            decision TEXT);
        INSERT INTO batches VALUES ('batch-0001', '2026-01-01T00:00:00+00:00', 10, '[]', 'done', 'r', '1',
            'promoted');
    """)
    old.commit()
    old.close()
    with Ledger(path) as ledger:
        (record,) = ledger.batches()
        assert (record.batch_id, record.decision, record.trust, record.trust_reason) == (
            "batch-0001", "promoted", "trusted", None)


def test_trust_is_recorded_and_an_operator_can_requeue(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        ledger.record_batch("batch-0001", 10, [])
        ledger.finish_batch("batch-0001", run_id="r", model_version=None, decision="suspect")
        ledger.set_trust("batch-0001", "suspect", "kappa -0.6", "loop")
        assert ledger.suspect_batches() == ["batch-0001"]
        ledger.set_trust("batch-0001", "trusted", "fixed at the source", "operator ana", requeue=True)
        (record,) = ledger.batches()
        assert (record.status, record.decision, record.trust, record.trust_by) == (
            "pending", None, "trusted", "operator ana")
        with pytest.raises(KeyError, match="batch-0404"):
            ledger.set_trust("batch-0404", "trusted", "x", "operator ana")
        with pytest.raises(ValueError, match="trust must be"):
            ledger.set_trust("batch-0001", "maybe", "x", "operator ana")
