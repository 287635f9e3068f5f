"""files: the one table of formats, the atomic writer and the workspace lock."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kaizen.tasks.formats.reader import read_chunks
from kaizen.tasks.workspace.files import (
    Busy,
    UnsupportedFormat,
    file_kind,
    frame_bytes,
    locked,
    write_atomically,
)


def read_back(tmp_path: Path, data: bytes, name: str) -> tuple[list[str], list[dict]]:
    """The columns and rows collect reads from a file landed as `name` holding `data`."""
    (tmp_path / name).write_bytes(data)
    chunks = list(read_chunks(tmp_path / name, name))
    return chunks[-1].columns, [row.record for chunk in chunks for row in chunk.rows]


@pytest.mark.parametrize("name", ["a.csv", "a.tsv", "a.jsonl", "a.json", "a.ndjson", "a.parquet", "a.PQ"])
def test_every_format_written_reads_back_the_same_rows(name: str, tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a fine film, truly", "dull\tand \"long\""], "label": ["positive", "negative"]})
    columns, records = read_back(tmp_path, frame_bytes(frame, name), name)
    assert columns == ["text", "label"] and records == frame.to_dict(orient="records")


def test_a_json_file_may_hold_one_array(tmp_path: Path) -> None:
    assert file_kind("x.json") == "jsonl"
    _, records = read_back(tmp_path, b'[{"text": "a", "label": "positive"}]', "x.json")
    assert records == [{"text": "a", "label": "positive"}]


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
