"""reader: the one reading of every file kaizen takes, a chunk of rows at a time, in two modes.

Strict (`read_chunks`, collect): a file whose format is broken (not UTF-8, a line that is not a JSON object, a
malformed CSV quote, a corrupt Parquet file, no bytes at all) is rejected as a whole, naming the line and the
cause: its rows cannot be told apart reliably, a text file in another encoding would lose exactly its non-ASCII
rows, and a file cut off mid-write looks just like that. A row that the format carries but that does not fit
the header (too few or too many CSV fields) is set aside on its own. Texts and labels are judged later, in
tasks/ingest/validate.py. A fault found late still rejects the whole file: the reader raises it after the
chunks it has yielded, which the caller discards.

Lenient (`read_leniently`, scoring): every row comes back, usable or with the problem that makes it not; a
fault that leaves the rest of the file unknown ends the file with a last chunk that says why, after the rows
before it. Plain text files (`.txt`) are read too, one text per line.

Both read the same formats the same way (tasks/workspace/files.py names them, compressed or not; decode.py
decompresses and decodes; rows.py, json_rows.py and parquet_rows.py make rows), so a file scores as it would be
collected, within the same limits (the workspace's `limits`: a file past one is refused, or stops there when
scored). Every format streams: memory follows the chunk, not the file.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from kaizen.tasks.formats.decode import PIECE, BadFile, Meter, drain, opened, text_lines, text_pieces
from kaizen.tasks.formats.json_rows import json_chunks
from kaizen.tasks.formats.parquet_rows import parquet_chunks
from kaizen.tasks.formats.rows import Chunk, ColumnsGrew, RawRow, csv_chunks, line_chunks
from kaizen.tasks.workspace.files import UNFINISHED, UnsupportedFormat, compression, file_kind, inner_name
from kaizen.tasks.workspace.settings import LimitsSettings

__all__ = ["BadFile", "Chunk", "ColumnsGrew", "RawRow", "encodable", "input_files", "plain", "read_chunks",
           "read_leniently", "short"]

TEXT_LINES = (".txt",)  # one text per line: read leniently only (collect needs a label beside each text)
DEFAULT_LIMITS = LimitsSettings()


def read_chunks(path: Path, name: str, required: Sequence[str] = (), size: int = 100_000,
                columns: list[str] | None = None, limits: LimitsSettings = DEFAULT_LIMITS) -> Iterator[Chunk]:
    """The rows of the file at `path`, landed as `name` (its ending says the format), `size` at a time, strictly,
    within `limits`. `required` columns let a CSV with the wrong delimiter be read all the same; `columns` are
    those a JSON Lines file turned out to have (ColumnsGrew, raised when a column first appears after the first
    chunk)."""
    try:
        kind = file_kind(name)
    except UnsupportedFormat as exc:
        raise BadFile(str(exc)) from exc
    with open(path, "rb", buffering=PIECE) as raw:
        yield from _chunks(raw, name, kind, Meter(limits, path.stat().st_size), required, size, columns,
                           strict=True)


def read_leniently(fs: Any, path: str, text_column: str, size: int,
                   limits: LimitsSettings = DEFAULT_LIMITS) -> Iterator[Chunk]:
    """The rows of the file at `path` on the fsspec filesystem `fs`, `size` at a time, leniently, within `limits`:
    each chunk's `done` is set, and a last chunk's `problem` says why the file, or the rest of it, was not read."""
    name = PurePosixPath(path).name
    kind = kind_of(name)
    if kind is None:
        yield Chunk([], [], 1, done=1.0, problem="not a CSV, JSON Lines, Parquet or text file: skipped")
        return
    length = fs.size(path) or 0
    held: Chunk | None = None  # each chunk waits for the next, so that the last can say the file is done, however
    read = 0  # many bytes are left after its rows (a zip's directory)
    with fs.open(path, "rb") as raw, closing(_chunks(raw, name, kind, Meter(limits, length), (text_column,), size,
                                                     None, strict=False, text_column=text_column)) as chunks:
        try:
            for chunk in chunks:
                if held is not None:
                    yield held
                if text_column not in chunk.columns and any(row.problem is None for row in chunk.rows):
                    held = replace(chunk, rows=[], problem=f"no column {text_column!r} (columns: {chunk.columns}): "
                                                           "file skipped")
                    break
                read += len(chunk.rows)
                held = replace(chunk, done=chunk.done if chunk.done is not None else raw.tell() / max(length, 1))
        except (BadFile, OSError) as exc:  # the file's fault, or the disk's or the network's: said, not raised
            if held is not None:
                yield held
            held = Chunk([], [], read + 1, problem=f"cannot read on from here: {exc}" if read else
                         f"{exc}: file skipped")
    if held is not None:
        yield replace(held, done=1.0)


def kind_of(name: str) -> str | None:
    """"csv", "jsonl", "parquet" or "lines" (plain text), from the name's ending after any compression ending;
    None for a file of none of them."""
    if PurePosixPath(inner_name(name)).suffix.lower() in TEXT_LINES:
        return "lines"
    try:
        return file_kind(name)
    except UnsupportedFormat:
        return None


def _chunks(raw: BinaryIO, name: str, kind: str, meter: Meter, required: Sequence[str], size: int,
            columns: list[str] | None, *, strict: bool, text_column: str = "") -> Generator[Chunk, None, None]:
    """The rows of the open file `raw` (`meter.stored` bytes), as `name` and `kind` say, in either mode, counted by
    `meter`; `text_column` names a plain text file's one column."""
    compressed = compression(name) is not None
    limit = meter.limits.max_text_bytes
    with opened(raw, name, meter) as (binary, remarks):
        # Collect names a file that holds nothing as such; a scorer lets each format say what it misses.
        if strict and not binary.peek(1):
            raise BadFile(f"unreadable {kind} file: it is empty (0 bytes)")
        inner = inner_name(name).lower()
        chunks: Iterator[Chunk]
        if kind == "parquet":  # read in place unless compressed: its footer comes last
            chunks = parquet_chunks(binary if compressed else raw, compressed, size, remarks, strict, meter)
        elif kind == "jsonl":
            pieces, decoded = text_pieces(binary, kind, strict)
            chunks = json_chunks(pieces, inner.endswith(".json"), size, remarks + decoded, columns, strict, limit)
        else:
            lines, decoded = text_lines(binary, "text" if kind == "lines" else kind, kind == "csv", strict, limit)
            chunks = (csv_chunks(lines, "\t" if inner.endswith(".tsv") else ",", required, size, remarks + decoded,
                                 strict, limit)
                      if kind == "csv" else line_chunks(lines, text_column, size, remarks + decoded))
        yield from _names_stripped(_counted(chunks, meter))


