"""Files, the one way kaizen handles them: which formats it reads, how it writes a file that a kill cannot leave
half written, and how two processes take turns over one workspace.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kaizen.tasks.workspace.faults import kill_point

if TYPE_CHECKING:  # every command opens a workspace; pandas costs a second to import, and few of them need it
    import pandas as pd

# The labeled and unlabeled files kaizen reads, by name ending: the one table of formats. A `.json` file holds
# JSON Lines, or one array of objects.
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}
# Compressions read (and written) by a second ending, as pandas does: `labels.csv.gz`. A zip holds one file.
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip")
FORMAT_HINT = ("use CSV, JSON Lines or Parquet: .csv, .tsv, .jsonl, .json, .parquet, each optionally compressed "
               "(.gz, .bz2, .xz, .zip)")
UNFINISHED = (".part", ".tmp")  # names of files still being written: never read
LINE_BREAKS = {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}  # json.dumps escapes C0 controls itself


class UnsupportedFormat(ValueError):
    """The file's name ends in no format of FORMATS."""


def compression(name: str) -> str | None:
    """The compression a name's last ending announces (".gz"), or None."""
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix in COMPRESSIONS else None


def inner_name(name: str) -> str:
    """The name without its compression ending: what it holds (`labels.csv.gz` -> `labels.csv`)."""
    ending = compression(name)
    return name[: -len(ending)] if ending else name


def file_kind(name: str) -> str:
    """"csv", "jsonl" or "parquet", from the name's ending (after any compression ending)."""
    suffix = PurePosixPath(inner_name(name)).suffix.lower()
    if suffix not in FORMATS:
        what = f"unsupported file type {suffix!r}" if suffix else "no file type in the name"
        raise UnsupportedFormat(f"{what} ({FORMAT_HINT})")
    return FORMATS[suffix]


def frame_bytes(frame: pd.DataFrame, name: str) -> bytes:
    """`frame` written in the format that `name` ends in (CSV, JSON Lines or Parquet, maybe compressed)."""
    kind, buffer = file_kind(name), io.BytesIO()
    if kind == "parquet":
        frame.to_parquet(buffer, index=False)
    elif kind == "jsonl":
        buffer.write(frame.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8"))
    else:
        sep = "\t" if inner_name(name).lower().endswith(".tsv") else ","
        buffer.write(frame.to_csv(index=False, sep=sep, lineterminator="\n").encode("utf-8"))
    return compress(buffer.getvalue(), name)


def compress(data: bytes, name: str) -> bytes:
    """`data` compressed as `name`'s compression ending says (unchanged without one)."""
    import bz2
    import gzip
    import lzma
    import zipfile

    ending = compression(name)
    if ending == ".zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(PurePosixPath(inner_name(name)).name, data)
        return buffer.getvalue()
    return {".gz": lambda d: gzip.compress(d, mtime=0), ".bz2": bz2.compress, ".xz": lzma.compress}.get(
        ending or "", lambda d: d)(data)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    return frame_bytes(frame, "frame.parquet")


def json_line(record: dict) -> str:
    """One JSON Lines record, readable as text; the characters some readers take for a line break (str.splitlines
    breaks on NEL, U+2028, U+2029) are escaped, so a record is always exactly one line."""
    return json.dumps(record, ensure_ascii=False).translate(LINE_BREAKS)


def write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the folder: readers and restarts see the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    with open(tmp, "wb") as out:
        out.write(data)
    commit_file(tmp, path)


def temporary(path: Path) -> Path:
    """Where `path` is written before it is committed: a hidden `.tmp` name that `recover` clears after a kill."""
    return path.with_name(f".{path.name}.tmp")


def commit_file(tmp: Path, path: Path) -> None:
    """Make a fully written temporary file `path`: fsync it, rename it, fsync the folder (the rename itself
    must be durable before anything records that the file exists)."""
    with open(tmp, "rb+") as out:
        os.fsync(out.fileno())
    kill_point("atomic:written")
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def move_if_present(source: Path, dest: Path) -> None:
    """Rename `source` to `dest` (its folder made); one already gone is fine: it was moved before (a repeat after a
    kill, or another machine's turn)."""
    if source.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)


class Busy(RuntimeError):
    """Another process holds the lock."""


@contextmanager
def locked(path: Path, wait: bool, busy: str) -> Iterator[bool]:
    """Hold an exclusive lock on `path`: wait for its holder, or raise Busy(`busy`) when `wait` is False.
    Yields whether it waited. The kernel drops the lock with its process, even on SIGKILL: nothing goes stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError as exc:
            if not wait:
                raise Busy(busy) from exc
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
