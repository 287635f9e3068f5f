"""parse: a landed file -> its columns and raw rows, a chunk at a time, with no judgement of their values yet.

A file whose format is broken (not UTF-8, a line that is not a JSON object, a malformed CSV quote, a corrupt
Parquet file, no bytes at all) is rejected as a whole, naming the line and the cause: its rows cannot be
told apart reliably, a text file in another encoding would lose exactly its non-ASCII rows, and a file cut
off mid-write looks just like that. A row that the format carries but that does not fit the header (too few
or too many CSV fields) is set aside on its own. Texts and labels are judged later, in `tasks.validate`.

Files are read in chunks of rows (CSV, TSV, JSON Lines and Parquet stream; a JSON array is read whole), so
memory follows the chunk, not the file; a fault found late still rejects the whole file (the reader raises
it after the chunks it has yielded, which the caller discards).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

from kaizen.tasks.formats.decode import PIECE, BadFile, drain, opened, text_lines
from kaizen.tasks.formats.parse_text import Chunk, ColumnsGrew, RawRow, csv_chunks, json_chunks
from kaizen.tasks.workspace.files import UnsupportedFormat, compression, file_kind, inner_name

__all__ = ["BadFile", "Chunk", "ColumnsGrew", "RawRow", "encodable", "plain", "read_chunks", "short"]


def read_chunks(path: Path, name: str, required: Sequence[str] = (), size: int = 100_000,
                columns: list[str] | None = None) -> Iterator[Chunk]:
    """The rows of the file at `path`, landed as `name` (its ending says the format), `size` at a time.
    `required` columns let a CSV with the wrong delimiter be read all the same; `columns` are those a JSON
    Lines file turned out to have (ColumnsGrew, raised when a column first appears after the first chunk)."""
    try:
        kind = file_kind(name)
    except UnsupportedFormat as exc:
        raise BadFile(str(exc)) from exc
    with opened(path, name) as (binary, remarks):
        if not binary.peek(1):
            raise BadFile(f"unreadable {kind} file: it is empty (0 bytes)")
        inner = inner_name(name).lower()
        if kind == "parquet":
            chunks = _parquet(binary, compression(name) is not None, size, remarks)
        else:
            lines, decoded = text_lines(binary, kind, universal=kind == "csv")
            chunks = (csv_chunks(lines, "\t" if inner.endswith(".tsv") else ",", required, size, remarks + decoded)
                      if kind == "csv" else
                      json_chunks(lines, inner.endswith(".json"), size, remarks + decoded, columns))
        yield from _names_stripped(chunks)


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
        rows = [RawRow({renamed.get(k, k): v for k, v in row.record.items()}, row.problem) for row in chunk.rows]
        shown = ", ".join(f"{old!r} -> {new!r}" for old, new in renamed.items())
        yield Chunk(stripped, rows, chunk.start, chunk.remarks + (f"column names stripped of spaces: {shown}",))


def _parquet(binary: BinaryIO, compressed: bool, size: int, remarks: tuple[str, ...]) -> Iterator[Chunk]:
    """Parquet's rows by record batch. Its footer comes last, so a compressed file is first decompressed to
    an unnamed temporary file (gone with the process, however it ends)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    def corrupt(exc: BaseException) -> BadFile:
        return BadFile(f"unreadable parquet file (corrupt or truncated): {type(exc).__name__}: {str(exc)[:300]}")

    with ExitStack() as stack:
        if compressed:
            plain_file = stack.enter_context(tempfile.TemporaryFile())
            shutil.copyfileobj(binary, plain_file, PIECE)
            plain_file.seek(0)
            binary = plain_file
        try:
            source = pq.ParquetFile(binary, buffer_size=PIECE)  # buffered: a huge row group is read in pieces
            names = source.schema_arrow.names  # decoded here: a name that is not UTF-8 raises UnicodeDecodeError
            batches = _batches(source, size)
        except (pa.ArrowException, OSError, ValueError) as exc:  # corrupt or truncated: footer, schema
            raise corrupt(exc) from exc
        duplicated = sorted({c for c in names if names.count(c) > 1})
        fault = (BadFile(f"unreadable parquet file: column(s) {duplicated} appear more than once")
                 if duplicated else None)  # rows as dicts would silently keep only one of them
        start = 1
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError, ValueError) as exc:  # a corrupt page, wherever it lies
                raise corrupt(exc) from exc
            if batch is None:
                break
            if fault is not None or not batch.num_rows:
                continue
            try:
                records = batch.to_pylist()
            except (pa.ArrowException, ValueError, OverflowError) as exc:  # values Python cannot hold (odd dates)
                fault = BadFile(f"unreadable parquet file: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            yield Chunk(list(names), [RawRow(record) for record in records], start, remarks)
            start += len(records)
        if fault is not None:
            raise fault
        if start == 1:
            raise BadFile("empty parquet file: no rows")


def _batches(source: Any, size: int) -> Iterator[Any]:
    """Record batches of at most `size` rows, a row group at a time: memory stays one row group, where
    `iter_batches` keeps what it has read until the file is closed (100 MB per million short texts)."""
    for group in range(source.num_row_groups):
        yield from source.read_row_group(group).to_batches(max_chunksize=size)


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
