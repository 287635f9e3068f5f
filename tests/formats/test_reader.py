"""reader: one reading of every format in two modes. Collect (strict) and scoring (lenient) read a file, compressed
or not, to the same rows; read leniently, every line is a row or a problem, and a fault that leaves the rest of
the file unknown ends it after the rows before it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from kaizen.tasks.formats.reader import BadFile, kind_of, read_chunks, read_leniently
from kaizen.tasks.workspace.files import frame_bytes

FRAME = pd.DataFrame({"text": ["a fine film, truly", "dull\tand \"long\"", "ｗｉｄｅ words", "the end"],
                      "label": ["positive", "negative", "positive", "negative"]})


def leniently(path: Path, size: int = 3) -> list:
    fs = fsspec.filesystem("file")
    return list(read_leniently(fs, str(path), "text", size))


@pytest.mark.parametrize("name", ["a.csv.gz", "a.tsv.bz2", "a.jsonl.xz", "a.json.zip", "a.parquet.gz", "a.csv",
                                  "a.parquet"])
def test_collect_and_scoring_read_a_file_to_the_same_rows(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(frame_bytes(FRAME, name))
    strict = list(read_chunks(tmp_path / name, name, size=3))
    lenient = leniently(tmp_path / name)
    expected = FRAME.to_dict(orient="records")
    assert [row.record for chunk in strict for row in chunk.rows] == expected
    assert [row.record for chunk in lenient for row in chunk.rows] == expected
    assert [chunk.columns for chunk in lenient] == [chunk.columns for chunk in strict] == [["text", "label"]] * 2
    assert [chunk.remarks for chunk in lenient] == [chunk.remarks for chunk in strict]
    assert all(row.problem is None for chunk in lenient for row in chunk.rows)
    assert all(chunk.problem is None for chunk in lenient) and lenient[-1].done == 1.0
    first = 2 if name.startswith(("a.csv", "a.tsv")) else 1  # a CSV's header is its line 1
    assert [row.number for chunk in lenient for row in chunk.rows] == list(range(first, first + len(FRAME)))


def test_the_format_is_named_by_the_ending_under_the_compression() -> None:
    assert [kind_of(n) for n in ("x.csv.gz", "x.TSV", "x.ndjson.bz2", "x.pq.zip", "notes.txt.xz", "x.bin", "x.gz")] \
        == ["csv", "csv", "jsonl", "parquet", "lines", None, None]


def test_read_leniently_every_line_is_a_row_or_a_problem(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "one"}), "{not json", "", json.dumps(["a list"])]
    data = ("\n".join(lines) + "\n").encode() + b"\xff bad\n" + json.dumps({"text": "two", "id": 2}).encode() + b"\n"
    (tmp_path / "more.jsonl.gz").write_bytes(gzip.compress(data))
    rows = [row for chunk in leniently(tmp_path / "more.jsonl.gz", size=2) for row in chunk.rows]
    assert [(row.number, row.record.get("text")) for row in rows] == [(1, "one"), (2, None), (4, None), (5, None),
                                                                       (6, "two")]
    assert [row.problem for row in rows][::4] == [None, None]
    assert rows[1].problem.startswith("line 2: Expecting property name enclosed in double quotes")
    assert rows[2].problem == "line 4: the line is a JSON list, not an object"
    assert rows[3].problem.startswith("line 5: 'utf-8' codec can't decode byte 0xff in position 0")
    with pytest.raises(BadFile, match=r"not UTF-8 text \(byte 0xff on line 5\)"):  # collect refuses it whole
        list(read_chunks(tmp_path / "more.jsonl.gz", "more.jsonl.gz"))


def test_read_leniently_a_broken_csv_stops_where_it_breaks(tmp_path: Path) -> None:
    (tmp_path / "quote.csv").write_text('text\n"one"\n"two"\n"three"x\n"four"\n', encoding="utf-8")
    chunks = leniently(tmp_path / "quote.csv")
    assert [row.record["text"] for chunk in chunks for row in chunk.rows] == ["one", "two"]
    assert chunks[-1].problem == ("cannot read on from here: unreadable csv file: malformed CSV on line 4: "
                                  "',' expected after '\"'")
    (tmp_path / "bytes.csv").write_bytes(b"text\none\ntwo \xe9\nthree\n")
    chunks = leniently(tmp_path / "bytes.csv")
    assert [row.record["text"] for chunk in chunks for row in chunk.rows] == ["one"]
    assert chunks[-1].problem == ("cannot read on from here: unreadable csv file: not UTF-8 text (byte 0xe9 on "
                                  "line 3); save it as UTF-8")


def test_read_leniently_says_why_a_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "other.csv").write_text("review\ngood\n", encoding="utf-8")
    (tmp_path / "notes.bin").write_bytes(b"\x00")
    assert [chunk.problem for name in ("empty.csv", "other.csv", "notes.bin") for chunk in leniently(tmp_path / name)]\
        == ["unreadable csv file: no header row (it is empty): file skipped",
            "no column 'text' (columns: ['review']): file skipped",
            "not a CSV, JSON Lines, Parquet or text file: skipped"]
    (tmp_path / "lines.txt.gz").write_bytes(gzip.compress(b"first text\n\n  \nsecond\r\n"))
    rows = [row for chunk in leniently(tmp_path / "lines.txt.gz") for row in chunk.rows]
    assert [(row.number, row.record) for row in rows] == [(1, {"text": "first text"}), (4, {"text": "second"})]


def test_read_leniently_a_character_cut_short_at_the_end_is_a_problem_not_lost(tmp_path: Path) -> None:
    (tmp_path / "cut.txt").write_bytes(b"one\ncaf\xc3")  # the last byte of a two-byte character missing
    rows = [row for chunk in leniently(tmp_path / "cut.txt") for row in chunk.rows]
    assert [(row.record, row.problem) for row in rows] == [
        ({"text": "one"}, None),
        ({}, "line 2: 'utf-8' codec can't decode byte 0xc3 in position 3: unexpected end of data")]
