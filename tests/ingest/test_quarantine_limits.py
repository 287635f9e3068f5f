"""Quarantine stays proportional to what was landed, not to what it unpacks to: a rejected row keeps a prefix of
each long text cell (`limits.quarantine_text_chars`) with the cell's length and sha256, and past
`limits.max_quarantine_bytes` a file's rejected rows are counted, not copied, one last record saying how many.
Every row is still counted: rows in = rows accepted + rows quarantined, in the outcome and in the ledger."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pandas as pd
import pytest

from kaizen.tasks.ingest.collect import collect
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import csv_bytes, land, quarantine_records, sha256


@pytest.fixture
def new_ws(copy_workspace) -> Callable[..., Workspace]:
    return lambda **overrides: copy_workspace({"data.min_batch_rows": 1000, "data.settle_seconds": 0}, **overrides)


def ledger_counts(ws: Workspace, sha: str) -> tuple[int, int, int]:
    with Ledger(ws.ledger_db) as ledger:
        record = ledger.file(sha)
    assert record is not None
    return record.rows_in, record.rows_accepted, record.rows_quarantined


def test_a_long_cell_keeps_a_prefix_with_its_length_and_sha256(new_ws) -> None:
    ws = new_ws(limits__quarantine_text_chars=100)
    long_text = "".join(f"word{i} " for i in range(1500))  # past data.max_text_chars: the row is quarantined
    unknown = "a short review with a label outside the set"
    data = csv_bytes([("A gripping story, told with care.", "positive"), (long_text, "positive"), (unknown, "meh")])
    land(ws, "long.csv", data)

    (outcome,) = collect(ws).files

    assert (outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined) == (3, 1, 2)
    by_row = {q["row"]: q for q in quarantine_records(ws, data)}
    assert by_row[2]["record"] == {"text": long_text[:100], "label": "positive"}
    assert by_row[2]["truncated"] == {"text": {"chars": len(long_text), "sha256": sha256(long_text.encode())}}
    assert by_row[3]["record"] == {"text": unknown, "label": "meh"} and "truncated" not in by_row[3]
    # The archive keeps the file whole: the cut cell is found there by its hash.
    (archived,) = ws.archive_dir.glob(f"{outcome.sha256[:16]}-*")
    assert sha256(pd.read_csv(archived)["text"][1].encode()) == by_row[2]["truncated"]["text"]["sha256"]


def test_past_the_byte_cap_rows_are_counted_not_copied(new_ws) -> None:
    ws = new_ws(limits__max_quarantine_bytes=4096)
    rows = [(f"review number {i}, fine", "positive" if i % 3 == 0 else "neutral") for i in range(300)]
    data = csv_bytes(rows)
    land(ws, "many-rejected.csv", data)

    (outcome,) = collect(ws).files

    # Every row is counted, and the good rows after the cap are still accepted.
    assert (outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined) == (300, 100, 200)
    assert ledger_counts(ws, outcome.sha256) == (300, 100, 200)
    assert sum(outcome.reasons.values()) == 200
    quarantine = ws.quarantine_dir / f"{outcome.sha256[:16]}.jsonl"
    *copied, summary = quarantine_records(ws, data)
    last_line = len(quarantine.read_text(encoding="utf-8").splitlines()[-1].encode()) + 1
    assert quarantine.stat().st_size - last_line <= 4096
    # The rows copied are the first ones rejected, in order; the last record counts the rest, by reason.
    rejected = [i + 1 for i, (_, label) in enumerate(rows) if label == "neutral"]  # rows count from 1
    assert 0 < len(copied) < 200 and [q["row"] for q in copied] == rejected[: len(copied)]
    not_copied = 200 - len(copied)
    assert (summary["row"], summary["record"], summary["not_copied"]) == (None, None, not_copied)
    assert summary["reasons"] == dict(Counter(outcome.reasons) - Counter(q["reason"] for q in copied))
    assert summary["reason"] == (f"{not_copied} more quarantined rows (from row {rejected[len(copied)]}) counted, "
                                 "not copied: this quarantine file reached limits.max_quarantine_bytes (4,096 bytes)")
