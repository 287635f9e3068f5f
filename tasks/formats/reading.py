"""reading: unlabeled texts to score, streamed in chunks from a file, a folder or an fsspec URL.

Labeled files arrive through collect (tasks/formats/parse.py), which judges each row for training. Scoring only needs
the text and wants every row back: each chunk is a frame of the file's rows (values as they were read), and
whatever could not be read becomes a `Problem` with the reason, so the output can account for it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from kaizen.tasks.workspace.files import FORMATS, UNFINISHED

TEXT_LINES = (".txt",)  # read as one text per line, like `kaizen predict FILE`


@dataclass(frozen=True)
class Problem:
    row: int | None  # the line or row it concerns; None: the whole file, or a line that has no row number
    reason: str


@dataclass
class Chunk:
    rows: pd.DataFrame  # the file's columns, as read
    numbers: list[int]  # per row: its line in the file (a CSV's header is line 1), or its row in a Parquet file
    done: float  # share of the file read so far, for progress
    problems: list[Problem] = field(default_factory=list)


def input_files(source: str) -> tuple[Any, str, list[str]]:
    """The filesystem, the root and the files to read: `source` itself, or every file under it (a folder,
    recursively; hidden, `_`-prefixed and unfinished names left out), sorted."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    if not fs.exists(root):
        raise FileNotFoundError(f"{source}: no such file or folder")
    if not fs.isdir(root):
        return fs, root, [root]

    def visible(path: str) -> bool:
        parts = PurePosixPath(path).relative_to(PurePosixPath(root)).parts
        return not any(p.startswith((".", "_")) for p in parts) and not path.endswith(UNFINISHED)

    return fs, root, sorted(p for p in fs.find(root) if visible(p))


def kind_of(path: str) -> str | None:
    suffix = PurePosixPath(path).suffix.lower()
    return FORMATS.get(suffix) or ("lines" if suffix in TEXT_LINES else None)


def read_chunks(fs, path: str, text_column: str, chunk_rows: int) -> Iterator[Chunk]:
    """The file's rows, `chunk_rows` at a time. A format error stops the file where it happened: the rows read
    so far were yielded, and a last chunk carries the problem."""
    kind = kind_of(path)
    if kind is None:
        yield Chunk(pd.DataFrame(), [], 1.0, [Problem(None, "not a CSV, JSON Lines, Parquet or text file: skipped")])
        return
    size = max(fs.size(path) or 0, 1)
    with fs.open(path, "rb") as handle:
        reader = {"csv": _csv, "jsonl": _json_lines, "parquet": _parquet, "lines": _lines}[kind]
        try:
            for chunk in reader(handle, path, chunk_rows, size, text_column):
                if text_column not in chunk.rows.columns and len(chunk.rows):
                    chunk.problems.append(Problem(None, f"no column {text_column!r} (columns: "
                                                        f"{list(chunk.rows.columns)}): file skipped"))
                    chunk.rows, chunk.numbers = pd.DataFrame(), []
                    yield chunk
                    return
                yield chunk
        except (ValueError, OSError, csv.Error) as exc:  # a decoding error is a ValueError too
            yield Chunk(pd.DataFrame(), [], 1.0, [Problem(None, f"cannot read on from here: {exc}")])


def _csv(handle, path: str, chunk_rows: int, size: int, text_column: str) -> Iterator[Chunk]:
    """Rows by the csv module, which counts lines (a quoted field may span several): a row whose field count
    does not fit the header is a problem of its own, the others are read on."""
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter="\t" if path.lower().endswith(".tsv") else ",")
    header = next(reader, None)
    if not header:
        yield Chunk(pd.DataFrame(), [], 1.0, [Problem(None, "no header line: an empty file?")])
        return

    def rows() -> Iterator[tuple[int, dict | Problem, float]]:
        for fields in reader:
            number = reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                yield number, Problem(number, f"line {number}: {len(fields)} fields where the header has "
                                              f"{len(header)}"), handle.tell() / size
            else:
                yield number, dict(zip(header, fields, strict=True)), handle.tell() / size

    yield from _chunked(rows(), chunk_rows)


def _chunked(parsed: Iterator[tuple[int, dict | Problem, float]], chunk_rows: int) -> Iterator[Chunk]:
    """(number, record or problem, share done) items, gathered into chunks of `chunk_rows` records."""
    records, numbers, problems = [], [], []
    for number, value, done in parsed:
        if isinstance(value, Problem):
            problems.append(value)
        else:
            records.append(value)
            numbers.append(number)
        if len(records) >= chunk_rows:
            yield Chunk(pd.DataFrame(records, dtype=object), numbers, done, problems)
            records, numbers, problems = [], [], []
    if records or problems:
        yield Chunk(pd.DataFrame(records, dtype=object), numbers, 1.0, problems)


def _parsed_lines(handle, size: int, parse) -> Iterator[tuple[int, dict | Problem, float]]:
    """Line by line, each decoded and parsed alone, so that one bad line costs only itself; blank lines skipped."""
    seen = 0
    for number, raw in enumerate(handle, start=1):
        seen += len(raw)
        if not raw.strip():
            continue
        try:
            yield number, parse(raw.decode("utf-8-sig" if number == 1 else "utf-8")), seen / size
        except (UnicodeDecodeError, ValueError) as exc:  # json's errors are ValueErrors
            yield number, Problem(number, f"line {number}: {exc}"), seen / size


def _json_object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is a JSON {type(value).__name__}, not an object")
    return value


def _json_lines(handle, path: str, chunk_rows: int, size: int, text_column: str) -> Iterator[Chunk]:
    head = handle.read(64).lstrip()
    handle.seek(0)
    if not head.startswith(b"["):
        yield from _chunked(_parsed_lines(handle, size, lambda line: _json_object(json.loads(line), "the line")),
                            chunk_rows)
        return
    values = json.loads(handle.read().decode("utf-8-sig"))  # a .json file holding one array: read whole

    def items() -> Iterator[tuple[int, dict | Problem, float]]:
        for number, value in enumerate(values, start=1):
            try:
                yield number, _json_object(value, f"item {number}"), number / len(values)
            except ValueError as exc:
                yield number, Problem(number, str(exc)), number / len(values)

    yield from _chunked(items(), chunk_rows)


def _lines(handle, path: str, chunk_rows: int, size: int, text_column: str) -> Iterator[Chunk]:
    yield from _chunked(_parsed_lines(handle, size, lambda line: {text_column: line.rstrip("\r\n")}), chunk_rows)


def _parquet(handle, path: str, chunk_rows: int, size: int, text_column: str) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(handle)
    total, first = max(parquet.metadata.num_rows, 1), 1
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        rows = batch.to_pandas()
        yield Chunk(rows, list(range(first, first + len(rows))), (first - 1 + len(rows)) / total)
        first += len(rows)
