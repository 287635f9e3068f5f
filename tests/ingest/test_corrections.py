"""Label corrections: files landed under `corrections/` in a real workspace's landing zone, ingested exactly once,
each row applied (with its lineage in the ledger, SQLite and PostgreSQL) or quarantined with its reason.

The tests work on copies of one workspace per module (git + DVC set-up costs seconds), as tests/ingest/test_collect.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from kaizen.tasks.formats.text import text_key
from kaizen.tasks.ingest.collect import collect, landed_files
from kaizen.tasks.ingest.corrections import (
    applied_path,
    correction_files,
    corrections,
    mark_applied,
    record_corrections,
)
from kaizen.tasks.ingest.ledger import FileRecord, Ledger
from kaizen.tasks.workspace.faults import ENV
from kaizen.tasks.workspace.files import json_line
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import csv_bytes, land, quarantine_records, sample, sha256
from tests.support.workspaces import REPO, write_params

FLIP = {"negative": "positive", "positive": "negative"}
UNKNOWN = "unknown label 'neutral' (expected one of ['negative', 'positive'])"


@pytest.fixture
def new_ws(copy_workspace) -> Callable[..., Workspace]:
    return lambda **overrides: copy_workspace({"data.min_batch_rows": 20, "data.settle_seconds": 0}, **overrides)


def movies(domains, n: int = 30, seed: int = 1) -> pd.DataFrame:
    frame = sample(domains["movies"], n, seed=seed)
    return frame[~frame["text"].map(text_key).duplicated()].reset_index(drop=True)


def land_fix(ws: Workspace, name: str, rows: list[tuple]) -> bytes:
    return land(Path(ws.corrections_landing), name, csv_bytes(rows)).read_bytes()


def batch_corrections(ws: Workspace, batch: str) -> dict[str, str]:
    frame = pd.read_parquet(ws.corrections_file(batch))
    return dict(zip(frame["key"], frame["label"], strict=True))


def test_a_correction_file_supersedes_labels_with_lineage_and_quarantines_what_corrects_nothing(new_ws, domains) -> None:
    ws = new_ws()
    rows = movies(domains)
    data = land(ws, "movies.csv", rows).read_bytes()
    (Path(ws.landing) / "elsewhere").mkdir()  # another folder is still reported; corrections/ is not
    collect(ws)
    text = rows["text"]
    fix = land_fix(ws, "fix.csv", [
        ("  " + text[0].upper() + " ", FLIP[rows["label"][0]]),  # 1: applied (the text matched as dedup matches)
        (text[1], FLIP[rows["label"][1]]),                        # 2: applied
        ("a text nobody ever landed", "positive"),               # 3
        (text[2], "neutral"),                                      # 4
        (text[3], rows["label"][3]),                               # 5
        (text[0], rows["label"][0]),                               # 6: the same text as row 1
        ("", "positive"),                                          # 7
    ])

    result = collect(ws)

    assert result.files == [] and [s.name for s in result.skipped] == ["elsewhere"]
    (outcome,) = result.corrections
    expected = {3: "no such text was ever ingested: nothing to correct (new rows go in the landing zone itself)",
                4: UNKNOWN, 5: f"already labeled {rows['label'][3]!r}: nothing to correct",
                6: f"corrects the same text as row 1 of this file, with another label ({FLIP[rows['label'][0]]!r} "
                   "there)", 7: "empty text"}
    assert (outcome.name, outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined) == (
        "corrections/fix.csv", 7, 2, 5)
    assert {q["row"]: q["reason"] for q in quarantine_records(ws, fix)} == expected
    assert sum(outcome.reasons.values()) == 5
    assert "corrections/fix.csv: 2 of 7 labels corrected, quarantined: " in result.describe()[0]
    with Ledger(ws.ledger_db) as ledger:
        made = corrections(ledger)
        assert [(c.row, c.text, c.old_label, c.new_label, c.batch_id, c.source_sha256, c.file_sha256, c.file_name)
                for c in made] == [
            (1, "  " + text[0].upper() + " ", rows["label"][0], FLIP[rows["label"][0]], "batch-0001", sha256(data),
             sha256(fix), "corrections/fix.csv"),
            (2, text[1], rows["label"][1], FLIP[rows["label"][1]], "batch-0001", sha256(data), sha256(fix),
             "corrections/fix.csv")]
        assert all(c.at and c.applied_in is None for c in made)
        assert [(f.name, f.rows_in, f.rows_accepted, f.rows_quarantined) for f in correction_files(ledger)] == [
            ("corrections/fix.csv", 7, 2, 5)]
    # Archived byte for byte and gone from the landing zone; the batch stays as ingested; its split stage's input
    # holds the new labels.
    assert [p.read_bytes() for p in ws.archive_dir.glob(f"{sha256(fix)[:16]}-*")] == [fix]
    assert landed_files(ws) == [] and not applied_path(ws).exists()
    assert pd.read_parquet(ws.batch_file("batch-0001"))["label"].tolist() == rows["label"].tolist()
    assert batch_corrections(ws, "batch-0001") == {text_key(text[0]): FLIP[rows["label"][0]],
                                                   text_key(text[1]): FLIP[rows["label"][1]]}


def test_a_correction_file_is_ingested_once_and_a_later_one_supersedes_it(new_ws, domains) -> None:
    ws = new_ws(data__min_batch_rows=1000)  # the rows wait in staging: a correction follows them into their batch
    rows = movies(domains)
    land(ws, "movies.csv", rows)
    collect(ws)
    first = land_fix(ws, "fix.csv", [(rows["text"][0], FLIP[rows["label"][0]])])
    collect(ws)
    land_fix(ws, "fix-again.csv", [(rows["text"][0], FLIP[rows["label"][0]])])  # the same bytes, another name
    again = collect(ws)
    land_fix(ws, "fix-back.csv", [(rows["text"][0], rows["label"][0])])
    back = collect(ws)

    assert [(o.name, o.note) for o in again.corrections] == [
        ("corrections/fix-again.csv", "already ingested as corrections/fix.csv: nothing to do")]
    assert [o.rows_accepted for o in back.corrections] == [1]
    assert landed_files(ws) == []
    with Ledger(ws.ledger_db) as ledger:
        made = corrections(ledger)
        assert [(c.file_sha256, c.old_label, c.new_label, c.batch_id) for c in made] == [
            (sha256(first), rows["label"][0], FLIP[rows["label"][0]], None),
            (made[1].file_sha256, FLIP[rows["label"][0]], rows["label"][0], None)]
        assert len(correction_files(ledger)) == 2
    write_params(ws.root, {"data.min_batch_rows": 20})
    assert collect(Workspace.open(ws.root)).new_batches == ["batch-0001"]
    assert batch_corrections(ws, "batch-0001") == {text_key(rows["text"][0]): rows["label"][0]}  # the latest


def test_a_repeat_with_another_label_outside_corrections_says_how_to_correct_it(new_ws, domains) -> None:
    ws = new_ws()
    rows = movies(domains)
    land(ws, "movies.csv", rows)
    collect(ws)
    land_fix(ws, "fix.csv", [(rows["text"][2], FLIP[rows["label"][2]])])
    collect(ws)
    repeats = land(ws, "repeats.csv", csv_bytes([(rows["text"][0], rows["label"][0]),
                                                (rows["text"][1], FLIP[rows["label"][1]]),
                                                (rows["text"][2], rows["label"][2])])).read_bytes()
    collect(ws)

    same = "duplicate of a row already ingested from movies.csv"
    assert {q["row"]: q["reason"] for q in quarantine_records(ws, repeats)} == {
        1: same,
        2: f"{same}, with a different label ({rows['label'][1]!r} there, {FLIP[rows['label'][1]]!r} here): land it "
           "under corrections/ to correct it",
        3: f"{same}, with a different label ({FLIP[rows['label'][2]]!r} there, {rows['label'][2]!r} here): land it "
           "under corrections/ to correct it"}  # "there": the label as corrected


@pytest.mark.parametrize("point", ["ledger:corrections-uncommitted", "collect:recorded@2"])
def test_a_collect_killed_while_it_corrects_is_finished_by_the_next_once(new_ws, domains, point: str) -> None:
    """Killed before the correction file's commit, its rows are applied by the next run; after it (before the
    file left the landing zone), the next run finds it ingested: each correction is in the ledger once."""
    ws = new_ws()
    rows = movies(domains)
    land(ws, "movies.csv", rows)
    fix = land_fix(ws, "fix.csv", [(rows["text"][0], FLIP[rows["label"][0]]), ("never landed", "positive")])
    child = "import sys; from kaizen.tasks.ingest.collect import collect; from kaizen.tasks.workspace.layout " \
            "import Workspace; collect(Workspace.open(sys.argv[1]))"
    killed = subprocess.run([sys.executable, "-c", child, str(ws.root)], cwd=REPO, env={**os.environ, ENV: point},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached:\n{killed.stderr[-2000:]}"
    with Ledger(ws.ledger_db) as ledger:
        assert len(corrections(ledger)) == (0 if point.startswith("ledger") else 1)
    assert landed_files(ws) == ["corrections/fix.csv"]

    result = collect(ws)

    assert [o.note for o in result.corrections] == (
        ["ingested"] if point.startswith("ledger") else ["already ingested as corrections/fix.csv: nothing to do"])
    assert landed_files(ws) == [] and not applied_path(ws).exists()
    with Ledger(ws.ledger_db) as ledger:
        assert [(c.file_sha256, c.new_label) for c in corrections(ledger)] == [(sha256(fix), FLIP[rows["label"][0]])]
    assert [q["row"] for q in quarantine_records(ws, fix)] == [2]
    assert batch_corrections(ws, "batch-0001") == {text_key(rows["text"][0]): FLIP[rows["label"][0]]}


def test_a_pipeline_that_predates_corrections_refuses_to_ignore_them(new_ws, domains) -> None:
    from kaizen.tasks.data.data_version import build_data_version

    ws = new_ws()
    rows = movies(domains)
    land(ws, "movies.csv", rows)
    collect(ws)
    dvc_yaml = ws.root / "dvc.yaml"
    dvc_yaml.write_text("".join(line for line in dvc_yaml.read_text().splitlines(keepends=True)
                                if "data/corrections/" not in line))
    land_fix(ws, "fix.csv", [(rows["text"][0], FLIP[rows["label"][0]])])
    collect(ws)
    with pytest.raises(RuntimeError, match=r"does not list data/corrections/\$\{item\}\.parquet"):
        build_data_version(ws, "batch-0001")


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "ledger.db"
    return request.getfixturevalue("postgres")["create"](f"ledger_{uuid.uuid4().hex[:10]}")


def test_the_ledger_keeps_corrections_with_their_lineage(location, tmp_path: Path) -> None:
    applied = tmp_path / "applied.jsonl"

    def correct(sha: str, key: str, old: str | None, new: str) -> None:
        applied.write_text(json_line({"key": key, "text": key.upper(), "source_sha256": "a" * 64, "old_label": old,
                                      "new_label": new, "row": 1}) + "\n")
        record_corrections(ledger, FileRecord(sha * 64, f"corrections/{sha}.csv", 1, 1, 0, None), 10, applied)

    with Ledger(location) as ledger:
        ledger.record_file(FileRecord("a" * 64, "a.csv", 2, 2, 0, None), size=10,
                           row_keys=[("k1", 1, "negative"), ("k2", 2, "positive")])
        ledger.record_batch("batch-0001", 2, ["a" * 64])
        assert ledger.key_origins(["k1", "k3"]) == {"k1": ("a" * 64, "negative")}
        correct("c", "k1", "negative", "positive")
        assert ledger.key_origins(["k1", "k2", "k3"]) == {"k1": ("a" * 64, "positive"), "k2": ("a" * 64, "positive")}
        correct("d", "k1", "positive", "negative")
        assert ledger.key_origins(["k1"]) == {"k1": ("a" * 64, "negative")}  # the latest correction
        mark_applied(ledger, ["batch-0001"], "batch-0002")
        made = corrections(ledger, applied_in="batch-0002")
        assert [(c.text, c.old_label, c.new_label, c.file_name, c.batch_id) for c in made] == [
            ("K1", "negative", "positive", "corrections/c.csv", "batch-0001"),
            ("K1", "positive", "negative", "corrections/d.csv", "batch-0001")]
        assert [f.name for f in correction_files(ledger)] == ["corrections/c.csv", "corrections/d.csv"]
        assert correction_files(ledger, "c" * 64)[0].rows_accepted == 1 and correction_files(ledger, "e" * 64) == []
