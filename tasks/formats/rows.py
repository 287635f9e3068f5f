"""rows: the lines of a CSV or plain text file -> its rows, a chunk at a time, with no judgement of their values
yet (JSON's are in json_rows.py); the rows and chunks every reader makes. No CSV field is held beyond `limit`
characters (limits.max_text_bytes; decode.py bounds each line).

Read strictly (collect), a fault of the format (a malformed quote, a line that is not a JSON object) refuses the
whole file, naming the line; it is reported only once the rest of the file has been decoded, since bytes that are
not text further on outrank it (as when the whole file was decoded first). Chunks yielded before a fault is found
are the caller's to discard. Read leniently (scoring), a line or an item that cannot be a row is a row with a
problem and the reading goes on; a fault that leaves the rest of the file unknown (a malformed quote) is raised
after the rows before it were yielded.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from kaizen.tasks.formats.decode import BadFile, drain, undecoded, up_to_undecoded

DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
EXTRA = "_extra_fields"  # where a CSV row's fields beyond the header are kept, so nothing of it is lost
HEAD_LIMIT = 1 << 20  # characters read ahead to find the header line (a file with only \r breaks has no \n)


class RawRow(NamedTuple):  # a tuple, not a dataclass: made once per row, ten million times for a large file
    record: dict[str, Any]  # the cells as read, by column
    problem: str | None = None  # why the row cannot be used, known from reading it alone
    number: int = 0  # where a person finds it: its line (a CSV's header is line 1), its item or Parquet row


@dataclass(frozen=True)
class Chunk:
    columns: list[str]  # the file's columns
    rows: list[RawRow]
    start: int  # the number of the first of `rows` among the file's rows, from 1
    remarks: tuple[str, ...] = ()  # what was done to read the file that a user should know
    done: float | None = None  # the share of the file read, for progress (None: as far as its bytes were read)
    problem: str | None = None  # read leniently: why the file, or the rest of it, could not be read


class ColumnsGrew(Exception):
    """A JSON Lines file names a column first after its first chunk was judged: read it again knowing every
    column (`columns`), so that each row has all of them, as when the file is read whole."""

    def __init__(self, columns: list[str]) -> None:
        super().__init__(f"columns found late: {columns}")
        self.columns = columns


def _header(line: str, delimiter: str) -> list[str]:
    try:
        return [c.strip() for c in next(csv.reader([line], delimiter=delimiter), [])]
    except csv.Error:  # a malformed header line: the full parse reports it with its line number
        return []


def _delimiter(first: str, expected: str, required: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The name's delimiter, unless another one is plainly meant: it alone yields the required columns, or
    the name's delimiter sees one column where another sees several (then their names are reported)."""
    if not required or all(c in _header(first, expected) for c in required):
        return expected, ()
    others = [d for d in DELIMITERS if d != expected]
    fits = [d for d in others if all(c in _header(first, d) for c in required)]
    if not fits and len(_header(first, expected)) == 1:
        widest = max(len(_header(first, d)) for d in others)
        fits = [d for d in others if len(_header(first, d)) == widest > 1]  # a tie is no answer
    if len(fits) != 1:
        return expected, ()
    return fits[0], (f"wrong delimiter: read as {DELIMITERS[fits[0]]}-separated, though the name says "
                     f"{DELIMITERS[expected]}-separated",)


def _head(lines: Iterator[str]) -> tuple[list[str], str, bool]:
    """The lines read ahead, the first line (from its first character that is no line break to the first \\n),
    and whether the text is blank through and through. Past HEAD_LIMIT characters of blank lines the file is
    taken to hold more than blanks."""
    head: list[str] = []
    first: list[str] = []
    size, complete, content = 0, False, False
    for line in lines:
        head.append(line)
        size += len(line)
        if not complete and (first or line.strip("\r\n")):
            first.append(line)
            complete = line.endswith("\n")
        content = content or bool(line.strip())
        if (content and complete) or size > HEAD_LIMIT:
            return head, "".join(first).split("\n", 1)[0].rstrip("\r"), False
    return head, "".join(first).split("\n", 1)[0].rstrip("\r"), not content


