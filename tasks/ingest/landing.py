"""The landing zone: which entries are ready to be read, which are not yet, and which never will be.

A file is read only when it is a regular file directly in the landing zone (never through a link, symbolic or
hard: no name can steer collect outside the landing zone), its name does not mark it as unfinished (hidden,
`.part`, `.tmp`), and its size and modification time have held still for `data.settle_seconds`; it is read
whole, and dropped if it changed while it was read. Writers that can should still write under a hidden or
`.part` name and rename: a writer that pauses longer than the settle time cannot be told from a finished file.
Nothing outside the landing zone is ever read or removed.

On an object store (`s3://bucket/landing`, through fsspec) no decision rests on a cached answer: fsspec keeps
listings (s3fs answers `ls`, `exists` and `info` from them) and one instance serves a whole process, so every
survey lists afresh (a long `kaizen watch` sees each new object) and every look is a fresh HEAD whose stamp
holds the ETag and version id besides size and time (a replacement of the same size in the same second
changes it). Reads are pinned to the ETag the open saw (s3fs sends If-Match), and a file whose stamp after the
read is not the survey's is left for the next run; an object is removed only when a HEAD just before the DELETE
still shows the stamp that was read. S3 has no conditional delete: an object replaced in the moment between
that HEAD and the DELETE is removed unread, the one window that remains (a writer that never reuses a name
never meets it).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from kaizen.tasks.workspace.files import UNFINISHED


@dataclass(frozen=True)
class Landed:
    path: str  # as the filesystem lists it: what is read and removed
    name: str  # the base name, printable (undecodable bytes escaped): what the ledger and reports show
    # size, modification time, then the inode on a local disk or the ETag and version id on an object store:
    # changes when it is written or replaced
    stamp: tuple[Any, ...]


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str  # why it was not read this time ("still being written") or will never be (a link outside)


class NotReady(Exception):
    """A landed file could not be read whole this time; the message says why."""


def printable(base: str) -> str:
    """A file name as text any store accepts: bytes that are not UTF-8 are shown escaped (`caf\\xe9.csv`)."""
    try:
        return base.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that did not come from undecodable bytes
        return base.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_component(name: str, limit: int = 120) -> str:
    """`name` as one harmless path component: no separators or `..`, at most `limit` bytes, suffix kept."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".") or "_"
    suffix = PurePosixPath(cleaned).suffix[:16]
    if len(cleaned.encode("utf-8")) > limit:
        stem = cleaned.removesuffix(suffix).encode("utf-8")[: limit - len(suffix.encode("utf-8"))]
        cleaned = stem.decode("utf-8", "ignore") + suffix
    return cleaned


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
    return None  # this filesystem tells no time: settling then waits the full interval


def survey(landing: str, settle_seconds: float) -> tuple[list[Landed], list[Skipped]]:
    """The files ready to be read, oldest name first, and the entries left alone with the reason why."""
    fs, root = fsspec.core.url_to_fs(landing)
    # The instance is shared by the process and keeps what it listed before: without this, a watcher's later
    # surveys would answer from its first listing and miss every object that arrived since.
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return [], []
    local = isinstance(fs, LocalFileSystem)
    base_dir = PurePosixPath(root)
    ready: list[Landed] = []
    skipped: list[Skipped] = []
    for entry in sorted(fs.ls(root, detail=True), key=lambda e: e["name"]):
        path = entry["name"]
        base = PurePosixPath(path).name
        name = printable(base)
        if PurePosixPath(path).parent != base_dir or base in ("", ".", ".."):
            skipped.append(Skipped(name or path, f"a path trick ({printable(path)!r} is not a file name "
                                                 "directly in the landing zone): not read"))
            continue
        if base.startswith(".") or base.endswith(UNFINISHED):
            continue  # still being written, by the convention writers follow
        if entry["type"] == "directory":
            if base != "corrections":  # label corrections, collected on their own (Workspace.corrections_landing)
                skipped.append(Skipped(name, "a folder: only files directly in the landing zone are collected"))
            continue
        if local and entry.get("islink"):
            skipped.append(_link(path, root, name))
            continue
        if local and entry.get("nlink", 1) > 1:
            skipped.append(Skipped(name, _hard_link(entry["nlink"])))
            continue
        if entry["type"] != "file":
            skipped.append(Skipped(name, f"not a regular file ({entry['type']}: a pipe, socket or device?): not read"))
            continue
        try:  # stamped by the same call as every later look, so that looks compare
            ready.append(Landed(path, name, look(fs, Landed(path, name, ()))))
        except OSError as exc:
            skipped.append(Skipped(name, f"vanished before it could be read: {exc}"))
    return _settle(fs, ready, settle_seconds, skipped)


