"""A labeled row that names its capture (a queue of `kaizen select`, filled in and landed) keeps its capture id
through collect: in the batch (null for rows that name none), and in the ledger's row keys; a cell that is no
capture id is quarantined with its reason; and a batch still forms from files staged before kaizen kept capture ids.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from kaizen.tasks.formats.text import text_key
from kaizen.tasks.ingest.collect import _concatenated, collect
from kaizen.tasks.ingest.ledger import Ledger
from tests.support.files import jsonl_bytes, land, quarantine_records, sample


def test_capture_ids_are_kept_with_their_rows_and_a_bad_one_is_quarantined(copy_workspace, domains) -> None:
    ws = copy_workspace({"data.min_batch_rows": 58, "data.settle_seconds": 0})
    rows = sample(domains["movies"], 80, seed=3)
    rows = rows[~rows["text"].map(text_key).duplicated()].head(60).reset_index(drop=True)
    labeled = rows.assign(capture_id=[uuid.uuid4().hex for _ in range(len(rows))])
    labeled.loc[3, "capture_id"] = ""  # a row the labeler added: it labels no capture
    labeled.loc[4, "capture_id"] = "not-a-capture"
    csv = land(ws, "a-queue-labeled.csv", labeled.head(20)).read_bytes()
    records = labeled.iloc[20:40].to_dict("records")
    records[0]["capture_id"] = 12345  # JSON may carry any type
    jsonl = land(ws, "b-queue-labeled.jsonl", jsonl_bytes(records)).read_bytes()
    land(ws, "c-plain.csv", rows.iloc[40:60][["text", "label"]])

    result = collect(ws)

    assert result.new_batches == ["batch-0001"] and result.rows_accepted == 58
    assert sorted(result.reasons) == ["capture_id 'not-a-capture' is not a capture id (32 hex digits, as `kaizen "
                                      "select` wrote it)",
                                      "capture_id 12345 is not a capture id (32 hex digits, as `kaizen select` "
                                      "wrote it)"]
    assert [[r["record"]["text"] for r in quarantine_records(ws, data)] for data in (csv, jsonl)] == \
        [[labeled.loc[4, "text"]], [labeled.loc[20, "text"]]]
    batch = pd.read_parquet(ws.batch_file("batch-0001"))
    kept = labeled.iloc[:40].drop(index=[3, 4, 20])
    named = batch.set_index("text")["capture_id"]
    assert named[kept["text"]].tolist() == kept["capture_id"].tolist()
    assert named[[labeled.loc[3, "text"], *rows.loc[40:59, "text"]]].isna().all()
    with Ledger(ws.ledger_db) as ledger:
        keys = dict(ledger.read("SELECT key, capture_id FROM row_keys WHERE capture_id IS NOT NULL"))
    assert keys == dict(zip(kept["text"].map(text_key), kept["capture_id"], strict=True))


def test_a_batch_forms_from_rows_staged_before_capture_ids_were_kept(tmp_path: Path) -> None:
    older = pd.DataFrame({"text": ["a fine film", "a dull film"], "label": ["positive", "negative"],
                          "source": "old.csv", "source_row": [1, 2], "label_given": ["positive", "negative"]})
    newer = pd.DataFrame({"text": ["a good book"], "label": ["positive"], "source": "new.csv", "source_row": [1],
                          "label_given": ["positive"], "capture_id": [uuid.uuid4().hex]})
    for first, second in ((older, newer), (newer, older)):
        parts = []
        for i, frame in enumerate((first, second)):
            parts.append(tmp_path / f"part{i}.parquet")
            frame.to_parquet(parts[-1], index=False)
        assert _concatenated(parts, tmp_path / "batch.parquet") == 3
        batch = pq.read_table(tmp_path / "batch.parquet").to_pandas().set_index("text")
        assert batch.loc["a good book", "capture_id"] == newer.loc[0, "capture_id"]
        assert batch.loc[["a fine film", "a dull film"], "capture_id"].isna().all()