def csv_chunks(lines: Iterator[str], expected: str, required: Sequence[str], size: int,
               remarks: tuple[str, ...], strict: bool, limit: int) -> Iterator[Chunk]:
    """A CSV's rows; `required` columns let a file with the wrong delimiter be read all the same. A quoted field
    may span lines: csv's own limit keeps it to `limit` characters (a line alone is bounded by `lines_of`)."""
    # Process-wide: each read sets its own before it starts, and the readers of a process share one workspace's.
    csv.field_size_limit(limit)
    lines = lines if strict else up_to_undecoded(lines, "csv")
    head, first, blank = _head(lines)
    if blank:
        held = "it is empty" if not any(head) else "it holds only blank lines"
        raise BadFile(f"unreadable csv file: no header row ({held})")
    delimiter, said = _delimiter(first, expected, required)
    remarks += said
    reader = csv.reader(itertools.chain(head, lines), delimiter=delimiter, strict=True)
    header: list[str] = []
    rows: list[RawRow] = []
    start = 1
    try:
        header = next((fields for fields in reader if fields), [])
        if not header:
            raise BadFile("unreadable csv file: no header row (it holds only blank lines)")
        duplicated = sorted({c for c in header if header.count(c) > 1})
        problem = ("unreadable csv file: NUL bytes in the header (UTF-16 without a byte-order mark?)"
                   if any("\x00" in c for c in header) else
                   f"unreadable csv file: column(s) {duplicated} appear more than once in the header"
                   if duplicated else None)
        if problem:
            if strict:
                drain(lines)
            raise BadFile(problem)
        width = len(header)
        for fields in reader:
            if len(fields) == width:  # most rows: built here, without a call
                rows.append(RawRow(dict(zip(header, fields, strict=True)), None, reader.line_num))
            elif fields:  # an empty line is not a row
                rows.append(_csv_row(header, fields, reader.line_num, strict))
            if len(rows) == size:
                yield Chunk(header, rows, start, remarks)
                start, rows = start + size, []
    except csv.Error as exc:
        hint = " (a quote opened and never closed?)" if "end of data" in str(exc) else ""
        too_big = "field larger than field limit" in str(exc)  # nothing to drain: the file is refused for it
        error = (BadFile(f"unreadable csv file: a field ending on line {reader.line_num} is longer than "
                         f"limits.max_text_bytes = {limit}") if too_big else
                 BadFile(f"unreadable csv file: malformed CSV on line {reader.line_num}: {exc}{hint}"))
        if strict:
            if not too_big:
                drain(lines)
            raise error from exc
        if rows:  # read leniently, the rows before the fault are used
            yield Chunk(header, rows, start, remarks)
        raise error from exc
    except BadFile:  # no header, or bytes that are not text: read leniently, after the rows before them
        if rows and not strict:
            yield Chunk(header, rows, start, remarks)
        raise
    if start == 1 and not rows:
        raise BadFile("empty csv file: a header and no rows")
    if rows:
        yield Chunk(header, rows, start, remarks)


def _csv_row(header: list[str], fields: list[str], number: int, strict: bool) -> RawRow:
    record: dict[str, Any] = dict(zip(header, fields, strict=False))
    record.update({c: None for c in header[len(fields):]})
    if len(fields) > len(header):
        record[EXTRA] = fields[len(header):]
        hint = " (an unquoted delimiter in the text?)"
    else:
        hint = " (a line cut short?)"
    problem = (f"row has {len(fields)} field(s), the header has {len(header)}{hint}" if strict else
               f"line {number}: {len(fields)} fields where the header has {len(header)}")
    return RawRow(record, problem, number)


def line_chunks(lines: Iterator[str], column: str, size: int, remarks: tuple[str, ...]) -> Iterator[Chunk]:
    """A plain text file's lines, one text each under `column` (read leniently only: collect needs labels);
    blank lines are no rows, and a line whose bytes are not UTF-8 is a row with a problem."""
    rows: list[RawRow] = []
    start = 1
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        exc = undecoded(line)
        rows.append(RawRow({column: line.rstrip("\r")}, None, number) if exc is None else
                    RawRow({}, f"line {number}: {exc}", number))
        if len(rows) == size:
            yield Chunk([column], rows, start, remarks)
            start, rows = start + size, []
    if rows:
        yield Chunk([column], rows, start, remarks)
