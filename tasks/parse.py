"""parse: the bytes of a landed file -> its columns and raw rows, with no judgement of their values yet.

A file whose format is broken (not UTF-8, a line that is not a JSON object, a malformed CSV quote, a corrupt
Parquet file, no bytes at all) is rejected as a whole, naming the line and the cause: its rows cannot be
told apart reliably, a text file in another encoding would lose exactly its non-ASCII rows, and a file cut
off mid-write looks just like that. A row that the format carries but that does not fit the header (too few
or too many CSV fields) is set aside on its own. Texts and labels are judged later, in `tasks.collect`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kaizen.tasks.files import UnsupportedFormat, compression, file_kind, inner_name

DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
# UTF-32 first: its little-endian mark starts with UTF-16's.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
        (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
        (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"))
MAGIC = ((b"PAR1", "a Parquet file: name it .parquet"), (b"\x1f\x8b", "gzip-compressed: name it .csv.gz"),
         (b"PK\x03\x04", "a zip archive (an Excel workbook?): export it as CSV"))
EXTRA = "_extra_fields"  # where a CSV row's fields beyond the header are kept, so nothing of it is lost


class BadFile(ValueError):
    """The file as a whole cannot be parsed; the message says why and where."""


@dataclass(frozen=True)
class RawRow:
    record: dict[str, Any]  # the cells as read, by column
    problem: str | None = None  # why the row cannot be used, known from reading it alone


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[RawRow]
    remarks: tuple[str, ...] = ()  # what was done to read it that a user should know


def parse(data: bytes, name: str, required: Sequence[str] = ()) -> Table:
    """Read a landed file; `required` columns let a CSV with the wrong delimiter be read all the same."""
    try:
        kind = file_kind(name)
    except UnsupportedFormat as exc:
        raise BadFile(str(exc)) from exc
    data, remarks = decompress(data, name)
    name = inner_name(name)
    if not data:
        raise BadFile(f"unreadable {kind} file: it is empty (0 bytes)")
    if kind == "parquet":
        table = _parquet(data)
    else:
        text, decoded = decode(data, kind)
        remarks += decoded
        if kind == "csv":
            table = _csv(text, "\t" if name.lower().endswith(".tsv") else ",", required)
        else:
            table = _jsonl(text, as_array=name.lower().endswith(".json") and text.lstrip().startswith("["))
    return _names_stripped(Table(table.columns, table.rows, remarks + table.remarks))


def decompress(data: bytes, name: str) -> tuple[bytes, tuple[str, ...]]:
    """The bytes a compressed file holds (`.gz`, `.bz2`, `.xz`, a `.zip` of one file); others as they are."""
    import bz2
    import gzip
    import lzma
    import zipfile

    ending = compression(name)
    if ending is None:
        return data, ()
    try:
        if ending == ".zip":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise BadFile(f"unreadable zip file: it holds {len(members)} files, not one")
                data = archive.read(members[0])
        else:
            data = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}[ending](data)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, lzma.LZMAError) as exc:  # corrupt or cut short
        raise BadFile(f"unreadable {ending[1:]} file (corrupt or truncated): {type(exc).__name__}: "
                      f"{str(exc)[:200]}") from exc
    return data, (f"decompressed ({ending[1:]})",)


def _names_stripped(table: Table) -> Table:
    """Column names without surrounding spaces (`text, label` means `label`); names that then collide are refused."""
    stripped = [c.strip() if isinstance(c, str) else c for c in table.columns]
    if stripped == table.columns:
        return table
    duplicated = sorted({c for c in stripped if stripped.count(c) > 1})
    if duplicated:
        raise BadFile(f"unreadable file: column(s) {duplicated} appear more than once once spaces are stripped")
    renamed = {old: new for old, new in zip(table.columns, stripped, strict=True) if old != new}
    rows = [RawRow({renamed.get(k, k): v for k, v in row.record.items()}, row.problem) for row in table.rows]
    shown = ", ".join(f"{old!r} -> {new!r}" for old, new in renamed.items())
    return Table(stripped, rows, table.remarks + (f"column names stripped of spaces: {shown}",))


def decode(data: bytes, kind: str) -> tuple[str, tuple[str, ...]]:
    """UTF-8 text, or the encoding a byte-order mark announces; anything else names the offending byte."""
    for bom, codec, label in BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as exc:
                raise BadFile(f"unreadable {kind} file: it starts with a {label} byte-order mark but is not "
                              f"valid {label} ({exc.reason} at byte {exc.start})") from exc
            return text, (() if label == "UTF-8" else (f"decoded as {label} (byte-order mark)",))
    try:
        return data.decode("utf-8"), ()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        hint = next((h for magic, h in MAGIC if data.startswith(magic)), "save it as UTF-8")
        raise BadFile(f"unreadable {kind} file: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                      f"{hint}") from exc


def _header(line: str, delimiter: str) -> list[str]:
    try:
        return [c.strip() for c in next(csv.reader([line], delimiter=delimiter), [])]
    except csv.Error:  # a malformed header line: the full parse below reports it with its line number
        return []


def _delimiter(text: str, expected: str, required: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The name's delimiter, unless another one is plainly meant: it alone yields the required columns, or
    the name's delimiter sees one column where another sees several (then their names are reported)."""
    first = text.lstrip("\r\n").split("\n", 1)[0].rstrip("\r")
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


