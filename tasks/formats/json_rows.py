"""json_rows: the text of a JSON Lines file -> its objects as rows, a chunk at a time, with no judgement of their
values yet; or, for a `.json` file holding one array, the array's items, parsed one at a time as its text arrives,
so that memory holds an item and never the array. No line or item is held beyond `limit` characters
(limits.max_text_bytes).

Read strictly (collect), a fault of the format (a line or an item that is not a JSON object, text that is not
JSON) refuses the whole file, naming the line; a line that is no object is reported only once the rest of the file
is known to be JSON, which would come first. Chunks yielded before a fault is found are the caller's to discard.
Read leniently (scoring), a line or an item that cannot be a row is a row with a problem and the reading goes on;
text that is not JSON in an array leaves the rest unknown and is raised after the rows before it.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

from kaizen.tasks.formats.decode import BadFile, drain, lines_of, too_long, undecoded
from kaizen.tasks.formats.rows import Chunk, ColumnsGrew, RawRow

JSON_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's own whitespace, which may stand between the items of an array
MARGIN = 16  # characters from the end of the text read so far within which a value may be cut (`-0.|5`, `\\u00|e9`)


def json_chunks(texts: Iterator[str], array_allowed: bool, size: int, remarks: tuple[str, ...],
                columns: list[str] | None, strict: bool, limit: int) -> Iterator[Chunk]:
    """A JSON Lines file's objects, from its text in pieces; or, when `array_allowed` and the text starts with `[`,
    one JSON array's (`_items`). `columns`: every column, when known from an earlier read (ColumnsGrew, raised only
    when `strict`)."""
    before, tail = 0, ""  # the blank lines before the first that is not, and what follows the last of them
    for text in texts:
        if text.strip():
            break
        before += text.count("\n")
        tail = (tail + text).rpartition("\n")[2]
        if len(tail) > limit:
            raise too_long("jsonl", before + 1, limit)
    else:
        raise BadFile("empty jsonl file: no rows")
    texts = itertools.chain([tail + text], texts)
    rows = (_items(texts, strict, limit, before + 1) if array_allowed and text.lstrip().startswith("[") else
            _line_rows(itertools.chain(itertools.repeat("", before), lines_of(texts, "jsonl", False, limit)), strict))
    yield from _objects(rows, size, remarks, columns, strict)


def _objects(objects: Iterator[RawRow], size: int, remarks: tuple[str, ...], known: list[str] | None,
             strict: bool) -> Iterator[Chunk]:
    """Rows of JSON objects in chunks, each row with every column seen so far (`known` ones first)."""
    columns: dict[str, None] = dict.fromkeys(known or ())
    rows: list[RawRow] = []  # the objects as read: each gets every column when its chunk is made
    start = 1
    grew = False  # a column first seen after a chunk was yielded: the rest is only read for its columns
    for row in objects:
        rows.append(row)
        if len(rows) == size:  # read leniently, a chunk has the columns seen so far: nothing is read twice
            grew = (_widen(columns, rows, start > 1) and strict) or grew
            if not grew:
                yield _json_chunk(list(columns), rows, start, remarks)
            start, rows = start + size, []
    if start == 1 and not rows:
        raise BadFile("empty jsonl file: no rows")
    if (_widen(columns, rows, start > 1) and strict) or grew:
        raise ColumnsGrew(list(columns))
    if rows:
        yield _json_chunk(list(columns), rows, start, remarks)


def _line_rows(lines: Iterator[str], strict: bool) -> Iterator[RawRow]:
    """Each line that is not blank as a row. Strictly, a line that is no JSON refuses the file at once, and one
    that is no object once every line is known to be JSON (which would come first)."""
    fault: BadFile | None = None
    where = "line 1"
    try:
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"line {i}"
            if not strict:
                yield _lenient_object(line, i)
                continue
            obj = json.loads(line)
            if fault is None and not isinstance(obj, dict):
                fault = BadFile(f"unreadable jsonl file: {where} is a JSON {_json_type(obj)}, not an object")
            if fault is None:
                yield RawRow(obj, None, i)
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


class _Array:
    """A JSON array's text as it arrives: what is left of the pieces read so far (`text`, from `at` on), and the
    line and column where `text` starts, so that an error names its place in the whole file."""

    def __init__(self, texts: Iterator[str], strict: bool, limit: int, line: int) -> None:
        self.texts, self.strict, self.limit = texts, strict, limit
        self.text, self.at, self.ended = "", 0, False
        self.line, self.column = line, 1
        self.decoder = json.JSONDecoder()

    def _more(self) -> None:
        """Drop what was parsed and take the next piece (`ended` at the end)."""
        piece = next(self.texts, None)
        if piece is None:
            self.ended = True
            return
        if not self.strict and (bad := undecoded(piece)) is not None:  # an item of an array is no row: it stops
            raise BadFile(f"unreadable jsonl file: not UTF-8 text ({bad})")
        if breaks := self.text.count("\n", 0, self.at):
            self.line, self.column = self.line + breaks, self.at - self.text.rfind("\n", 0, self.at)
        else:
            self.column += self.at
        self.text, self.at = self.text[self.at:] + piece, 0

    def invalid(self, message: str, at: int) -> BadFile:
        breaks = self.text.count("\n", 0, at)
        column = at - self.text.rfind("\n", 0, at) if breaks else self.column + at
        return BadFile(f"unreadable jsonl file: not valid JSON ({message}; line {self.line + breaks}, column {column})")

    def next_char(self) -> str | None:
        """The next character that is not JSON whitespace, `at` moved to it (None at the end)."""
        while True:
            self.at = JSON_SPACE.match(self.text, self.at).end()  # type: ignore[union-attr]  # matches "" too
            if self.at < len(self.text):
                return self.text[self.at]
            if self.ended:
                return None
            self._more()

    def item(self, number: int) -> Any:
        """The value at `at`, `at` moved past it: parsed again with each piece until it is whole, at most `limit`
        characters of it held. Near the end of the text read so far, a value may go on (`1|.5`) and a fault may be
        a cut (`tr|ue`): both wait for the next piece."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.text, self.at)
                if end < len(self.text) - MARGIN or self.ended:
                    self.at = end
                    return value
            except json.JSONDecodeError as exc:
                if self.ended or (exc.pos < len(self.text) - MARGIN and not exc.msg.startswith("Unterminated")):
                    raise self.invalid(exc.msg, exc.pos) from exc
            except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting too deep
                raise BadFile(f"unreadable jsonl file: the array: {type(exc).__name__}: {str(exc)[:200]}") from exc
            if len(self.text) - self.at > self.limit:
                raise BadFile(f"unreadable jsonl file: item {number} of the array is longer than "
                              f"limits.max_text_bytes = {self.limit}")
            self._more()


def _items(texts: Iterator[str], strict: bool, limit: int, line: int) -> Iterator[RawRow]:
    """A JSON array's items as rows (the text starts on `line`), parsed one at a time: memory holds an item,
    not the array. Strictly, an item that is no object refuses the file once the rest is known to be JSON."""
    array = _Array(texts, strict, limit, line)
    fault: BadFile | None = None
    if array.next_char() != "[":
        raise array.invalid("Expecting value", array.at)
    array.at += 1
    number = 0
    while array.next_char() != "]" or number:
        number += 1
        item = array.item(number)
        if isinstance(item, dict):
            if fault is None:
                yield RawRow(item, None, number)
        elif strict:
            fault = fault or BadFile(f"unreadable jsonl file: item {number} is a JSON {_json_type(item)}, not an object")
        else:
            yield RawRow({}, f"item {number} is a JSON {type(item).__name__}, not an object", number)
        follows = array.next_char()
        if follows == "]":
            break
        if follows != ",":
            raise array.invalid("Expecting ',' delimiter", array.at)
        array.at += 1
    array.at += 1
    if array.next_char() is not None:
        raise array.invalid("Extra data", array.at)
    if fault is not None:
        raise fault


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
