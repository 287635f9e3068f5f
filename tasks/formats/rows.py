"""rows: the lines of a CSV, JSON Lines or plain text file -> its rows, a chunk at a time, with no judgement of
their values yet. A JSON array (a `.json` file holding one array) is read whole: its end must be found before its
first item is known to be one.

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
import json
import sys
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
               remarks: tuple[str, ...], strict: bool = True) -> Iterator[Chunk]:
    """A CSV's rows; `required` columns let a file with the wrong delimiter be read all the same."""
    lines = lines if strict else up_to_undecoded(lines, "csv")
    head, first, blank = _head(lines)
    if blank:
        held = "it is empty" if not any(head) else "it holds only blank lines"
        raise BadFile(f"unreadable csv file: no header row ({held})")
    delimiter, said = _delimiter(first, expected, required)
    remarks += said
    # One field can be as long as the file (a line of megabytes): the row is judged for length later, not
    # refused here. The limit is process-wide, so it is only ever raised.
    csv.field_size_limit(sys.maxsize)
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
        error = BadFile(f"unreadable csv file: malformed CSV on line {reader.line_num}: {exc}{hint}")
        if strict:
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


def json_chunks(lines: Iterator[str], array_allowed: bool, size: int, remarks: tuple[str, ...],
                columns: list[str] | None, strict: bool = True) -> Iterator[Chunk]:
    """A JSON Lines file's objects; or, when `array_allowed` and the text starts with `[`, one JSON array's.
    `columns`: every column, when known from an earlier read (ColumnsGrew, raised only when `strict`)."""
    blank: list[str] = []
    for line in lines:
        if line.strip():
            break
        blank.append(line)
    else:
        raise BadFile("empty jsonl file: no rows")
    if array_allowed and line.lstrip().startswith("["):
        yield from _array("\n".join(itertools.chain(blank, [line], lines)), size, remarks, strict)
    else:
        yield from _objects(itertools.chain(blank, [line], lines), size, remarks, columns, strict)


def _objects(lines: Iterator[str], size: int, remarks: tuple[str, ...], known: list[str] | None,
             strict: bool) -> Iterator[Chunk]:
    columns: dict[str, None] = dict.fromkeys(known or ())
    rows: list[RawRow] = []  # the objects as read: each gets every column when its chunk is made
    start, where = 1, "the array"
    fault: BadFile | None = None  # the first line that is no object: said once every line is known to be JSON
    grew = False  # a column first seen after a chunk was yielded: the rest is only read for its columns
    try:
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"line {i}"
            if not strict:
                rows.append(_lenient_object(line, i))
            else:
                obj = json.loads(line)
                if fault is None and not isinstance(obj, dict):
                    fault = BadFile(f"unreadable jsonl file: {where} is a JSON {_json_type(obj)}, not an object")
                if fault is not None:
                    continue
                rows.append(RawRow(obj, None, i))
            if len(rows) == size:  # read leniently, a chunk has the columns seen so far: nothing is read twice
                grew = (_widen(columns, rows, start > 1) and strict) or grew
                if not grew:
                    yield _json_chunk(list(columns), rows, start, remarks)
                start, rows = start + size, []
    except BadFile:
        raise
    except json.JSONDecodeError as exc:
        drain(lines)
        raise BadFile(f"unreadable jsonl file: not valid JSON ({exc.msg}; {where}, column {exc.colno})") from exc
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting too deep
        drain(lines)
        raise BadFile(f"unreadable jsonl file: {where}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if fault is not None:
        raise fault
    if start == 1 and not rows:
        raise BadFile("empty jsonl file: no rows")
    if (_widen(columns, rows, start > 1) and strict) or grew:
        raise ColumnsGrew(list(columns))
    if rows:
        yield _json_chunk(list(columns), rows, start, remarks)


def _lenient_object(line: str, number: int) -> RawRow:
    """One line read alone: an object, or a row whose problem says why the line is none."""
    bad = undecoded(line)
    if bad is not None:
        return RawRow({}, f"line {number}: {bad}", number)
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSON's errors are ValueErrors
        return RawRow({}, f"line {number}: {exc}", number)
    if not isinstance(obj, dict):
        return RawRow({}, f"line {number}: the line is a JSON {type(obj).__name__}, not an object", number)
    return RawRow(obj, None, number)


def _widen(columns: dict[str, None], rows: list[RawRow], late: bool) -> bool:
    """Add the objects' keys to `columns`; True when that adds one and chunks were yielded before."""
    before = len(columns)
    for row in rows:
        columns.update(dict.fromkeys(row.record))
    return late and len(columns) > before


def _json_chunk(columns: list[str], rows: list[RawRow], start: int, remarks: tuple[str, ...]) -> Chunk:
    return Chunk(columns, [RawRow({c: row.record.get(c) for c in columns}, row.problem, row.number) for row in rows],
                 start, remarks)


def _array(text: str, size: int, remarks: tuple[str, ...], strict: bool) -> Iterator[Chunk]:
    if not strict and (bad := undecoded(text)) is not None:  # a line of an array is no row: the file stops
        raise BadFile(f"unreadable jsonl file: not UTF-8 text ({bad})")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadFile(f"unreadable jsonl file: not valid JSON ({exc.msg}; line {exc.lineno}, column "
                      f"{exc.colno})") from exc
    except (ValueError, RecursionError) as exc:
        raise BadFile(f"unreadable jsonl file: the array: {type(exc).__name__}: {str(exc)[:200]}") from exc
    del text
    columns: dict[str, None] = {}
    rows: list[RawRow] = []
    for i, item in enumerate(items, 1):
        if isinstance(item, dict):
            rows.append(RawRow(item, None, i))
        elif strict:
            raise BadFile(f"unreadable jsonl file: item {i} is a JSON {_json_type(item)}, not an object")
        else:
            rows.append(RawRow({}, f"item {i} is a JSON {type(item).__name__}, not an object", i))
    del items
    if not rows:
        raise BadFile("empty jsonl file: no rows")
    _widen(columns, rows, False)
    for start in range(0, len(rows), size):
        yield _json_chunk(list(columns), rows[start: start + size], start + 1, remarks)


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


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