def _csv(text: str, expected: str, required: Sequence[str]) -> Table:
    if not text.strip():
        raise BadFile("unreadable csv file: no header row (it holds only blank lines)")
    delimiter, remarks = _delimiter(text, expected, required)
    # One field can be as long as the file (a line of megabytes): the row is judged for length later, not
    # refused here. The limit is process-wide, so it is only ever raised.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next((fields for fields in reader if fields), None)
        if header is None:
            raise BadFile("unreadable csv file: no header row (it holds only blank lines)")
        if any("\x00" in c for c in header):
            raise BadFile("unreadable csv file: NUL bytes in the header (UTF-16 without a byte-order mark?)")
        duplicated = sorted({c for c in header if header.count(c) > 1})
        if duplicated:
            raise BadFile(f"unreadable csv file: column(s) {duplicated} appear more than once in the header")
        rows = [_csv_row(header, fields) for fields in reader if fields]  # an empty line is not a row
    except csv.Error as exc:
        hint = " (a quote opened and never closed?)" if "end of data" in str(exc) else ""
        raise BadFile(f"unreadable csv file: malformed CSV on line {reader.line_num}: {exc}{hint}") from exc
    if not rows:
        raise BadFile("empty csv file: a header and no rows")
    return Table(header, rows, remarks)


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


def _jsonl(text: str, as_array: bool) -> Table:
    objects: list[tuple[str, Any]] = []
    where = "the array"
    try:
        if as_array:  # a .json file holding one array of objects
            objects = [(f"item {i}", item) for i, item in enumerate(json.loads(text), 1)]
        else:  # split on \n only: U+2028 and friends may sit inside a JSON string
            for i, line in enumerate(text.split("\n"), 1):
                if line.strip():
                    where = f"line {i}"
                    objects.append((where, json.loads(line)))
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno}, column {exc.colno}" if as_array else f"{where}, column {exc.colno}"
        raise BadFile(f"unreadable jsonl file: not valid JSON ({exc.msg}; {at})") from exc
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting too deep
        raise BadFile(f"unreadable jsonl file: {where}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    columns: dict[str, None] = {}
    for at, obj in objects:
        if not isinstance(obj, dict):
            raise BadFile(f"unreadable jsonl file: {at} is a JSON {_json_type(obj)}, not an object")
        columns.update(dict.fromkeys(obj))
    if not objects:
        raise BadFile("empty jsonl file: no rows")
    return Table(list(columns), [RawRow({c: obj.get(c) for c in columns}) for _, obj in objects])


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _parquet(data: bytes) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
        names = table.column_names  # decoded here: a name that is not UTF-8 raises UnicodeDecodeError
    except (pa.ArrowException, OSError, ValueError) as exc:  # corrupt or truncated: footer, pages, schema
        raise BadFile(f"unreadable parquet file (corrupt or truncated): {type(exc).__name__}: {str(exc)[:300]}") from exc
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:  # rows as dicts would silently keep only one of them
        raise BadFile(f"unreadable parquet file: column(s) {duplicated} appear more than once")
    try:
        rows = [RawRow(record) for record in table.to_pylist()]
    except (pa.ArrowException, ValueError, OverflowError) as exc:  # values Python cannot hold (odd dates)
        raise BadFile(f"unreadable parquet file: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if not rows:
        raise BadFile("empty parquet file: no rows")
    return Table(list(names), rows)


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
