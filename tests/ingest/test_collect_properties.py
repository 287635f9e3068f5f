"""collect's promises as properties: whatever bytes or rows arrive, the parser never crashes and never loses
a row; wherever collect is killed, the next run finishes the work with every file ingested exactly once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kaizen.tasks.formats.text import text_key
from kaizen.tasks.ingest.collect import KILL_POINTS, collect, ingest_file
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.ingest.validate import NA_MARKERS
from kaizen.tasks.workspace.faults import ENV
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.members import template
from kaizen.tasks.workspace.settings import load_settings
from tests.support.files import csv_bytes, parquet_bytes
from tests.support.workspaces import REPO, new_workspace, write_params

SETTINGS = load_settings(template("params.yaml"))
LABELS = set(SETTINGS.data.labels)


@pytest.fixture
def scratch() -> Iterator[Workspace]:
    """A bare workspace layout in a fresh folder (ingest_file needs only the data folders and a ledger)."""
    root = Path(tempfile.mkdtemp(prefix="kaizen-prop-"))
    try:
        yield Workspace(root=root, settings=SETTINGS)
    finally:
        shutil.rmtree(root)


def ingest(root: Path, name: str, data: bytes) -> tuple[Any, pd.DataFrame, list[dict]]:
    """ingest_file into an empty workspace under `root`: the outcome, the staged rows, the quarantine lines."""
    shutil.rmtree(root, ignore_errors=True)
    ws = Workspace(root=root, settings=SETTINGS)
    ledger = Ledger(ws.ledger_db)
    try:
        outcome = ingest_file(ws, ledger, name, data)
    finally:
        ledger.close()
    stem = outcome.sha256[:16]
    staged_file, quarantine_file = ws.staged_dir / f"{stem}.parquet", ws.quarantine_dir / f"{stem}.jsonl"
    staged = pd.read_parquet(staged_file) if staged_file.exists() else pd.DataFrame(columns=["text", "source_row"])
    # Strict UTF-8 and strict JSON: whatever a row held, its quarantine record can be read back.
    # splitlines, as a careless reader would: a record must be one line even for NEL or U+2028 in a cell.
    lines = [json.loads(line) for line in quarantine_file.read_bytes().decode("utf-8").splitlines()] \
        if quarantine_file.exists() else []
    assert (ws.archive_dir / f"{stem}-{name}").read_bytes() == data
    return outcome, staged, lines


def assert_every_row_counted(outcome: Any, staged: pd.DataFrame, lines: list[dict], rows_in: int | None) -> None:
    """Every row is on disk once, staged or quarantined, as the outcome says. `rows_in` is the number of rows
    the file holds, counted independently of collect (None: no independent reader could count them)."""
    assert outcome.note == "ingested"
    assert (len(staged), len(lines), sum(outcome.reasons.values())) == (
        outcome.rows_accepted, outcome.rows_quarantined, outcome.rows_quarantined)
    assert all(isinstance(q["reason"], str) and q["reason"] for q in lines)
    rows = sorted([q["row"] for q in lines] + staged["source_row"].tolist())
    if rows == [0]:  # the file as a whole was refused: one quarantined unit
        assert outcome.rows_in == 1 and outcome.rows_accepted == 0
        return
    assert rows == list(range(1, len(rows) + 1))  # each row 1..n accounted for exactly once
    assert outcome.rows_in == len(rows)
    if rows_in is not None:
        assert outcome.rows_in == rows_in


def counted_rows(data: bytes, name: str) -> int | None:
    """Rows in a file by the plain readers (csv, json, pyarrow), or None where they cannot read it. Counted
    without collect, so that a row collect lost or made up shows."""
    import pyarrow.parquet as pq

    if name.endswith(".parquet"):
        try:
            return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
        except Exception:  # noqa: BLE001  (no opinion: collect must then refuse the file whole)
            return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if name.endswith((".csv", ".tsv")):
        records = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter="\t" if name.endswith(".tsv")
                                         else ",") if r]
        return len(records) - 1 if records else None
    if name.endswith(".jsonl"):
        return len([line for line in text.split("\n") if line.strip()])
    return None


# --- the parser on random bytes -------------------------------------------------------------------------

VALID_PARQUET = parquet_bytes(pd.DataFrame({"text": ["a fine film", "a dull one"], "label": ["positive", "negative"]}))
PAYLOADS = st.one_of(
    st.binary(max_size=2000),
    st.binary(max_size=2000).map(lambda b: b"text,label\n" + b),
    st.lists(st.binary(max_size=60) | st.just(b'{"text": "fine words", "label": "positive"}'), max_size=12)
    .map(b"\n".join),
    st.integers(0, len(VALID_PARQUET)).map(lambda n: VALID_PARQUET[:n]),  # truncated
    st.tuples(st.integers(0, len(VALID_PARQUET) - 1), st.binary(min_size=1, max_size=8))  # corrupted
    .map(lambda t: VALID_PARQUET[: t[0]] + t[1] + VALID_PARQUET[t[0] + len(t[1]):]),
)


# A column name that is not UTF-8 in the Parquet schema: pyarrow raises UnicodeDecodeError reading the names.
NAME_NOT_UTF8 = VALID_PARQUET.replace(b"label", b"\xffabel", 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=PAYLOADS, name=st.sampled_from(["f.csv", "f.tsv", "f.jsonl", "f.json", "f.parquet", "f.txt"]))
@example(data=NAME_NOT_UTF8, name="f.parquet")
def test_random_bytes_never_crash_and_every_row_is_counted(scratch: Workspace, data: bytes, name: str) -> None:
    outcome, staged, lines = ingest(scratch.root / "ws", name, data)
    assert_every_row_counted(outcome, staged, lines, counted_rows(data, name))


def test_a_file_whose_reading_raises_any_error_is_quarantined_whole_and_the_rest_go_on(copy_workspace) -> None:
    ws = copy_workspace({"data.min_batch_rows": 20, "data.settle_seconds": 0})
    landing = Path(ws.landing)
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "a-bad-names.parquet").write_bytes(NAME_NOT_UTF8)
    (landing / "b-good.csv").write_bytes(csv_bytes(labelled(range(25))))

    result = collect(ws)

    bad, good = result.files
    assert (bad.note, bad.rows_accepted, bad.rows_quarantined) == ("ingested", 0, 1)
    assert "UnicodeDecodeError" in next(iter(bad.reasons))
    assert (good.rows_in, good.rows_accepted) == (25, 25) and result.new_batches == ["batch-0001"]
    assert list(Path(ws.landing).iterdir()) == []  # nothing left to fail the next run the same way
    assert (ws.archive_dir / f"{bad.sha256[:16]}-a-bad-names.parquet").read_bytes() == NAME_NOT_UTF8


# --- the parser on random rows --------------------------------------------------------------------------

CELLS = st.one_of(st.text(max_size=40), st.sampled_from(["", "  ", "\t\n", "NaN", "null", "positive", "a\r\nb",
                                                         'say "hi", then; go|', "x" * 5001]),
                  st.none(), st.integers(), st.floats(), st.booleans())
LABEL_CELLS = st.one_of(st.sampled_from(["positive", "negative", "neutral", "", " positive", "Positive"]),
                        st.none(), st.integers(-1, 2), st.booleans())
ROWS = st.lists(st.fixed_dictionaries({"text": CELLS, "label": LABEL_CELLS, "extra": CELLS}), min_size=1, max_size=20)


def as_cell(value: Any) -> str | None:
    """What a CSV or a string Parquet column can hold of a value."""
    return None if value is None else str(value)


def encode(rows: list[dict], fmt: str) -> tuple[bytes, list[dict]]:
    """The file's bytes, and the rows as the file holds them (a CSV holds only strings)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"), rows
    held = [{k: as_cell(v) for k, v in r.items()} for r in rows]
    if fmt == "parquet":
        return parquet_bytes(pd.DataFrame(held, dtype=object)), held
    out = io.StringIO()
    # "\r\n" as the terminator makes the writer quote every cell holding a "\r": a bare "\r" is a line
    # break to CSV readers, so a file written with "\n" alone would not hold the rows it was given.
    writer = csv.DictWriter(out, fieldnames=["text", "label", "extra"], delimiter="\t" if fmt == "tsv" else ",",
                            lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(held)
    return out.getvalue().encode("utf-8"), [{k: "" if v is None else v for k, v in r.items()} for r in held]


def learnable(text: Any, label: Any) -> bool:
    """The rule, restated independently: a real text of sensible length, and a known label."""
    if not isinstance(text, str) or not text.strip():
        return False
    if text.strip().casefold() in NA_MARKERS or len(text) > SETTINGS.data.max_text_chars:
        return False
    return isinstance(label, str) and label in LABELS


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, fmt=st.sampled_from(["csv", "tsv", "jsonl", "parquet"]))
@example(rows=[{"text": "", "label": None, "extra": None}, {"text": "", "label": None, "extra": "\r0"}], fmt="csv")
def test_random_rows_are_each_accepted_or_quarantined_and_never_altered(scratch: Workspace, rows: list[dict],
                                                                         fmt: str) -> None:
    data, held = encode(rows, fmt)
    outcome, staged, lines = ingest(scratch.root / "ws", f"rows.{fmt}", data)

    assert_every_row_counted(outcome, staged, lines, len(rows))
    seen: set[str] = set()
    expected = []
    for i, row in enumerate(held, 1):
        if learnable(row["text"], row["label"]) and text_key(row["text"]) not in seen:
            seen.add(text_key(row["text"]))
            expected.append(i)
    assert staged["source_row"].tolist() == expected  # no good row refused, no bad one let in
    for _, row in staged.iterrows():  # an accepted text is exactly the text that arrived
        assert (row["text"], row["label"]) == (held[row["source_row"] - 1]["text"], held[row["source_row"] - 1]["label"])


