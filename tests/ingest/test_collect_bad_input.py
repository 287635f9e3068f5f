"""collect on bad input: every kind of broken file a landing zone can receive, as real files in a real
workspace. Each gets a clear reason (in the quarantine file and in the run's result), the good rows go on,
and for every file rows in = rows accepted + rows quarantined.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from kaizen.tasks.ingest import landing
from kaizen.tasks.ingest.collect import CollectResult, collect, ingest_file
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.workspace.layout import Workspace, hold
from tests.support.files import (
    csv_bytes,
    jsonl_bytes,
    land,
    parquet_bytes,
    quarantine_records,
    records,
    sha256,
)

GOOD = [
    ("A gripping story, told with care; the cast is superb.", "positive"),
    ("Dull, slow and far too long | I checked my watch twice.", "negative"),
    ("Warm, funny and honest: the best film of the year.", "positive"),
    ("The plot falls apart halfway; a waste of a fine cast.", "negative"),
]
UNKNOWN = "unknown label {} (expected one of ['negative', 'positive'])"


# --- real files of each kind ----------------------------------------------------------------------------


GOOD_PARQUET = parquet_bytes(pd.DataFrame(records(GOOD)))
MEGABYTE = "so good " * 375_000  # 3,000,000 characters on one line
UTF16 = "text,label\n" + "".join(f'"{t}",{label}\n' for t, label in GOOD[:2])


class Prefix(str):
    """An expected reason whose tail (a library's own words) may vary."""


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    accepted: list[str]  # the texts accepted, in file order
    reasons: dict[int, str]  # quarantined row (0: the whole file) -> reason
    remarks: tuple[str, ...] = ()


def whole(reason: str) -> dict[int, str]:
    return {0: reason}


CASES = [
    # columns
    Case("misnamed-columns.csv", csv_bytes(GOOD[:3], header=("review", "sentiment")), [],
         dict.fromkeys([1, 2, 3], "missing column(s) ['text', 'label']; the file has ['review', 'sentiment']")),
    Case("missing-label.jsonl", jsonl_bytes([{"text": t} for t, _ in GOOD[:2]]), [],
         dict.fromkeys([1, 2], "missing column(s) ['label']; the file has ['text']")),
    Case("duplicate-columns.csv", csv_bytes([(t, t, label) for t, label in GOOD], header=("text", "text", "label")),
         [], whole("unreadable csv file: column(s) ['text'] appear more than once in the header")),
    # delimiters: read right when only one delimiter yields the columns, named in a remark
    Case("semicolons.csv", csv_bytes(GOOD, delimiter=";"), [t for t, _ in GOOD], {},
         ("wrong delimiter: read as semicolon-separated, though the name says comma-separated",)),
    Case("tabs.csv", csv_bytes(GOOD, delimiter="\t"), [t for t, _ in GOOD], {},
         ("wrong delimiter: read as tab-separated, though the name says comma-separated",)),
    Case("commas.tsv", csv_bytes(GOOD), [t for t, _ in GOOD], {},
         ("wrong delimiter: read as comma-separated, though the name says tab-separated",)),
    Case("semicolons-misnamed.csv", csv_bytes(GOOD[:2], header=("review", "sentiment"), delimiter=";"), [],
         dict.fromkeys([1, 2], "missing column(s) ['text', 'label']; the file has ['review', 'sentiment']"),
         ("wrong delimiter: read as semicolon-separated, though the name says comma-separated",)),
    Case("odd-header.csv", b"text|label;x\n" + b"a,b\n", [],
         {1: "missing column(s) ['text', 'label']; the file has ['text|label;x'] "
             "(wrong delimiter? a column name holds a delimiter)"}),
    Case("fields.csv", b"text,label\n" + b"great, loved it,positive\nno label here\n" + csv_bytes(GOOD[:1])[11:],
         [GOOD[0][0]], {1: "row has 3 field(s), the header has 2 (an unquoted delimiter in the text?)",
                        2: "row has 1 field(s), the header has 2 (a line cut short?)"}),
    # encodings
    Case("latin-1.csv", csv_bytes(GOOD[:2]) + "Un café très fade,negative\n".encode("latin-1"), [],
         whole("unreadable csv file: not UTF-8 text (byte 0xe9 on line 4); save it as UTF-8")),
    Case("utf8-bom.csv", b"\xef\xbb\xbf" + csv_bytes(GOOD), [t for t, _ in GOOD], {}),
    Case("utf8-bom.jsonl", b"\xef\xbb\xbf" + jsonl_bytes(records(GOOD[:2])), [t for t, _ in GOOD[:2]], {}),
    Case("utf16-bom.csv", UTF16.encode("utf-16"), [t for t, _ in GOOD[:2]], {},
         ("decoded as UTF-16 (byte-order mark)",)),
    Case("utf16-no-bom.csv", UTF16.encode("utf-16-le"), [],
         whole("unreadable csv file: NUL bytes in the header (UTF-16 without a byte-order mark?)")),
    Case("workbook.csv", b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb6\x9c", [],
         whole("unreadable csv file: not UTF-8 text (byte 0xb6 on line 1); "
               "a zip archive (an Excel workbook?): export it as CSV")),
    Case("lone-surrogate.jsonl", b'{"text": "bad \\ud800 half", "label": "positive"}\n' + jsonl_bytes(records(GOOD[:1])),
         [GOOD[0][0]], {1: "text is not valid Unicode (it holds a lone surrogate)"}),
    # empty files
    Case("zero.csv", b"", [], whole("unreadable csv file: it is empty (0 bytes)")),
    Case("zero.jsonl", b"", [], whole("unreadable jsonl file: it is empty (0 bytes)")),
    Case("zero.parquet", b"", [], whole("unreadable parquet file: it is empty (0 bytes)")),
    Case("blank-lines.csv", b"\n\n   \n", [], whole("unreadable csv file: no header row (it holds only blank lines)")),
    Case("header-only.csv", b"text,label\n", [], whole("empty csv file: a header and no rows")),
    Case("blank-lines.jsonl", b"\n  \n", [], whole("empty jsonl file: no rows")),
    Case("no-rows.parquet", parquet_bytes(pd.DataFrame({"text": pd.Series([], dtype=str),
                                                         "label": pd.Series([], dtype=str)})),
         [], whole("empty parquet file: no rows")),
    # broken formats
    Case("truncated.parquet", GOOD_PARQUET[: len(GOOD_PARQUET) // 2], [],
         whole(Prefix("unreadable parquet file (corrupt or truncated): ArrowInvalid: "))),
    Case("corrupt.parquet", b"PAR1" + bytes(range(256)) * 4 + b"PAR1", [],
         whole(Prefix("unreadable parquet file (corrupt or truncated): "))),
    Case("malformed-quote.csv", csv_bytes(GOOD[:1]) + b'"quoted"then text,positive\n', [],
         whole("unreadable csv file: malformed CSV on line 3: ',' expected after '\"'")),
    Case("unclosed-quote.csv", csv_bytes(GOOD[:1]) + b'"never closed,positive\nthe rest,negative\n', [],
         whole("unreadable csv file: malformed CSV on line 4: unexpected end of data "
               "(a quote opened and never closed?)")),
    Case("stray-quote.csv", csv_bytes(GOOD[:1]) + b'"cut short,positive\n' + csv_bytes(GOOD[1:2])[11:], [],
         whole("unreadable csv file: malformed CSV on line 4: ',' expected after '\"'")),
    Case("cut-off.jsonl", jsonl_bytes(records(GOOD[:2])) + b'{"text": "cut o', [],
         whole("unreadable jsonl file: not valid JSON (Unterminated string starting at; line 3, column 10)")),
    Case("array-line.jsonl", jsonl_bytes(records(GOOD[:1])) + b'["a", "positive"]\n', [],
         whole("unreadable jsonl file: line 2 is a JSON array, not an object")),
    Case("deep.jsonl", b'{"text": ' + b"[" * 100_000 + b"}\n", [],
         whole(Prefix("unreadable jsonl file: line 1: RecursionError: "))),
    Case("notes.txt", b"just some notes\n", [],
         whole("unsupported file type '.txt' (use CSV, JSON Lines or Parquet: .csv, .tsv, .jsonl, .json, .parquet, each optionally "
              "compressed (.gz, .bz2, .xz, .zip))")),
    Case("README", b"text,label\n", [],
         whole("no file type in the name (use CSV, JSON Lines or Parquet: .csv, .tsv, .jsonl, .json, .parquet, each optionally "
              "compressed (.gz, .bz2, .xz, .zip))")),
    Case("array.json", json.dumps(records(GOOD[:2])).encode(), [t for t, _ in GOOD[:2]], {}),
    # one line of megabytes: that row is quarantined for its length, the others go on
    Case("megabyte-line.csv", csv_bytes([GOOD[0], (MEGABYTE, "positive"), GOOD[1]]), [GOOD[0][0], GOOD[1][0]],
         {2: "text longer than 5000 characters (3000000)"}),
    Case("megabyte-line.jsonl", jsonl_bytes(records([(MEGABYTE, "negative"), GOOD[0]])), [GOOD[0][0]],
         {1: "text longer than 5000 characters (3000000)"}),
    # labels outside the set, and of mixed types
    Case("labels.csv", csv_bytes([(f"{GOOD[0][0]} {i}", label) for i, label in
                                  enumerate(["neutral", "Positive", " positive", "", "negative"])]),
         [f"{GOOD[0][0]} 4"], {1: UNKNOWN.format("'neutral'"), 2: UNKNOWN.format("'Positive'"),
                               3: UNKNOWN.format("' positive'"), 4: "missing label"}),
    Case("labels.jsonl", jsonl_bytes([{"text": f"{GOOD[1][0]} {i}", "label": label} for i, label in
                                      enumerate([1, True, None, 1.5, ["positive"], {"x": 1}, "x" * 100, "positive"])]),
         [f"{GOOD[1][0]} 7"], {1: UNKNOWN.format(1), 2: UNKNOWN.format(True), 3: "missing label", 4: UNKNOWN.format(1.5),
                               5: UNKNOWN.format("['positive']"), 6: UNKNOWN.format("{'x': 1}"),
                               7: UNKNOWN.format("'" + "x" * 56 + "...")}),
    Case("labels.parquet", parquet_bytes(pd.DataFrame({"text": [t for t, _ in GOOD[:2]], "label": [0, 1]})), [],
         {1: UNKNOWN.format(0), 2: UNKNOWN.format(1)}),
    # empty, whitespace-only and NaN text
    Case("empty-text.csv", csv_bytes([("", "positive"), ("   ", "negative"), ("\t", "positive"), ("NaN", "positive"),
                                      ("null", "negative"), GOOD[0]]), [GOOD[0][0]],
         {1: "empty text", 2: "empty text", 3: "empty text", 4: "missing text ('NaN' marks a missing value)",
          5: "missing text ('null' marks a missing value)"}),
    Case("empty-text.jsonl", b'{"text": NaN, "label": "positive"}\n{"text": null, "label": "negative"}\n'
                             b'{"label": "negative"}\n{"text": " \\n ", "label": "negative"}\n{"text": 42, "label": "positive"}\n'
         + jsonl_bytes(records(GOOD[:1])), [GOOD[0][0]],
         {1: "missing text", 2: "missing text", 3: "missing text", 4: "empty text", 5: "text is not a string (int)"}),
    Case("empty-text.parquet", parquet_bytes(pd.DataFrame({"text": [None, float("nan"), "", " ", GOOD[0][0]],
                                                           "label": ["positive"] * 5})), [GOOD[0][0]],
         {1: "missing text", 2: "missing text", 3: "empty text", 4: "empty text"}),
    # rows repeated within the file (case and spacing do not make a new example)
    Case("repeats.csv", csv_bytes([GOOD[0], (GOOD[0][0].upper(), "positive"), ("  " + GOOD[0][0], "negative"), GOOD[1]]),
         [GOOD[0][0], GOOD[1][0]], {2: "duplicate of row 1 of this file",
                                    3: "duplicate of row 1 of this file, with another label ('positive' there)"}),
    # a file where every row is bad: all quarantined, archived, nothing staged
    Case("all-bad.jsonl", jsonl_bytes([{"text": "", "label": "positive"}, {"text": "fine words", "label": "meh"}]), [],
         {1: "empty text", 2: UNKNOWN.format("'meh'")}),
]


# --- a real workspace per test --------------------------------------------------------------------------


@pytest.fixture
def new_ws(copy_workspace) -> Callable[..., Workspace]:
    """A copy of the module's workspace; no settling wait unless a test asks for one."""
    return lambda **overrides: copy_workspace({"data.min_batch_rows": 1000, "data.settle_seconds": 0}, **overrides)


def staged(ws: Workspace, data: bytes) -> list[str]:
    path = ws.staged_dir / f"{sha256(data)[:16]}.parquet"
    return pd.read_parquet(path)["text"].tolist() if path.exists() else []


def assert_whole(result: CollectResult, ws: Workspace, files: dict[str, bytes]) -> None:
    """Every landed file: archived byte for byte, its rows counted on disk (staged, quarantined), ledger and disk
    agree."""
    ledger = Ledger(ws.ledger_db)
    try:
        recorded = {f.sha256: f for f in ledger.files()}
    finally:
        ledger.close()
    for outcome in result.files:
        data = files[outcome.name]
        assert sum(outcome.reasons.values()) == outcome.rows_quarantined, outcome
        if outcome.note != "ingested":
            continue
        record = recorded[outcome.sha256]
        assert (record.rows_in, record.rows_accepted, record.rows_quarantined) == (
            outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined)
        assert len(quarantine_records(ws, data)) == outcome.rows_quarantined
        assert len(staged(ws, data)) == outcome.rows_accepted
        assert list(ws.archive_dir.glob(f"{sha256(data)[:16]}-*"))[0].read_bytes() == data


# --- the table ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_quarantined_with_a_clear_reason(new_ws, case: Case) -> None:
    ws = new_ws()
    land(ws, case.name, case.data)

    result = collect(ws)

    (outcome,) = result.files
    assert (outcome.name, outcome.sha256, outcome.note) == (case.name, sha256(case.data), "ingested")
    assert outcome.remarks == case.remarks
    assert staged(ws, case.data) == case.accepted
    lines = quarantine_records(ws, case.data)
    assert [q["row"] for q in lines] == sorted(case.reasons)
    for q in lines:
        expected = case.reasons[q["row"]]
        assert q["reason"].startswith(expected) if isinstance(expected, Prefix) else q["reason"] == expected, q
        assert (q["file"], q["sha256"]) == (case.name, sha256(case.data))
    assert outcome.reasons == Counter(q["reason"] for q in lines)
    assert (outcome.rows_accepted, outcome.rows_quarantined) == (len(case.accepted), len(case.reasons))
    assert_whole(result, ws, {case.name: case.data})
    assert list(Path(ws.landing).iterdir()) == []
    # The run's summary carries every reason, in words.
    assert result.reasons == outcome.reasons
    summary = "\n".join(result.describe())
    assert all(reason in summary for reason in outcome.reasons), summary
    assert all(remark in summary for remark in case.remarks), summary


def test_a_quarantined_row_keeps_what_it_held(new_ws) -> None:
    ws = new_ws()
    cases = {c.name: c for c in CASES}
    for name in ("fields.csv", "lone-surrogate.jsonl", "megabyte-line.csv"):
        land(ws, name, cases[name].data)
    collect(ws)
    by_row = {q["row"]: q["record"] for q in quarantine_records(ws, cases["fields.csv"].data)}
    assert by_row == {1: {"text": "great", "label": " loved it", "_extra_fields": repr(["positive"])},
                      2: {"text": "no label here", "label": None}}
    by_row = {q["row"]: q["record"] for q in quarantine_records(ws, cases["lone-surrogate.jsonl"].data)}
    assert by_row[1] == {"text": "bad \\ud800 half", "label": "positive"}  # escaped: the file stays valid UTF-8
    by_row = {q["row"]: q["record"] for q in quarantine_records(ws, cases["megabyte-line.csv"].data)}
    # A prefix of a long text, with its length and sha256 (tests/ingest/test_quarantine_limits.py)
    assert by_row[2] == {"text": MEGABYTE[: ws.settings.limits.quarantine_text_chars], "label": "positive"}


# --- across files ---------------------------------------------------------------------------------------


def test_rows_repeated_across_files_are_ingested_once(new_ws) -> None:
    ws = new_ws()
    first = land(ws, "a-first.csv", csv_bytes(GOOD[:2])).read_bytes()
    second = land(ws, "b-second.jsonl", jsonl_bytes(records([(GOOD[1][0].lower(), "negative"), GOOD[2]]))).read_bytes()
    result = collect(ws)
    third = land(ws, "c-third.parquet", parquet_bytes(pd.DataFrame(records(GOOD[2:])))).read_bytes()
    later = collect(ws)

    assert_whole(result, ws, {"a-first.csv": first, "b-second.jsonl": second})
    assert_whole(later, ws, {"c-third.parquet": third})
    assert [q["reason"] for q in quarantine_records(ws, second)] == ["duplicate of a row already ingested from a-first.csv"]
    assert [q["reason"] for q in quarantine_records(ws, third)] == ["duplicate of a row already ingested from b-second.jsonl"]
    assert staged(ws, first) + staged(ws, second) + staged(ws, third) == [t for t, _ in GOOD]


def test_a_batch_too_small_is_held_until_enough_has_arrived(new_ws) -> None:
    ws = new_ws(data__min_batch_rows=5)
    first = land(ws, "1.csv", csv_bytes(GOOD[:3])).read_bytes()
    result = collect(ws)
    assert (result.new_batches, result.held_rows) == ([], 3)
    assert "3 accepted rows wait in staging for enough to form a batch" in result.describe()
    assert collect(ws) == CollectResult([], [], [], 3)  # nothing new: still held, nothing dropped
    assert staged(ws, first) == [t for t, _ in GOOD[:3]]

    land(ws, "2.csv", csv_bytes([*GOOD[3:], ("One more review, and a kind one.", "positive")]))
    result = collect(ws)
    assert (result.new_batches, result.held_rows) == (["batch-0001"], 0)
    batch = pd.read_parquet(ws.batch_file("batch-0001"))
    assert batch["text"].tolist() == [t for t, _ in GOOD] + ["One more review, and a kind one."]
    assert list(ws.staged_dir.iterdir()) == []


# --- files still being written --------------------------------------------------------------------------


def test_a_file_still_being_written_is_never_half_read(new_ws) -> None:
    ws = new_ws(data__settle_seconds=0.3)
    path = land(ws, "growing.csv", b"text,label\n")
    written = 0
    stop = threading.Event()

    def writer() -> None:  # a slow upload: a row every 10 ms
        nonlocal written
        with open(path, "a", encoding="utf-8") as out:
            while not stop.is_set():
                out.write(f"row number {written} of a long upload,positive\n")
                out.flush()
                written += 1
                time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.05)
        result = collect(ws)
    finally:
        stop.set()
        thread.join()
    assert result.files == []
    (skipped,) = result.skipped
    assert skipped.name == "growing.csv" and skipped.reason.startswith("still being written: "), skipped
    assert "collected once it holds still" in skipped.reason
    assert not ws.archive_dir.exists() or list(ws.archive_dir.iterdir()) == []

    result = collect(ws)  # it has held still since: read whole
    (outcome,) = result.files
    assert (outcome.rows_in, outcome.rows_accepted, result.skipped) == (written, written, [])


def test_a_writer_that_pauses_mid_file_is_not_ingested_half_written_at_the_default_settle_time(new_ws) -> None:
    from kaizen.tasks.workspace.members import template
    from kaizen.tasks.workspace.settings import load_settings

    default = load_settings(template("params.yaml")).data.settle_seconds
    pause = 3.0  # a copy over a busy network share stalls for seconds; the old default waited 0.5 s
    assert default >= 2 * pause
    ws = new_ws(data__settle_seconds=default)
    rows = [(f"review {i}: the plot is {'tight' if i % 2 else 'thin'}", "positive" if i % 2 else "negative")
            for i in range(40)]
    path = Path(ws.landing) / "slow.csv"
    path.parent.mkdir(parents=True, exist_ok=True)

    def writer() -> None:  # half the file, a pause, the rest
        with open(path, "wb") as out:
            out.write(csv_bytes(rows[:20]))
            out.flush()
            time.sleep(pause)
            out.write(csv_bytes(rows[20:]).split(b"\n", 1)[1])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        first = collect(ws)  # during the pause
    finally:
        thread.join()
    assert first.files == [] and first.skipped[0].reason.startswith("still being written")

    (outcome,) = collect(ws).files
    assert (outcome.rows_in, outcome.rows_accepted) == (40, 40)  # whole: its tail is not lost


def test_a_file_untouched_for_the_settle_time_is_not_waited_for(new_ws) -> None:
    ws = new_ws(data__settle_seconds=30)
    path = land(ws, "old.csv", csv_bytes(GOOD))
    os.utime(path, (time.time() - 60, time.time() - 60))
    start = time.monotonic()
    result = collect(ws)
    assert time.monotonic() - start < 10
    assert [f.rows_accepted for f in result.files] == [len(GOOD)]


def test_a_file_that_changes_while_read_or_before_removal_stays(new_ws) -> None:
    ws = new_ws()
    path = land(ws, "a.csv", csv_bytes(GOOD[:2]))
    fs, _ = fsspec.core.url_to_fs(ws.landing)
    (file,), _ = landing.survey(ws.landing, settle_seconds=0)
    with open(path, "ab") as out:  # a writer appends after the survey looked
        out.write(b"more,positive\n")
    copy = ws.root / "copy"
    with pytest.raises(landing.NotReady, match=r"changed while it was read \(\d+ bytes, then \d+\)"):
        landing.fetch(fs, file, copy)

    (file,), _ = landing.survey(ws.landing, settle_seconds=0)
    landing.fetch(fs, file, copy)
    assert copy.read_bytes() == path.read_bytes()
    path.write_bytes(csv_bytes(GOOD[2:]))  # replaced after it was read: removing it would lose the new rows
    assert landing.remove(fs, file).startswith("left in the landing zone: it changed after it was read")
    assert path.read_bytes() == csv_bytes(GOOD[2:])


# --- names and paths that try to leave the landing zone -------------------------------------------------


def test_links_and_odd_entries_are_never_followed_and_say_why(new_ws, tmp_path: Path) -> None:
    ws = new_ws()
    secret = tmp_path / "secret.csv"
    secret.write_bytes(csv_bytes(GOOD[:1]))
    folder = Path(ws.landing)
    good = land(ws, "good.csv", csv_bytes(GOOD[1:2])).read_bytes()
    (folder / "out.csv").symlink_to(secret)
    (folder / "up.csv").symlink_to("../../../secret.csv")
    (folder / "in.csv").symlink_to("good.csv")
    (folder / "dangling.csv").symlink_to("/no/such/file.csv")
    (folder / "sub").mkdir()
    os.mkfifo(folder / "pipe.csv")  # reading a FIFO would hang the loop forever

    result = collect(ws)

    assert [f.name for f in result.files] == ["good.csv"]
    assert_whole(result, ws, {"good.csv": good})
    reasons = {s.name: s.reason for s in result.skipped}
    assert reasons == {
        "dangling.csv": "a link to '/no/such/file.csv', outside the landing zone: not followed",
        "in.csv": "a link to 'good.csv': links are not followed; a file inside the landing zone is collected "
                  "on its own, put others in as files",
        "out.csv": f"a link to {str(secret)!r}, outside the landing zone: not followed",
        "pipe.csv": "not a regular file (other: a pipe, socket or device?): not read",
        "sub": "a folder: only files directly in the landing zone are collected",
        "up.csv": "a link to '../../../secret.csv', outside the landing zone: not followed",
    }
    assert secret.read_bytes() == csv_bytes(GOOD[:1])  # nothing outside was read, moved or removed
    assert sorted(p.name for p in folder.iterdir()) == ["dangling.csv", "in.csv", "out.csv", "pipe.csv", "sub", "up.csv"]
    assert all(f"{s.name}: not collected: {s.reason}" in result.describe() for s in result.skipped)
    with sqlite3.connect(ws.ledger_db) as db:
        assert db.execute("SELECT name FROM files").fetchall() == [("good.csv",)]


def test_a_path_trick_in_a_listing_is_not_read(new_ws) -> None:
    ws = new_ws(storage__landing=f"memory://kaizen-{uuid.uuid4().hex}/landing")
    fs, root = fsspec.core.url_to_fs(ws.landing)
    fs.pipe_file(f"{root}/..", csv_bytes(GOOD[:1]))  # a key an object store can hold; never a file name here
    fs.pipe_file(f"{root}/ok.csv", csv_bytes(GOOD[1:2]))
    result = collect(ws)
    assert [(f.name, f.rows_accepted) for f in result.files] == [("ok.csv", 1)]
    (skipped,) = result.skipped
    assert skipped.name == ".." and skipped.reason.startswith(f"a path trick ({root + '/..'!r} is not a file name")
    assert fs.ls(root, detail=False) == [f"{root}/.."]  # left alone


def test_odd_file_names_cannot_steer_where_collect_writes(new_ws) -> None:
    ws = new_ws()
    long_name = "r" * 240 + ".csv"  # with the hash prefix, longer than a file name may be
    odd_name, shown = b"caf\xe9 \xff.csv", "caf\\xe9 \\xff.csv"  # not UTF-8: shown with its bytes escaped
    files = {long_name: csv_bytes(GOOD[:1]), shown: csv_bytes(GOOD[1:2])}
    land(ws, long_name, files[long_name])
    land(ws, odd_name, files[shown])
    result = collect(ws)
    assert sorted(f.name for f in result.files) == sorted(files)
    assert_whole(result, ws, files)
    assert sorted(p.name for p in ws.archive_dir.iterdir()) == sorted(
        [f"{sha256(files[long_name])[:16]}-{'r' * 116}.csv", f"{sha256(files[shown])[:16]}-caf_xe9__xff.csv"])

    # A caller handing ingest_file a name with path components gets it kept inside the archive.
    ledger = Ledger(ws.ledger_db)
    try:
        for name in ("../../outside.csv", "/etc/passwd.csv", "..", "a/../../b.jsonl"):
            outcome = ingest_file(ws, ledger, name, csv_bytes([(f"{name} is a name", "positive")]))
            assert (outcome.note, outcome.rows_in) == ("ingested", 1)
    finally:
        ledger.close()
    assert all(p.parent == ws.archive_dir for p in ws.archive_dir.rglob("*"))
    assert not (ws.root.parent / "outside.csv").exists() and not (ws.data_dir / "outside.csv").exists()


# --- one collect at a time ------------------------------------------------------------------------------


def test_a_second_collect_at_the_same_time_is_refused_clearly(new_ws) -> None:
    ws = new_ws()
    land(ws, "a.csv", csv_bytes(GOOD))
    with hold(ws, "collect", wait=False), pytest.raises(RuntimeError, match="another collect is running in .*collect.lock"):
        collect(ws)
    assert [f.rows_accepted for f in collect(ws).files] == [len(GOOD)]  # the lock went with its holder
