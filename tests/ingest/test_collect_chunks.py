"""collect reads files a chunk at a time: a file of many chunks is collected exactly as when read in one chunk,
and a fault in its last chunk still refuses the whole file with nothing of it kept.

The chunk is made small (a few rows) through `collect(ws, chunk_rows=...)`, so small files cross many chunk
boundaries: duplicates reach back across chunks, a JSON Lines column appears only in the last chunk.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kaizen.tasks.ingest.collect import CollectResult, collect
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import csv_bytes, jsonl_bytes, parquet_bytes
from tests.support.workspaces import write_params

WHOLE = 1_000_000  # rows per chunk: every file here is one chunk


def review(i: int) -> str:
    return f"Review {i}: the plot is {'gripping' if i % 2 else 'dull'} and scene {i * 7} stays with you."


def rows() -> list[tuple[Any, Any]]:
    """23 rows whose verdicts depend on rows chunks away: repeats of earlier rows (one with another label),
    an unknown label, an empty text, a label mapped by data.label_map, a repeat of an earlier file's row."""
    out: list[tuple[Any, Any]] = [(review(i), "positive" if i % 2 else "negative") for i in range(18)]
    out[4] = (review(4), "0")  # mapped to negative
    out += [(review(2).upper(), "negative"), (f"  {review(5)}  ", "negative"), (review(100), "neutral"),
            ("", "positive"), (review(900), "positive")]
    return out


FILES = {
    "rows.csv": csv_bytes(rows()),
    "rows.csv.gz": gzip.compress(csv_bytes(rows()[::-1]), mtime=0),
    "rows.parquet": parquet_bytes(rows()[1:]),
    # A column first named on the last line: every row must carry it, as when the file is read whole.
    "rows.jsonl": jsonl_bytes([{"text": t, "label": label} for t, label in rows()[2:]] +
                              [{"text": review(901), "label": "positive", "note": "late"}]),
}


def workspace(template: Path, root: Path) -> Workspace:
    shutil.copytree(template, root, symlinks=True)
    write_params(root, {"data.min_batch_rows": 5, "data.settle_seconds": 0,
                        "data.label_map": {"0": "negative"}})
    return Workspace.open(root)


def collected(ws: Workspace, files: dict[str, bytes], chunk_rows: int) -> tuple[CollectResult, dict[str, Any]]:
    """Land an earlier file holding review 900, collect it, then land `files` and collect them."""
    landing = Path(ws.landing)
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "earlier.csv").write_bytes(csv_bytes([(review(900), "positive")]))
    collect(ws)
    for name, data in files.items():
        (landing / name).write_bytes(data)
    result = collect(ws, chunk_rows=chunk_rows)
    return result, state(ws)


def state(ws: Workspace) -> dict[str, Any]:
    """What collect leaves behind, in comparable form."""
    with sqlite3.connect(ws.ledger_db) as db:
        ledger = db.execute("SELECT sha256, name, size, rows_in, rows_accepted, rows_quarantined, batch_id "
                            "FROM files ORDER BY rowid").fetchall()
        keys = db.execute("SELECT key, sha256, row FROM row_keys ORDER BY key").fetchall()
    folders = (ws.staged_dir, ws.accepted_dir, ws.quarantine_dir)
    data = {p.relative_to(ws.data_dir).as_posix(): (p.read_text(encoding="utf-8") if p.suffix == ".jsonl" else
                                                      pd.read_parquet(p).values.tolist())
            for folder in folders if folder.exists() for p in sorted(folder.iterdir())}
    leftovers = sorted(p.name for p in ws.root.rglob("*.tmp"))
    return {"ledger": ledger, "keys": keys, "data": data, "leftovers": leftovers}


def test_a_file_of_many_chunks_is_collected_as_when_read_whole(workspace_template: Path, tmp_path: Path) -> None:
    whole, whole_state = collected(workspace(workspace_template, tmp_path / "whole"), FILES, WHOLE)
    chunked, chunked_state = collected(workspace(workspace_template, tmp_path / "chunked"), FILES, 4)

    assert chunked == whole
    assert chunked_state == whole_state
    assert whole_state["leftovers"] == []
    by_name = {f.name: f for f in whole.files}
    assert (by_name["rows.csv"].rows_in, by_name["rows.csv"].rows_accepted) == (23, 18)
    assert by_name["rows.csv"].reasons == {
        "duplicate of row 3 of this file": 1, "duplicate of row 6 of this file, with another label ('positive' there)": 1,
        "unknown label 'neutral' (expected one of ['negative', 'positive'])": 1, "empty text": 1,
        "duplicate of a row already ingested from earlier.csv": 1}
    assert "labels mapped by data.label_map: '0' -> 'negative' (1 rows)" in by_name["rows.csv"].remarks
    # The other files (collected in name order) repeat rows.csv's rows: all quarantined as duplicates of it,
    # but for the jsonl's last row, which waits in staging for more.
    assert [f.name for f in whole.files] == ["rows.csv", "rows.csv.gz", "rows.jsonl", "rows.parquet"]
    assert [f.rows_accepted for f in whole.files] == [18, 0, 1, 0] and whole.held_rows == 1
    assert len(whole_state["data"]["accepted/batch-0001.parquet"]) == 1 + 18  # earlier.csv waited for rows.csv


BROKEN = {
    "quote.csv": (csv_bytes(rows()) + b'"a quote never closed,positive\n', "malformed CSV on line 25"),
    "json.jsonl": (jsonl_bytes([{"text": t, "label": label} for t, label in rows()]) + b"{not json\n",
                   "not valid JSON"),
    "bytes.csv": (csv_bytes(rows()) + "café,positive\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 on line 25)"),
    "cut.csv.gz": (gzip.compress(csv_bytes(rows()), mtime=0)[:-12], "unreadable gz file (corrupt or truncated)"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_fault_in_the_last_chunk_refuses_the_whole_file(workspace_template: Path, tmp_path: Path,
                                                            name: str) -> None:
    data, reason = BROKEN[name]
    ws = workspace(workspace_template, tmp_path / "ws")
    result, after = collected(ws, {name: data}, 4)

    (outcome,) = result.files
    assert (outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined) == (1, 0, 1)
    (why,) = outcome.reasons
    assert reason in why
    assert result.new_batches == [] and after["leftovers"] == []
    assert [k for k in after["keys"] if k[1] == outcome.sha256] == []  # no row of it is known to the ledger
    stem = outcome.sha256[:16]
    assert not (ws.staged_dir / f"{stem}.parquet").exists()
    (record,) = [json.loads(line) for line in after["data"][f"quarantine/{stem}.jsonl"].splitlines()]
    assert (record["row"], record["reason"], record["record"]) == (0, why, None)
    # The same bytes read in one chunk are refused for the same reason.
    whole, _ = collected(workspace(workspace_template, tmp_path / "whole"), {name: data}, WHOLE)
    assert whole.files == result.files