# --- killed anywhere: the next run finishes the work ----------------------------------------------------


def review(i: int) -> str:
    return f"Review {i}: the story is {'gripping' if i % 2 else 'dull'} and scene {i * 7} stays with you."


def labelled(ids: range) -> list[tuple[str, str]]:
    return [(review(i), "positive" if i % 2 else "negative") for i in ids]


A = csv_bytes([*labelled(range(30)), ("", "positive"), (review(100), "neutral"), (review(3).upper(), "positive")])
LANDED = {
    "a.csv": A,                                               # 30 accepted, 3 quarantined
    "b.jsonl": "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in
                       [*labelled(range(30, 55)), *labelled(range(5, 7)), (review(101), "meh")]).encode(),
    "c-copy.csv": A,                                          # the same bytes again: already ingested
    "d.parquet": parquet_bytes(pd.DataFrame({"text": ["", None, "   "], "label": ["positive"] * 3})),  # all bad
    "e.csv": csv_bytes(labelled(range(55, 65))),              # 10 accepted: held, too few for a batch
}
# Each point, and the n-th time it is reached where that hits another file or write (see LANDED's order).
POINTS = [*KILL_POINTS, "atomic:written@2", "atomic:written@11", "collect:archived@4", "ledger:file-uncommitted@2",
          "collect:recorded@3"]