def _counted(chunks: Iterator[Chunk], meter: Meter) -> Iterator[Chunk]:
    """Each chunk's rows counted against limits.max_file_rows (and the clock) before it goes on."""
    for chunk in chunks:
        meter.add_rows(len(chunk.rows))
        yield chunk


def _names_stripped(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Column names without surrounding spaces (`text, label` means `label`); names that then collide are
    refused, once the rest of the file is known to hold no other fault (which would come first)."""
    for chunk in chunks:
        stripped = [c.strip() if isinstance(c, str) else c for c in chunk.columns]
        if stripped == chunk.columns:
            yield chunk
            continue
        duplicated = sorted({c for c in stripped if stripped.count(c) > 1})
        if duplicated:
            drain(chunks)
            raise BadFile(f"unreadable file: column(s) {duplicated} appear more than once once spaces are stripped")
        renamed = {old: new for old, new in zip(chunk.columns, stripped, strict=True) if old != new}
        rows = [RawRow({renamed.get(k, k): v for k, v in row.record.items()}, row.problem, row.number)
                for row in chunk.rows]
        shown = ", ".join(f"{old!r} -> {new!r}" for old, new in renamed.items())
        yield replace(chunk, columns=stripped, rows=rows,
                      remarks=chunk.remarks + (f"column names stripped of spaces: {shown}",))


def input_files(source: str) -> tuple[Any, str, list[str]]:
    """The filesystem, the root and the files to read leniently: `source` itself, or every file under it (a
    folder, recursively; hidden, `_`-prefixed and unfinished names left out), sorted."""
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


def plain(value: Any) -> Any:
    """A JSON-safe rendering of a raw cell for the quarantine file: what JSON cannot carry becomes its repr."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and math.isinf(value):
        return repr(value)
    if isinstance(value, str):
        return value if encodable(value) else value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (int, float, bool)):
        return value
    return repr(value)


def encodable(text: str) -> bool:
    """False for a string holding lone surrogates (a JSON "\\ud800" escape): it cannot be stored as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: a reason must stay one readable line, whatever the cell held."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
