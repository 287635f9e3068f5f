"""decode: a file's bytes as the bytes or the text it holds, read in pieces: decompressed as they are read (`.gz`,
`.bz2`, `.xz`, a `.zip` of one file) and decoded as the byte-order mark says, else as UTF-8.

Memory stays that of one piece, whatever the file's size. Read strictly (collect), a file that is not what it
claims to be raises BadFile naming where (the byte, the line), however late in the file the fault lies: what one
whole-file decode would have said. Read leniently (scoring), UTF-8 text decodes whole and `undecoded` names the
lines whose bytes were not UTF-8, so that each costs only itself.

What a file may cost is counted as it is read (`Meter`, the workspace's `limits`): bytes unpacked, against the
file's size too, rows and seconds; and no line is held beyond `limits.max_text_bytes`. A file past a limit stops
there with BadFile naming the limit, in memory bounded by the limits and time linear in what was read.
"""

from __future__ import annotations

import codecs
import io
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, BinaryIO

from kaizen.tasks.workspace.files import compression

if TYPE_CHECKING:
    from _typeshed import SupportsRead

    from kaizen.tasks.workspace.settings import LimitsSettings

PIECE = 1 << 20  # bytes decompressed or decoded at a time
# UTF-32 first: its little-endian mark starts with UTF-16's. Each mark's codec reads what follows the mark.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
        (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"))
MAGIC = ((b"PAR1", "a Parquet file: name it .parquet"), (b"\x1f\x8b", "gzip-compressed: name it .csv.gz"),
         (b"PK\x03\x04", "a zip archive (an Excel workbook?): export it as CSV"))
ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


class BadFile(ValueError):
    """The file as a whole cannot be parsed; the message says why and where."""


class Meter:
    """What reading one file (`stored` bytes as kept; 0: unknown) has cost so far, each count checked against
    `limits` as it grows: bytes unpacked (by what unpacked them: decompressed, a Parquet file's values decoded),
    rows and seconds."""

    def __init__(self, limits: LimitsSettings, stored: int) -> None:
        self.limits, self.stored = limits, stored
        self.began = time.monotonic()
        self.unpacked: dict[str, int] = {}
        self.rows = 0

    def add_bytes(self, count: int, what: str = "decompressed") -> None:
        total = self.unpacked[what] = self.unpacked.get(what, 0) + count
        limits = self.limits
        if total > limits.max_file_bytes:
            raise BadFile(f"file too large: {what} beyond limits.max_file_bytes = {limits.max_file_bytes} bytes")
        # Only past a floor: a small file may compress as well as it likes.
        if 0 < self.stored * limits.max_compression_ratio < total and total > limits.ratio_checked_after_bytes:
            raise BadFile(f"file too large for its size: {what} beyond limits.max_compression_ratio = "
                          f"{limits.max_compression_ratio:g} times its {self.stored} bytes (past "
                          f"limits.ratio_checked_after_bytes = {limits.ratio_checked_after_bytes})")
        self.check_time()

    def add_rows(self, count: int) -> None:
        self.rows += count
        if self.rows > self.limits.max_file_rows:
            raise BadFile(f"file too long: more rows than limits.max_file_rows = {self.limits.max_file_rows}")
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() - self.began > self.limits.max_read_seconds:
            raise BadFile(f"file too slow to read: longer than limits.max_read_seconds = "
                          f"{self.limits.max_read_seconds:g} s")


def _corrupt() -> tuple[type[BaseException], ...]:
    import lzma
    import zipfile
    import zlib

    return OSError, EOFError, ValueError, zipfile.BadZipFile, lzma.LZMAError, zlib.error


class _Pieces(io.RawIOBase):
    """A stream read in whole pieces; a decompressor's failures (`ending` names it), wherever in the file they are
    met, are BadFile. Without an ending a failure is the disk's or the network's, not the file's: it stays itself."""

    def __init__(self, inner: SupportsRead[bytes], ending: str | None, meter: Meter) -> None:
        self._inner, self._ending, self._meter = inner, ending, meter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:  # filled whole unless at the end, so that a peek sees a whole byte-order mark
            filled = 0
            while filled < len(buffer) and (piece := self._inner.read(len(buffer) - filled)):
                buffer[filled: filled + len(piece)] = piece
                filled += len(piece)
        except _corrupt() as exc:
            if self._ending is None:
                raise
            raise corrupt(self._ending, exc) from exc
        self._meter.add_bytes(filled, "decompressed" if self._ending else "read")
        return filled


def corrupt(ending: str, exc: BaseException) -> BadFile:
    return BadFile(f"unreadable {ending[1:]} file (corrupt or truncated): {type(exc).__name__}: {str(exc)[:200]}")


@contextmanager
def opened(raw: BinaryIO, name: str, meter: Meter) -> Iterator[tuple[io.BufferedReader, tuple[str, ...]]]:
    """The bytes of `raw` (an open file of `meter.stored` bytes, a local one or an fsspec one), decompressed as its
    name's ending says and counted by `meter`, and the remark that says so."""
    import bz2
    import gzip
    import lzma
    import zipfile

    ending = compression(name)
    if ending is None or meter.stored == 0:  # nothing at all is empty, compressed or not
        if ending is None and meter.stored > meter.limits.max_file_bytes:  # refused before a byte is read
            meter.add_bytes(meter.stored, "read")
        yield io.BufferedReader(_Pieces(raw, None, meter), PIECE), ()
        return
    with ExitStack() as stack:
        inner: SupportsRead[bytes]  # a member of the zip, or the decompressing file
        try:
            if ending == ".zip":
                archive = stack.enter_context(zipfile.ZipFile(raw))
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise BadFile(f"unreadable zip file: it holds {len(members)} files, not one")
                if compression(members[0].filename) is not None:  # never unpacked twice: say so, not "not UTF-8"
                    raise BadFile(f"unreadable zip file: it holds {members[0].filename!r}, itself compressed "
                                  "(archives within archives are not read): zip the file itself")
                inner = stack.enter_context(archive.open(members[0]))
            else:
                inner = (gzip.GzipFile(fileobj=raw) if ending == ".gz" else
                         {".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}[ending](raw))
        except _corrupt() as exc:
            if isinstance(exc, BadFile):
                raise
            raise corrupt(ending, exc) from exc
        yield io.BufferedReader(_Pieces(inner, ending, meter), PIECE), (f"decompressed ({ending[1:]})",)


def drain(pieces: Iterator[object]) -> None:
    """Read what is left to its end: an error further on (bytes that are not UTF-8, a compressed stream cut
    short) outranks the one that stopped the reader, as it would had the file been decoded whole first."""
    for _ in pieces:
        pass


def text_pieces(binary: io.BufferedReader, kind: str, strict: bool = True) -> tuple[Iterator[str], tuple[str, ...]]:
    """The text in pieces, as it is decoded, and a remark when a byte-order mark chose the encoding.
    Not `strict`: UTF-8 text decodes whatever it holds (see `undecoded`)."""
    head = binary.peek(4)[:4]
    bom, codec, label = next(((b, c, n) for b, c, n in BOMS if head.startswith(b)), (b"", "utf-8", None))
    binary.read(len(bom))
    remarks = (f"decoded as {label} (byte-order mark)",) if label not in (None, "UTF-8") else ()
    # Only UTF-8 is read leniently: surrogateescape stands in for bytes from 0x80 up, and those are all the bytes
    # UTF-8 refuses (UTF-16 refuses lower ones too).
    errors = "strict" if strict or codec != "utf-8" else "surrogateescape"
    return _decoded(binary, kind, codec, bom, label, errors), remarks


def text_lines(binary: io.BufferedReader, kind: str, universal: bool, strict: bool,
               limit: int) -> tuple[Iterator[str], tuple[str, ...]]:
    """The text's lines (`lines_of`), as it is decoded, and the remark of `text_pieces`."""
    pieces, remarks = text_pieces(binary, kind, strict)
    return lines_of(pieces, kind, universal, limit), remarks


def undecoded(line: str) -> UnicodeDecodeError | None:
    """Leniently decoded, the error a line's bytes give when decoded alone as UTF-8; None for a line of text."""
    if ESCAPED.search(line) is None:  # UTF-8 that decodes never yields a lone surrogate
        return None
    try:
        line.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc
    return None


def up_to_undecoded(lines: Iterator[str], kind: str) -> Iterator[str]:
    """Leniently decoded lines up to the first that was not UTF-8, where BadFile stops the file (as a strict read
    would have refused it): for a format whose rows may span lines, such as CSV."""
    for number, line in enumerate(lines, 1):
        if (exc := undecoded(line)) is not None:
            raise BadFile(f"unreadable {kind} file: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line "
                          f"{number}); save it as UTF-8")
        yield line


def _decoded(binary: io.BufferedReader, kind: str, codec: str, bom: bytes, label: str | None,
             errors: str) -> Iterator[str]:
    """Text in pieces; a byte that does not decode is named by its place, counted as in the whole file."""
    decoder = codecs.getincrementaldecoder(codec)(errors)
    done = newlines = 0  # bytes after the mark decoded so far, and the line breaks among them
    first = b""
    while True:
        piece = binary.read(PIECE)
        first = first or piece[:4]
        held = len(decoder.getstate()[0])  # bytes of a character begun in the last piece
        try:
            text = decoder.decode(piece, final=not piece)
        except UnicodeDecodeError as exc:
            at = done - held + exc.start  # from the first byte after the mark
            drain(iter(lambda: binary.read(PIECE), b""))
            if label is not None:
                where = at if label == "UTF-8" else at + len(bom)  # as utf-8-sig / utf-16 / utf-32 count
                raise BadFile(f"unreadable {kind} file: it starts with a {label} byte-order mark but is not "
                              f"valid {label} ({exc.reason} at byte {where})") from exc
            line = newlines + piece[: max(0, at - done)].count(b"\n") + 1
            hint = next((h for magic, h in MAGIC if first.startswith(magic)), "save it as UTF-8")
            raise BadFile(f"unreadable {kind} file: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line "
                          f"{line}); {hint}") from exc
        if not piece:
            if text:  # read leniently, the bytes of a character cut short at the very end
                yield text
            return
        done += len(piece)
        newlines += piece.count(b"\n")
        yield text


def lines_of(texts: Iterator[str], kind: str, universal: bool, limit: int) -> Iterator[str]:
    """The lines of text arriving in pieces. `universal`: lines end at \\n, \\r\\n or \\r and keep their ending
    (what csv needs: io's newline=""); otherwise they end at \\n alone and lose it (a JSON string may hold \\r or
    U+2028). The unfinished end of a piece waits as a list of pieces, joined once when its line ends (a \\r's
    too: \\n may follow), so time stays linear in the text; a line longer than `limit` characters (each one byte
    or more) is BadFile before it is held whole."""
    held: list[str] = []  # the unfinished line, in pieces
    size = ended = 0  # its length; the lines ended before it
    for text in texts:
        if universal and held and held[-1].endswith("\r"):  # that line ended, at \r or at the \r\n now met
            if text.startswith("\n"):
                held.append("\n")
                text = text[1:]
            yield "".join(held)
            held, size, ended = [], 0, ended + 1
        lines = io.StringIO(text, newline="").readlines() if universal else text.split("\n")
        rest = lines.pop() if lines else ""
        if universal and rest.endswith("\n"):  # a whole line after all
            lines.append(rest)
            rest = ""
        if lines:
            if size + len(lines[0]) > limit:
                raise too_long(kind, ended + 1, limit)
            held.append(lines[0])
            lines[0] = "".join(held)
            held, size = [], 0
            # Only a piece longer than the limit can hold a line too long: the lines before it go first.
            if len(text) > limit and (over := next((i for i, line in enumerate(lines) if len(line) > limit),
                                                   None)) is not None:
                yield from lines[:over]
                raise too_long(kind, ended + over + 1, limit)
            yield from lines
            ended += len(lines)
        if rest:
            held.append(rest)
            size += len(rest)
            if size > limit:
                raise too_long(kind, ended + 1, limit)
    if held or not universal:  # str.split's last piece: "" after a final \n, a line without one otherwise
        yield "".join(held)


def too_long(kind: str, number: int, limit: int) -> BadFile:
    return BadFile(f"unreadable {kind} file: line {number} is longer than limits.max_text_bytes = {limit}")