CHILD = "import sys; from kaizen.tasks.ingest.collect import collect; from kaizen.tasks.workspace.layout import Workspace; " \
        "collect(Workspace.open(sys.argv[1]))"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with LANDED waiting in its landing zone."""
    root = new_workspace(tmp_path_factory.mktemp("loaded") / "ws").root
    write_params(root, {"data.min_batch_rows": 50, "data.settle_seconds": 0})
    landing = root / "data" / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    for name, data in LANDED.items():
        (landing / name).write_bytes(data)
    return root


def snapshot(ws: Workspace) -> dict[str, Any]:
    """Everything collect leaves behind, in comparable form."""
    def files(folder: Path, read) -> dict[str, Any]:
        return {p.name: read(p) for p in sorted(folder.iterdir())} if folder.exists() else {}

    def rows(path: Path) -> list:
        return pd.read_parquet(path).values.tolist()

    with sqlite3.connect(ws.ledger_db) as db:
        ledger = db.execute("SELECT sha256, name, size, rows_in, rows_accepted, rows_quarantined, batch_id "
                            "FROM files ORDER BY rowid").fetchall()
        batches = db.execute("SELECT batch_id, rows, files, status FROM batches ORDER BY batch_id").fetchall()
        ingested = db.execute("SELECT sha256, COUNT(*) FROM deliveries WHERE outcome='ingested' GROUP BY sha256").fetchall()
        keys = db.execute("SELECT key, sha256, row FROM row_keys ORDER BY key").fetchall()
    return {"ledger": ledger, "batches": batches, "ingested": dict(ingested), "keys": keys,
            "archive": files(ws.archive_dir, lambda p: hashlib.sha256(p.read_bytes()).hexdigest()),
            "staged": files(ws.staged_dir, rows), "accepted": files(ws.accepted_dir, rows),
            "quarantine": files(ws.quarantine_dir, lambda p: p.read_text(encoding="utf-8")),
            "landing": sorted(p.name for p in Path(ws.landing).iterdir())}


@pytest.fixture(scope="module")
def reference(loaded: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What one uninterrupted collect leaves behind."""
    root = tmp_path_factory.mktemp("reference") / "ws"
    shutil.copytree(loaded, root, symlinks=True)
    ws = Workspace.open(root)
    result = collect(ws)
    assert (result.new_batches, result.held_rows) == (["batch-0001"], 10)
    return snapshot(ws)


