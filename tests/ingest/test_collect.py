"""collect: real files of real labeled rows dropped into a real workspace's landing zone, ingested exactly once.

Every test works on a copy of one workspace made by `init_workspace` (git + DVC) for this module: creating
a fresh one costs about 4 s, copying it a few milliseconds, and collect only reads params.yaml and writes
under data/ and .kaizen/.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from kaizen.tasks.formats.text import text_key
from kaizen.tasks.ingest.collect import CollectResult, FileOutcome, collect, next_batch
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import jsonl_bytes, land, quarantine_records, sample, sha256

LABELS = ["negative", "positive"]


# --- fixtures and helpers -------------------------------------------------------------------------------


@pytest.fixture
def new_ws(copy_workspace) -> Callable[..., Workspace]:
    """A copy of the module's workspace with `section__key=value` overrides written to its params.yaml."""
    return lambda **overrides: copy_workspace({"data.min_batch_rows": 20, "data.settle_seconds": 0}, **overrides)


def unique(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop rows whose text repeats (up to case and spacing): the real domains hold a few such repeats."""
    return frame[~frame["text"].map(text_key).duplicated()].reset_index(drop=True)


def landed(ws: Workspace) -> list[str]:
    landing = Path(ws.landing)
    return sorted(p.name for p in landing.iterdir()) if landing.exists() else []


def ledger_files(ws: Workspace) -> dict[str, tuple[str, int, int, int, str | None]]:
    ledger = Ledger(ws.ledger_db)
    try:
        return {f.sha256: (f.name, f.rows_in, f.rows_accepted, f.rows_quarantined, f.batch_id) for f in ledger.files()}
    finally:
        ledger.close()


def assert_balanced(result: CollectResult, ws: Workspace) -> None:
    """Every row of every file is accepted or quarantined, and the ledger says the same as the outcome."""
    recorded = ledger_files(ws)
    for outcome in result.files:
        assert sum(outcome.reasons.values()) == outcome.rows_quarantined, outcome
        if outcome.note == "ingested":  # counted on disk: the rows staged or batched, the quarantine's lines
            stem = outcome.sha256[:16]
            kept = [pd.read_parquet(p) for p in (*ws.accepted_dir.glob("batch-*.parquet"), ws.staged_dir / f"{stem}.parquet")
                    if p.exists()]
            accepted = sum(int((frame["source"] == outcome.name).sum()) for frame in kept)
            lines = ws.quarantine_dir / f"{stem}.jsonl"
            quarantined = len(lines.read_text(encoding="utf-8").splitlines()) if lines.exists() else 0
            assert (accepted, quarantined) == (outcome.rows_accepted, outcome.rows_quarantined), outcome
        if outcome.note == "ingested":
            name, rows_in, accepted, quarantined, _ = recorded[outcome.sha256]
            assert (name, rows_in, accepted, quarantined) == (
                outcome.name, outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined)


# --- every format ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("domain", "name"), [
    ("movies", "movies.csv"), ("amazon", "amazon.jsonl"), ("finefood", "finefood.parquet"), ("movies", "movies.tsv"),
])
def test_each_format_is_ingested_archived_and_batched(new_ws, domains, domain: str, name: str) -> None:
    ws = new_ws(data__min_batch_rows=50)
    rows = unique(sample(domains[domain], 70, seed=1))
    rows = rows[rows["text"].str.len() <= ws.settings.data.max_text_chars].head(60).reset_index(drop=True)
    assert len(rows) == 60
    data = land(ws, name, rows).read_bytes()

    result = collect(ws)

    assert result.files == [FileOutcome(name, sha256(data), 60, 60, 0, "ingested", {})]
    assert result.new_batches == ["batch-0001"]
    assert (result.rows_accepted, result.rows_quarantined) == (60, 0)
    batch = pd.read_parquet(ws.batch_file("batch-0001"))
    assert list(batch.columns) == ["text", "label", "source", "source_row", "label_given", "capture_id"]
    pd.testing.assert_frame_equal(batch[["text", "label"]], rows[["text", "label"]])
    assert set(batch["source"]) == {name}
    assert batch["source_row"].tolist() == list(range(1, 61))
    # The raw bytes are archived; nothing is left in the landing zone, staging or quarantine.
    assert (ws.archive_dir / f"{sha256(data)[:16]}-{name}").read_bytes() == data
    assert landed(ws) == []
    assert list(ws.staged_dir.iterdir()) == []
    assert not ws.quarantine_dir.exists() or list(ws.quarantine_dir.iterdir()) == []
    assert ledger_files(ws) == {sha256(data): (name, 60, 60, 0, "batch-0001")}
    assert_balanced(result, ws)
    # Nothing new: a second run is a no-op.
    assert collect(ws) == CollectResult([], [])


@pytest.mark.parametrize("name", ["movies.csv.gz", "movies.tsv.bz2", "movies.jsonl.xz", "movies.parquet.zip"])
def test_compressed_files_are_read_as_pandas_reads_them(new_ws, domains, name: str) -> None:
    from kaizen.tasks.workspace.files import frame_bytes

    ws = new_ws(data__min_batch_rows=20)
    rows = unique(sample(domains["movies"], 40, seed=3)).head(30).reset_index(drop=True)
    data = land(ws, name, frame_bytes(rows, name)).read_bytes()

    (outcome,) = collect(ws).files

    assert (outcome.note, outcome.rows_in, outcome.rows_accepted) == ("ingested", 30, 30), outcome
    assert f"decompressed ({name.rsplit('.', 1)[1]})" in outcome.remarks
    batch = pd.read_parquet(ws.batch_file("batch-0001"))
    pd.testing.assert_frame_equal(batch[["text", "label"]], rows[["text", "label"]])
    archived = ws.archive_dir / f"{sha256(data)[:16]}-{name}"
    assert archived.read_bytes() == data  # kept compressed, byte for byte
    if ".csv" in name or ".tsv" in name:  # pandas reads the same rows from the same file
        read = pd.read_csv(archived, sep="\t" if ".tsv" in name else ",", dtype=str)
        pd.testing.assert_frame_equal(read[["text", "label"]], rows[["text", "label"]])


def test_a_corrupt_compressed_file_is_one_quarantined_unit(new_ws) -> None:
    ws = new_ws()
    land(ws, "cut.csv.gz", gzip_bytes(b"text,label\nA fine film.,positive\n")[:20])

    (outcome,) = collect(ws).files

    assert (outcome.rows_in, outcome.rows_quarantined) == (1, 1)
    assert "unreadable gz file (corrupt or truncated)" in next(iter(outcome.reasons))


def gzip_bytes(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def test_a_header_with_spaces_keeps_its_columns(new_ws, domains) -> None:
    ws = new_ws(data__min_batch_rows=20)
    rows = unique(sample(domains["amazon"], 30, seed=4)).head(24).reset_index(drop=True)
    text = rows.to_csv(index=False, lineterminator="\n").replace("text,label\n", "text, label \n", 1)
    land(ws, "spaced.csv", text.encode("utf-8"))

    (outcome,) = collect(ws).files

    assert (outcome.rows_accepted, outcome.rows_quarantined) == (24, 0), outcome.reasons
    assert any("' label ' -> 'label'" in remark for remark in outcome.remarks), outcome.remarks
    batch = pd.read_parquet(ws.batch_file("batch-0001"))
    pd.testing.assert_frame_equal(batch[["text", "label"]], rows[["text", "label"]])


def test_labels_written_as_numbers_are_mapped_and_every_mapping_recorded(new_ws, domains) -> None:
    ws = new_ws(data__min_batch_rows=40, data__label_map={"0": "negative", "1": "positive"})
    rows = unique(sample(domains["movies"], 60, seed=5)).head(40).reset_index(drop=True)
    numbers = rows.assign(label=(rows["label"] == "positive").astype(int))  # 0 / 1
    land(ws, "as-text.csv", numbers.head(20))  # "0" and "1" as CSV text
    land(ws, "as-numbers.jsonl", numbers.tail(20).assign(label=lambda f: f["label"].where(f.index % 2 == 0, 7)))

    result = collect(ws)

    by_name = {f.name: f for f in result.files}
    assert (by_name["as-text.csv"].rows_accepted, by_name["as-numbers.jsonl"].rows_accepted) == (20, 10)
    assert by_name["as-numbers.jsonl"].reasons == {
        "unknown label 7 (expected one of ['negative', 'positive'])": 10}  # unmapped numbers stay unknown
    counts = numbers.head(20)["label"].value_counts()
    assert (f"labels mapped by data.label_map: '0' -> 'negative' ({counts[0]} rows), '1' -> 'positive' "
            f"({counts[1]} rows)") in by_name["as-text.csv"].remarks
    staged = pd.read_parquet(ws.staged_dir / f"{by_name['as-text.csv'].sha256[:16]}.parquet")
    assert staged["label"].tolist() == rows.head(20)["label"].tolist()
    assert staged["label_given"].tolist() == [str(n) for n in numbers.head(20)["label"]]  # what the file said


# --- bad rows -------------------------------------------------------------------------------------------


def test_bad_rows_are_quarantined_each_with_its_reason(new_ws, domains) -> None:
    ws = new_ws(data__min_batch_rows=1000)
    limit = ws.settings.data.max_text_chars
    movies = unique(sample(domains["movies"], 60, seed=2))
    good = movies.head(40).assign(group="movies")
    neutral = domains["airline"][domains["airline"]["label"] == "neutral"].head(3)
    long_text = domains["finefood"][domains["finefood"]["text"].str.len() > limit].iloc[0]
    bad = [
        {"text": "", "label": "positive", "group": "x"},                                        # 41
        {"text": "   \t  ", "label": "negative", "group": "x"},                                  # 42
        *neutral[["text", "label", "group"]].to_dict(orient="records"),                         # 43-45
        {"text": movies.loc[40, "text"], "label": "", "group": "movies"},                       # 46
        {"text": long_text["text"], "label": long_text["label"], "group": long_text["group"]},  # 47
        {"text": "  " + good.loc[3, "text"].upper().replace(" ", "  ") + " ", "label": good.loc[3, "label"],
         "group": "movies"},                                                                    # 48
        {"text": good.loc[7, "text"], "label": good.loc[7, "label"], "group": "movies"},        # 49
    ]
    first = pd.concat([good, pd.DataFrame(bad)], ignore_index=True)
    first_bytes = land(ws, "a-first.csv", first).read_bytes()

    # A later file in another format: a re-cased repeat of a row of the first file, and broken JSON types.
    again = good.loc[10, "text"]
    second_records = [
        {"text": movies.loc[41, "text"], "label": movies.loc[41, "label"]},                 # 1: fine
        {"text": "\n" + again.swapcase() + "  ", "label": good.loc[10, "label"]},            # 2: earlier file
        {"text": 42, "label": "positive"},                                                   # 3: not a string
        {"label": "negative"},                                                               # 4: no text key
        {"text": movies.loc[42, "text"], "label": None},                                     # 5: null label
        {"text": movies.loc[43, "text"], "label": 1},                                        # 6: numeric label
        {"text": movies.loc[44, "text"], "label": "Positive"},                               # 7: label case matters
        {"text": movies.loc[45, "text"], "label": movies.loc[45, "label"]},                 # 8: fine
    ]
    second_bytes = land(ws, "b-second.jsonl", jsonl_bytes(second_records)).read_bytes()

    # Parquet: missing values of a string column, whether None or NaN.
    third = pd.DataFrame({"text": [movies.loc[46, "text"], None, float("nan"), movies.loc[47, "text"]],
                          "label": [movies.loc[46, "label"], "positive", "negative", None]})
    third_bytes = land(ws, "c-third.parquet", third).read_bytes()

    result = collect(ws)

    assert [f.name for f in result.files] == ["a-first.csv", "b-second.jsonl", "c-third.parquet"]
    assert_balanced(result, ws)
    unknown = "unknown label {!r} (expected one of ['negative', 'positive'])"
    expected_first = {
        41: "empty text", 42: "empty text",
        43: unknown.format("neutral"), 44: unknown.format("neutral"), 45: unknown.format("neutral"),
        46: "missing label",
        47: f"text longer than {limit} characters ({len(long_text['text'])})",
        48: "duplicate of row 4 of this file", 49: "duplicate of row 8 of this file",
    }
    expected_second = {
        2: "duplicate of a row already ingested from a-first.csv",
        3: "text is not a string (int)", 4: "missing text", 5: "missing label",
        6: unknown.format(1), 7: unknown.format("Positive"),
    }
    expected_third = {2: "missing text", 3: "missing text", 4: "missing label"}
    for outcome, data, n_rows, expected in [
        (result.files[0], first_bytes, len(first), expected_first),
        (result.files[1], second_bytes, len(second_records), expected_second),
        (result.files[2], third_bytes, len(third), expected_third),
    ]:
        assert outcome.note == "ingested"
        assert (outcome.rows_in, outcome.rows_quarantined) == (n_rows, len(expected))
        lines = quarantine_records(ws, data)
        assert {q["row"]: q["reason"] for q in lines} == expected
        assert all(q["file"] == outcome.name and q["sha256"] == sha256(data) for q in lines)
        assert sum(outcome.reasons.values()) == len(expected)
        assert outcome.reasons == pd.Series(list(expected.values())).value_counts().to_dict()
    assert (result.rows_accepted, result.rows_quarantined) == (40 + 2 + 1, 9 + 6 + 3)

    # The quarantine file keeps each original record, every column as it was read (a long text's prefix).
    by_row = {q["row"]: q["record"] for q in quarantine_records(ws, first_bytes)}
    kept = ws.settings.limits.quarantine_text_chars
    for row in expected_first:
        assert by_row[row] == {k: str(v)[:kept] for k, v in first.loc[row - 1].items()}
    by_row = {q["row"]: q["record"] for q in quarantine_records(ws, second_bytes)}
    for row in expected_second:
        assert by_row[row] == {"text": None, **second_records[row - 1]}
    by_row = {q["row"]: q["record"] for q in quarantine_records(ws, third_bytes)}
    assert by_row == {2: {"text": None, "label": "positive"}, 3: {"text": None, "label": "negative"},
                      4: {"text": movies.loc[47, "text"], "label": None}}

    # Accepted rows are staged, in file order, until a batch forms; the text is kept as it arrived.
    staged = pd.read_parquet(ws.staged_dir / f"{sha256(first_bytes)[:16]}.parquet")
    assert staged["text"].tolist() == good["text"].tolist()
    assert staged["source_row"].tolist() == list(range(1, 41))
    staged = pd.read_parquet(ws.staged_dir / f"{sha256(second_bytes)[:16]}.parquet")
    assert staged[["text", "label", "source_row"]].values.tolist() == [
        [movies.loc[41, "text"], movies.loc[41, "label"], 1], [movies.loc[45, "text"], movies.loc[45, "label"], 8]]
    assert result.new_batches == []


def test_text_that_is_not_a_string_is_never_accepted_as_its_repr(new_ws, domains) -> None:
    ws = new_ws()
    rows = unique(sample(domains["amazon"], 10, seed=9))
    records = [
        {"text": rows.loc[0, "text"].split(), "label": rows.loc[0, "label"]},     # a list of words
        {"text": {"body": rows.loc[1, "text"]}, "label": rows.loc[1, "label"]},  # an object
        {"text": True, "label": rows.loc[2, "label"]},
        {"text": rows.loc[3, "text"], "label": [rows.loc[3, "label"]]},           # a list as the label
        {"text": rows.loc[4, "text"], "label": rows.loc[4, "label"]},
    ]
    data = land(ws, "nested.jsonl", jsonl_bytes(records)).read_bytes()
    blob = pd.DataFrame({"text": [t.encode("utf-8") for t in rows.loc[5:6, "text"]],  # a binary column
                         "label": rows.loc[5:6, "label"].tolist()})
    blob_bytes = land(ws, "blob.parquet", blob).read_bytes()

    result = collect(ws)

    assert_balanced(result, ws)
    assert {q["row"]: q["reason"] for q in quarantine_records(ws, data)} == {
        1: "text is not a string (list)", 2: "text is not a string (dict)", 3: "text is not a string (bool)",
        4: f"unknown label {[rows.loc[3, 'label']]!r} (expected one of ['negative', 'positive'])"}
    assert {q["row"]: q["reason"] for q in quarantine_records(ws, blob_bytes)} == {
        1: "text is not a string (bytes)", 2: "text is not a string (bytes)"}
    staged = pd.read_parquet(ws.staged_dir / f"{sha256(data)[:16]}.parquet")
    assert staged["text"].tolist() == [rows.loc[4, "text"]]
    assert not (ws.staged_dir / f"{sha256(blob_bytes)[:16]}.parquet").exists()
    # The quarantine file still holds JSON: what JSON cannot carry is kept as its repr.
    assert quarantine_records(ws, data)[0]["record"] == {"text": repr(records[0]["text"]), "label": records[0]["label"]}


def test_a_file_of_nothing_but_repeats_accepts_nothing(new_ws, domains) -> None:
    ws = new_ws()
    rows = unique(sample(domains["amazon"], 30, seed=3))
    land(ws, "1.csv", rows)
    collect(ws)
    repeat = rows.assign(text=rows["text"].str.upper())
    data = land(ws, "2.jsonl", repeat).read_bytes()
    outcome = collect(ws).files[0]
    assert (outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined) == (len(rows), 0, len(rows))
    assert outcome.reasons == {"duplicate of a row already ingested from 1.csv": len(rows)}
    assert not (ws.staged_dir / f"{sha256(data)[:16]}.parquet").exists()
    assert (ws.archive_dir / f"{sha256(data)[:16]}-2.jsonl").read_bytes() == data


# --- whole files that cannot be used --------------------------------------------------------------------


def test_missing_or_misnamed_columns_quarantine_every_row(new_ws, domains) -> None:
    ws = new_ws()
    rows = unique(sample(domains["movies"], 30, seed=4))
    renamed = land(ws, "renamed.csv", rows.rename(columns={"text": "review", "label": "sentiment"})).read_bytes()
    no_label = land(ws, "no-label.jsonl", rows[["text"]]).read_bytes()

    result = collect(ws)

    assert_balanced(result, ws)
    for outcome, data, missing in [(result.files[0], no_label, ["label"]),
                                   (result.files[1], renamed, ["text", "label"])]:
        assert (outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined) == (len(rows), 0, len(rows))
        (reason,) = outcome.reasons
        assert reason.startswith(f"missing column(s) {missing}"), reason
        lines = quarantine_records(ws, data)
        assert [q["row"] for q in lines] == list(range(1, len(rows) + 1))
        assert {q["reason"] for q in lines} == {reason}
        assert (ws.archive_dir / f"{sha256(data)[:16]}-{outcome.name}").read_bytes() == data
    assert "['review', 'sentiment']" in next(iter(result.files[1].reasons))
    assert [q["record"] for q in quarantine_records(ws, renamed)] == rows.rename(
        columns={"text": "review", "label": "sentiment"}).to_dict(orient="records")
    assert landed(ws) == []
    assert result.new_batches == [] and list(ws.staged_dir.glob("*")) == []


def test_unreadable_files_are_one_quarantined_unit_each(new_ws, domains) -> None:
    ws = new_ws()
    rows = sample(domains["movies"], 10, seed=5)
    files = {
        "broken.parquet": (b"PAR1 these are not parquet bytes" * 8, "unreadable parquet file"),
        "notes.txt": ("\n".join(rows["text"]).encode("utf-8"), "unsupported file type '.txt'"),
        "latin1.csv": (rows.to_csv(index=False).encode("utf-8") + "caf\xe9,positive\n".encode("latin-1"),
                       "unreadable csv file"),
        "broken.jsonl": (jsonl_bytes(rows.head(2).to_dict(orient="records")) + b'{"text": "cut off', "unreadable jsonl file"),
        "empty.csv": (b"", "unreadable csv file"),
        # An array after an object: pandas raises AttributeError, which once escaped and wedged every collect.
        "mixed.jsonl": (jsonl_bytes([rows.iloc[0].to_dict(), list(rows.iloc[1])]), "unreadable jsonl file"),
    }
    for name, (data, _) in files.items():
        land(ws, name, data)

    result = collect(ws)

    assert sorted(f.name for f in result.files) == sorted(files)
    assert_balanced(result, ws)
    for outcome in result.files:
        data, fragment = files[outcome.name]
        assert (outcome.rows_in, outcome.rows_accepted, outcome.rows_quarantined) == (1, 0, 1), outcome
        (reason,) = outcome.reasons
        assert fragment in reason, reason
        assert quarantine_records(ws, data) == [
            {"file": outcome.name, "sha256": sha256(data), "row": 0, "reason": reason, "record": None}]
        assert (ws.archive_dir / f"{sha256(data)[:16]}-{outcome.name}").read_bytes() == data
    assert landed(ws) == []
    assert result.new_batches == []


# --- exactly once ---------------------------------------------------------------------------------------


def test_the_same_file_twice_is_ingested_once(new_ws, domains) -> None:
    ws = new_ws(data__min_batch_rows=1000)
    rows = unique(sample(domains["amazon"], 40, seed=6))
    data = land(ws, "a.csv", rows).read_bytes()
    land(ws, "b-copy.csv", data)  # the same bytes under another name, in the same run

    first = collect(ws)
    assert [(f.name, f.note, f.rows_in) for f in first.files] == [
        ("a.csv", "ingested", len(rows)), ("b-copy.csv", "already ingested as a.csv: nothing to do", 0)]
    assert landed(ws) == []

    land(ws, "a.csv", data)
    land(ws, "renamed.csv", data)
    second = collect(ws)
    assert [f.note for f in second.files] == ["already ingested as a.csv: nothing to do"] * 2
    assert all((f.rows_in, f.rows_accepted, f.rows_quarantined, f.sha256) == (0, 0, 0, sha256(data))
               for f in second.files)
    assert landed(ws) == []
    assert list(ledger_files(ws)) == [sha256(data)]
    assert quarantine_records(ws, data) == []  # no row of the copies was counted as a duplicate
    assert [p.name for p in ws.archive_dir.iterdir()] == [f"{sha256(data)[:16]}-a.csv"]
    staged = pd.read_parquet(ws.staged_dir / f"{sha256(data)[:16]}.parquet")
    assert len(staged) == len(rows)
    with sqlite3.connect(ws.ledger_db) as db:
        deliveries = db.execute("SELECT name, outcome FROM deliveries ORDER BY id").fetchall()
    assert [name for name, _ in deliveries] == ["a.csv", "b-copy.csv", "a.csv", "renamed.csv"]


# --- batches --------------------------------------------------------------------------------------------


def test_a_batch_forms_once_enough_rows_have_arrived(new_ws, domains) -> None:
    ws = new_ws(data__min_batch_rows=50)
    rows = unique(sample(domains["movies"], 100, seed=7))
    a, b, c = rows.iloc[:30], rows.iloc[30:60], rows.iloc[60:90]
    landing = Path(ws.landing)
    land(ws, "a.csv", a)
    land(ws, ".b.csv", b)                  # hidden: still being written by someone
    land(ws, "c.jsonl.part", c)            # partial upload
    land(ws, "d.csv.tmp", c)               # temporary file

    result = collect(ws)
    assert [f.name for f in result.files] == ["a.csv"]
    assert result.new_batches == []
    assert landed(ws) == [".b.csv", "c.jsonl.part", "d.csv.tmp"]
    assert len(list(ws.staged_dir.glob("*.parquet"))) == 1
    assert not ws.accepted_dir.exists() or list(ws.accepted_dir.iterdir()) == []
    assert next_batch(ws) is None

    (landing / ".b.csv").rename(landing / "b.csv")
    result = collect(ws)
    assert [f.name for f in result.files] == ["b.csv"]
    assert result.new_batches == ["batch-0001"]
    batch = pd.read_parquet(ws.batch_file("batch-0001"))
    assert batch["text"].tolist() == rows["text"].iloc[:60].tolist()
    assert batch["source"].tolist() == ["a.csv"] * 30 + ["b.csv"] * 30
    assert list(ws.staged_dir.iterdir()) == []
    assert {f[4] for f in ledger_files(ws).values()} == {"batch-0001"}

    (landing / "c.jsonl.part").rename(landing / "c.jsonl")
    result = collect(ws)
    assert [f.name for f in result.files] == ["c.jsonl"]
    assert result.new_batches == []  # 30 rows wait for 20 more
    assert landed(ws) == ["d.csv.tmp"]
    assert next_batch(ws) == ("batch-0001", ["batch-0001"])


def test_next_batch_is_the_oldest_pending_one(new_ws, domains) -> None:
    ws = new_ws(data__min_batch_rows=20)
    assert collect(ws) == CollectResult([], [])  # no landing zone yet
    assert next_batch(ws) is None
    rows = unique(sample(domains["finefood"], 120, seed=8))
    rows = rows[rows["text"].str.len() <= ws.settings.data.max_text_chars].reset_index(drop=True)
    for i, name in enumerate(["1.csv", "2.jsonl", "3.parquet"]):
        land(ws, name, rows.iloc[25 * i: 25 * (i + 1)])

    result = collect(ws)
    assert result.new_batches == ["batch-0001", "batch-0002", "batch-0003"]  # each file is enough alone
    assert [len(pd.read_parquet(ws.batch_file(b))) for b in result.new_batches] == [25, 25, 25]
    assert next_batch(ws) == ("batch-0001", ["batch-0001"])

    ledger = Ledger(ws.ledger_db)
    try:
        ledger.finish_batch("batch-0001", run_id="r1", model_version="1", decision="promoted")
        assert next_batch(ws) == ("batch-0002", ["batch-0001", "batch-0002"])
        ledger.finish_batch("batch-0002", run_id="r2", model_version=None, decision="rejected")
        assert next_batch(ws) == ("batch-0003", ["batch-0001", "batch-0002", "batch-0003"])
        ledger.finish_batch("batch-0003", run_id="r3", model_version=None, decision="rejected")
        assert next_batch(ws) is None
        assert [(b.batch_id, b.rows, b.status) for b in ledger.batches()] == [
            ("batch-0001", 25, "done"), ("batch-0002", 25, "done"), ("batch-0003", 25, "done")]
    finally:
        ledger.close()

    land(ws, "4.csv", rows.iloc[75:100])
    assert collect(ws).new_batches == ["batch-0004"]
    assert next_batch(ws) == ("batch-0004", ["batch-0001", "batch-0002", "batch-0003", "batch-0004"])
