"""parse_text: the lines of a CSV or JSON Lines file -> its rows, a chunk at a time, with no judgement of their
values yet. A JSON array (a `.json` file holding one array) is read whole: its end must be found before its
first item is known to be one.

A fault of the format (a malformed quote, a line that is not a JSON object) refuses the whole file, naming
the line; it is reported only once the rest of the file has been decoded, since bytes that are not text
further on outrank it (as when the whole file was decoded first). Chunks yielded before a fault is found
are the caller's to discard.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from kaizen.tasks.formats.decode import BadFile, drain

DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
EXTRA = "_extra_fields"  # where a CSV row's fields beyond the header are kept, so nothing of it is lost
HEAD_LIMIT = 1 << 20  # characters read ahead to find the header line (a file with only \r breaks has no \n)


class RawRow(NamedTuple):  # a tuple, not a dataclass: made once per row, ten million times for a large file
    record: dict[str, Any]  # the cells as read, by column
    problem: str | None = None  # why the row cannot be used, known from reading it alone


@dataclass(frozen=True)
class Chunk:
    columns: list[str]  # the file's columns
    rows: list[RawRow]
    start: int  # the number of the first of `rows` in the file, from 1
    remarks: tuple[str, ...] = ()  # what was done to read the file that a user should know


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
               remarks: tuple[str, ...]) -> Iterator[Chunk]:
    """A CSV's rows; `required` columns let a file with the wrong delimiter be read all the same."""
    head, first, blank = _head(lines)
    if blank:
        raise BadFile("unreadable csv file: no header row (it holds only blank lines)")
    delimiter, said = _delimiter(first, expected, required)
    remarks += said
    # One field can be as long as the file (a line of megabytes): the row is judged for length later, not
    # refused here. The limit is process-wide, so it is only ever raised.
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(itertools.chain(head, lines), delimiter=delimiter, strict=True)
    try:
        header = next((fields for fields in reader if fields), None)
        if header is None:
            raise BadFile("unreadable csv file: no header row (it holds only blank lines)")
        duplicated = sorted({c for c in header if header.count(c) > 1})
        problem = ("unreadable csv file: NUL bytes in the header (UTF-16 without a byte-order mark?)"
                   if any("\x00" in c for c in header) else
                   f"unreadable csv file: column(s) {duplicated} appear more than once in the header"
                   if duplicated else None)
        if problem:
            drain(lines)
            raise BadFile(problem)
        rows: list[RawRow] = []
        start = 1
        for fields in reader:
            if fields:  # an empty line is not a row
                rows.append(_csv_row(header, fields))
                if len(rows) == size:
                    yield Chunk(header, rows, start, remarks)
                    start, rows = start + size, []
    except csv.Error as exc:
        hint = " (a quote opened and never closed?)" if "end of data" in str(exc) else ""
        error = BadFile(f"unreadable csv file: malformed CSV on line {reader.line_num}: {exc}{hint}")
        drain(lines)
        raise error from exc
    if start == 1 and not rows:
        raise BadFile("empty csv file: a header and no rows")
    if rows:
        yield Chunk(header, rows, start, remarks)


def _csv_row(header: list[str], fields: list[str]) -> RawRow:
    record: dict[str, Any] = dict(zip(header, fields, strict=False))
    if len(fields) == len(header):
        return RawRow(record)
    record.update({c: None for c in header[len(fields):]})
    if len(fields) > len(header):
        record[EXTRA] = fields[len(header):]
        hint = " (an unquoted delimiter in the text?)"
    else:
        hint = " (a line cut short?)"
    return RawRow(record, f"row has {len(fields)} field(s), the header has {len(header)}{hint}")


def json_chunks(lines: Iterator[str], array_allowed: bool, size: int, remarks: tuple[str, ...],
                columns: list[str] | None) -> Iterator[Chunk]:
    """A JSON Lines file's objects; or, when `array_allowed` and the text starts with `[`, one JSON array's.
    `columns`: every column, when known from an earlier read (ColumnsGrew)."""
    blank: list[str] = []
    for line in lines:
        if line.strip():
            break
        blank.append(line)
    else:
        raise BadFile("empty jsonl file: no rows")
    if array_allowed and line.lstrip().startswith("["):
        yield from _array("\n".join(itertools.chain(blank, [line], lines)), size, remarks)
    else:
        yield from _objects(itertools.chain(blank, [line], lines), size, remarks, columns)


def _objects(lines: Iterator[str], size: int, remarks: tuple[str, ...], known: list[str] | None) -> Iterator[Chunk]:
    columns: dict[str, None] = dict.fromkeys(known or ())
    objects: list[dict] = []
    start, where = 1, "the array"
    fault: BadFile | None = None  # the first line that is no object: said once every line is known to be JSON
    grew = False  # a column first seen after a chunk was yielded: the rest is only read for its columns
    try:
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"line {i}"
            obj = json.loads(line)
            if fault is None and not isinstance(obj, dict):
                fault = BadFile(f"unreadable jsonl file: {where} is a JSON {_json_type(obj)}, not an object")
            if fault is not None:
                continue
            objects.append(obj)
            if len(objects) == size:
                grew = _widen(columns, objects, start > 1) or grew
                if not grew:
                    yield _json_chunk(list(columns), objects, start, remarks)
                start, objects = start + size, []
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
    if start == 1 and not objects:
        raise BadFile("empty jsonl file: no rows")
    if _widen(columns, objects, start > 1) or grew:
        raise ColumnsGrew(list(columns))
    if objects:
        yield _json_chunk(list(columns), objects, start, remarks)


def _widen(columns: dict[str, None], objects: list[dict], late: bool) -> bool:
    """Add the objects' keys to `columns`; True when that adds one and chunks were yielded before."""
    before = len(columns)
    for obj in objects:
        columns.update(dict.fromkeys(obj))
    return late and len(columns) > before


def _json_chunk(columns: list[str], objects: list[dict], start: int, remarks: tuple[str, ...]) -> Chunk:
    return Chunk(columns, [RawRow({c: obj.get(c) for c in columns}) for obj in objects], start, remarks)


def _array(text: str, size: int, remarks: tuple[str, ...]) -> Iterator[Chunk]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadFile(f"unreadable jsonl file: not valid JSON ({exc.msg}; line {exc.lineno}, column "
                      f"{exc.colno})") from exc
    except (ValueError, RecursionError) as exc:
        raise BadFile(f"unreadable jsonl file: the array: {type(exc).__name__}: {str(exc)[:200]}") from exc
    del text
    columns: dict[str, None] = {}
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise BadFile(f"unreadable jsonl file: item {i} is a JSON {_json_type(item)}, not an object")
        columns.update(dict.fromkeys(item))
    if not items:
        raise BadFile("empty jsonl file: no rows")
    for start in range(0, len(items), size):
        yield _json_chunk(list(columns), items[start: start + size], start + 1, remarks)


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