def test_the_reference_run_ingests_every_file_once(reference: dict[str, Any]) -> None:
    shas = {hashlib.sha256(d).hexdigest() for d in LANDED.values()}
    assert reference["ingested"] == dict.fromkeys(shas, 1)
    assert [row[1:] for row in reference["ledger"]] == [
        ("a.csv", len(A), 33, 30, 3, "batch-0001"), ("b.jsonl", len(LANDED["b.jsonl"]), 28, 25, 3, "batch-0001"),
        ("d.parquet", len(LANDED["d.parquet"]), 3, 0, 3, None), ("e.csv", len(LANDED["e.csv"]), 10, 10, 0, None)]
    assert reference["landing"] == [] and len(reference["accepted"]["batch-0001.parquet"]) == 55
    assert len(reference["keys"]) == 65 and len(reference["archive"]) == 4


@pytest.mark.parametrize("point", POINTS)
def test_a_collect_killed_at_any_point_is_finished_by_the_next(loaded: Path, reference: dict[str, Any],
                                                               tmp_path: Path, point: str) -> None:
    root = tmp_path / "ws"
    shutil.copytree(loaded, root, symlinks=True)
    killed = subprocess.run([sys.executable, "-c", CHILD, str(root)], cwd=REPO, env={**os.environ, ENV: point},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached:\n{killed.stderr[-2000:]}"
    ws = Workspace.open(root)

    # Killed: whatever the ledger says is on disk, and every landed byte is in the landing zone or the archive.
    state = snapshot(ws)
    archived = set(state["archive"].values())
    for sha, _, _, _, accepted, quarantined, batch_id in state["ledger"]:
        assert sha in archived
        assert (quarantined == 0) or f"{sha[:16]}.jsonl" in state["quarantine"]
        assert batch_id is not None or accepted == 0 or f"{sha[:16]}.parquet" in state["staged"]
    assert all(f"{b[0]}.parquet" in state["accepted"] for b in state["batches"])
    for name, data in LANDED.items():
        assert name in state["landing"] or hashlib.sha256(data).hexdigest() in archived, name

    collect(ws)

    assert snapshot(ws) == reference
    # Rows counted in by hand from LANDED (a.csv 33, b.jsonl 28, d.parquet 3, e.csv 10; c-copy.csv is a.csv):
    # whatever this run found already done, the ledger holds every row once.
    assert sum(row[3] for row in snapshot(ws)["ledger"]) == 33 + 28 + 3 + 10
    assert [p for p in ws.data_dir.rglob("*.tmp")] == []
    assert collect(ws).files == []  # and nothing is left to do


def test_leftovers_of_a_killed_collect_go_even_when_their_file_never_comes_back(loaded: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(loaded, root, symlinks=True)
    killed = subprocess.run([sys.executable, "-c", CHILD, str(root)], cwd=REPO,
                            env={**os.environ, ENV: "atomic:written@3"}, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    ws = Workspace.open(root)
    stem = hashlib.sha256(A).hexdigest()[:16]
    assert (ws.staged_dir / f"{stem}.parquet").exists() and (ws.quarantine_dir / f".{stem}.jsonl.tmp").exists()
    # Before the next run, a.csv is replaced by a corrected version and its copy withdrawn: the bytes
    # collect had begun with will never be committed.
    corrected = csv_bytes(labelled(range(200, 230)))
    (Path(ws.landing) / "a.csv").write_bytes(corrected)
    (Path(ws.landing) / "c-copy.csv").unlink()

    collect(ws)

    state = snapshot(ws)
    known = {row[0][:16]: row for row in state["ledger"]}
    assert stem not in known and hashlib.sha256(corrected).hexdigest()[:16] in known
    assert list(ws.data_dir.rglob("*.tmp")) == []
    assert {Path(n).stem for n in state["staged"]} == {s for s, row in known.items() if row[4] and row[6] is None}
    assert {Path(n).stem for n in state["quarantine"]} == {s for s, row in known.items() if row[5]}
    # The raw bytes that did arrive are never deleted, committed or not.
    assert (ws.archive_dir / f"{stem}-a.csv").read_bytes() == A


def test_ci_draws_the_same_examples_on_every_run() -> None:
    """`.ci/run` selects the "ci" profile: derandomized, so a red build is reproducible; "dev" explores."""
    from hypothesis import settings as profile

    assert "HYPOTHESIS_PROFILE=ci" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert profile.get_profile("ci").derandomize and profile.get_profile("ci").database is None
    assert not profile.get_profile("dev").derandomize
    script = ("import os, sys; sys.path.insert(0, '.'); import tests.conftest; from hypothesis import settings; "
              "print(settings.default.derandomize)")
    for name, expected in (("ci", "True"), ("dev", "False")):
        out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "HYPOTHESIS_PROFILE": name})
        assert out.stdout.split()[-1:] == [expected], out.stderr[-2000:]
