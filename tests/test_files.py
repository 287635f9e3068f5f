"""files: the one table of formats, the atomic writer and the workspace lock."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kaizen.tasks.files import Busy, UnsupportedFormat, file_kind, frame_bytes, locked, write_atomically
from kaizen.tasks.parse import parse


@pytest.mark.parametrize("name", ["a.csv", "a.tsv", "a.jsonl", "a.json", "a.ndjson", "a.parquet", "a.PQ"])
def test_every_format_written_reads_back_the_same_rows(name: str) -> None:
    frame = pd.DataFrame({"text": ["a fine film, truly", "dull\tand \"long\""], "label": ["positive", "negative"]})
    table = parse(frame_bytes(frame, name), name)
    assert table.columns == ["text", "label"]
    assert [r.record for r in table.rows] == frame.to_dict(orient="records")


def test_a_json_file_may_hold_one_array() -> None:
    assert file_kind("x.json") == "jsonl"
    table = parse(b'[{"text": "a", "label": "positive"}]', "x.json")
    assert [r.record for r in table.rows] == [{"text": "a", "label": "positive"}]


def test_an_unknown_ending_names_the_formats() -> None:
    with pytest.raises(UnsupportedFormat, match=r"unsupported file type '\.xlsx' \(use CSV, JSON Lines or Parquet"):
        file_kind("book.xlsx")


def test_an_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "f.bin"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_a_held_lock_refuses_or_waits(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with locked(path, wait=False, busy="x is busy") as waited:
        assert waited is False
        with pytest.raises(Busy, match="^x is busy$"), locked(path, wait=False, busy="x is busy"):
            pass  # flock conflicts between two open files, even in one process
    with locked(path, wait=False, busy="x is busy") as waited:  # released with its holder
        assert waited is False