def _link(path: str, root: str, name: str) -> Skipped:
    """A link is never followed, so no name in the landing zone can make collect read (or remove) anything
    outside it; the reason says where it points."""
    destination = printable(os.readlink(path))
    target = os.path.realpath(path)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, target]) != real_root:
        return Skipped(name, f"a link to {destination!r}, outside the landing zone: not followed")
    if not os.path.exists(target):
        return Skipped(name, f"a broken link to {destination!r}: not followed")
    return Skipped(name, f"a link to {destination!r}: links are not followed; a file inside the landing zone "
                         "is collected on its own, put others in as files")


def _hard_link(names: int) -> str:
    """A file with other names may be one outside the landing zone: read through this name, collect would read
    (and archive) bytes nobody landed, so it is refused like a symbolic link."""
    return (f"a hard link ({names} names for one file, the others possibly outside the landing zone): links are "
            "not followed; put the file in as a copy of its own")


def look(fs: Any, file: Landed) -> tuple[Any, ...]:
    """The file's stamp now (raises OSError when it is gone)."""
    if isinstance(fs, LocalFileSystem):
        info = os.stat(file.path, follow_symlinks=False)
        return (info.st_size, info.st_mtime, info.st_ino)
    # A fresh HEAD: `info` would otherwise answer from the listing cached at survey time, and a cached stamp
    # compared with a cached stamp never sees a replacement.
    fs.invalidate_cache(file.path)
    info = fs.info(file.path)
    return (info.get("size"), _mtime(info), _first(info, "ETag", "etag"), _first(info, "VersionId", "generation"))


def _first(info: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` this filesystem's `info` gives (names differ between s3fs, gcsfs, adlfs), or None."""
    return next((info[key] for key in keys if info.get(key) is not None), None)


def _settle(fs: Any, files: list[Landed], seconds: float, skipped: list[Skipped]) -> tuple[
        list[Landed], list[Skipped]]:
    """Keep the files whose stamp holds still for `seconds`; a file untouched for that long already is not
    waited for (its modification time is the first look)."""
    now = time.time()
    young = [f for f in files if f.stamp[1] is None or now - f.stamp[1] < seconds]
    if not young:
        return files, skipped
    time.sleep(min(seconds, max(seconds - (now - f.stamp[1]) if f.stamp[1] is not None else seconds
                                for f in young)))
    ready = []
    for file in files:
        if file not in young:
            ready.append(file)
            continue
        try:
            stamp = look(fs, file)
        except OSError as exc:
            skipped.append(Skipped(file.name, f"vanished before it could be read: {exc}"))
            continue
        if stamp != file.stamp:
            skipped.append(Skipped(file.name, f"still being written: {file.stamp[0]} bytes, then {stamp[0]} "
                                              f"bytes {seconds:g} s later; collected once it holds still"))
        else:
            ready.append(replace(file, stamp=stamp))
    return ready, skipped


def fetch(fs: Any, file: Landed, dest: Path, piece: int = 1 << 20) -> tuple[str, int]:
    """Copy the file to `dest` a piece at a time (memory stays one piece, whatever its size) and return its
    sha256 and size; NotReady when it cannot be read or changed while it was read."""
    import hashlib

    digest, size = hashlib.sha256(), 0
    try:
        with _opened(fs, file) as source, open(dest, "wb") as out:
            while block := source.read(piece):
                digest.update(block)
                out.write(block)
                size += len(block)
        after = look(fs, file)
    except OSError as exc:
        raise NotReady(f"could not be read: {exc}") from exc
    if after != file.stamp or size != after[0]:
        raise NotReady(f"changed while it was read ({file.stamp[0]} bytes, then {after[0]}): read again next run")
    return digest.hexdigest(), size


def _opened(fs: Any, file: Landed) -> BinaryIO:
    if not isinstance(fs, LocalFileSystem):
        # Opened on a fresh HEAD, not a cached listing: s3fs then reads every range If-Match that ETag, so a
        # replacement while it is read fails the read (an OSError) instead of mixing old and new bytes.
        fs.invalidate_cache(file.path)
        return fs.open(file.path, "rb")
    # O_NOFOLLOW: a link swapped in since the survey is refused; O_NONBLOCK: a FIFO never hangs us.
    source = os.fdopen(os.open(file.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
    info = os.fstat(source.fileno())
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # a FIFO, or a hard link made since the survey
        source.close()
        raise NotReady(_hard_link(info.st_nlink) if stat.S_ISREG(info.st_mode) else "not a regular file: not read")
    return source


def remove(fs: Any, file: Landed) -> str | None:
    """Remove an ingested file; a reason instead when it must stay."""
    try:
        if look(fs, file) != file.stamp:
            return "left in the landing zone: it changed after it was read; the new content is collected next run"
        if isinstance(fs, LocalFileSystem):
            os.remove(file.path)
        else:  # rm_file: one key, never a glob (`rm` would expand `a[1].csv` or `*.csv` to other objects)
            fs.rm_file(file.path)
    except OSError as exc:
        return f"could not be removed from the landing zone ({exc}); the next run finds it already ingested"
    return None
