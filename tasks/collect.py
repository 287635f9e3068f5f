"""collect: ingest labeled files from the landing zone exactly once, quarantining bad rows with a reason.

Per file, in this order, so that a crash at any point loses nothing and ingests nothing twice:
archive the raw bytes, write accepted rows to staging and rejected rows to quarantine (each atomically),
commit the file to the ledger (keyed by content hash), and only then remove it from the landing zone.
Staged rows become a batch once at least `min_batch_rows` have arrived.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from tasks.ledger import FileRecord, Ledger
from tasks.preprocess import text_key
from tasks.settings import DataSettings
from tasks.workspace import Workspace

READERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class FileOutcome:
    name: str
    sha256: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    note: str  # "ingested" or why nothing was ingested ("already ingested as ...")
    reasons: dict[str, int] = field(default_factory=dict)  # quarantine reason -> rows


@dataclass(frozen=True)
class CollectResult:
    files: list[FileOutcome]
    new_batches: list[str]

    @property
    def rows_accepted(self) -> int:
        return sum(f.rows_accepted for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)


@dataclass(frozen=True)
class Verdict:
    accepted: pd.DataFrame  # text, label, source, source_row
    quarantined: list[dict[str, Any]]  # row, reason, record
    keys: list[tuple[str, int]]  # dedup key and row of every accepted row


def read_records(data: bytes, name: str) -> pd.DataFrame:
    """Parse a landed file into raw records (no type coercion); raises ValueError when it cannot be read."""
    kind = READERS.get(PurePosixPath(name).suffix.lower())
    if kind is None:
        raise ValueError(f"unsupported file type {PurePosixPath(name).suffix!r} (use CSV, JSON Lines or Parquet)")
    try:
        if kind == "csv":
            sep = "\t" if name.lower().endswith(".tsv") else ","
            return pd.read_csv(io.BytesIO(data), sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        if kind == "jsonl":
            text = data.decode("utf-8-sig")
            return pd.read_json(io.StringIO(text), lines=True, dtype=False, convert_dates=False)
        return pd.read_parquet(io.BytesIO(data))
    except (ValueError, UnicodeDecodeError, OSError, AttributeError, TypeError, pd.errors.ParserError) as exc:
        # AttributeError: pandas' JSON Lines reader on a line that is an array or a scalar after an object
        raise ValueError(f"unreadable {kind} file: {exc}") from exc


def _plain(value: Any) -> Any:
    """A JSON-safe rendering of a raw cell, for the quarantine file."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def quarantine_rows(records: pd.DataFrame, name: str, settings: DataSettings, ledger: Ledger) -> Verdict:
    """Split raw records into accepted rows and quarantined rows, each rejection with its reason."""
    missing = [c for c in (settings.text_column, settings.label_column) if c not in records.columns]
    originals = records.to_dict(orient="records")  # checked as read: _plain would turn a list into its repr
    raw = [{k: _plain(v) for k, v in rec.items()} for rec in originals]
    if missing:
        reason = f"missing column(s) {missing}; the file has {list(records.columns)}"
        return Verdict(pd.DataFrame(), [{"row": i + 1, "reason": reason, "record": r} for i, r in enumerate(raw)], [])

    labels = set(settings.labels)
    candidates: list[tuple[int, str, str, str]] = []  # row, text, label, key
    quarantined: list[dict[str, Any]] = []
    for i, rec in enumerate(originals):
        text, label, row = rec[settings.text_column], rec[settings.label_column], i + 1
        reason = None
        if not isinstance(text, str):
            reason = "missing text" if _plain(text) is None else f"text is not a string ({type(text).__name__})"
        elif not text.strip():
            reason = "empty text"
        elif len(text) > settings.max_text_chars:
            reason = f"text longer than {settings.max_text_chars} characters ({len(text)})"
        elif _plain(label) is None or (isinstance(label, str) and not label):
            reason = "missing label"
        elif not isinstance(label, str) or label not in labels:
            reason = f"unknown label {label!r} (expected one of {sorted(labels)})"
        if reason:
            quarantined.append({"row": row, "reason": reason, "record": raw[i]})
        else:
            candidates.append((row, text, label, text_key(text)))

    already = ledger.known_keys([key for *_, key in candidates])
    seen: dict[str, int] = {}
    accepted, keys = [], []
    for row, text, label, key in candidates:
        if key in seen:
            reason = f"duplicate of row {seen[key]} of this file"
        elif key in already:
            origin = ledger.file(already[key])
            reason = f"duplicate of a row already ingested from {origin.name if origin else already[key]}"
        else:
            seen[key] = row
            accepted.append({"text": text, "label": label, "source": name, "source_row": row})
            keys.append((key, row))
            continue
        quarantined.append({"row": row, "reason": reason, "record": raw[row - 1]})
    quarantined.sort(key=lambda q: q["row"])
    return Verdict(pd.DataFrame(accepted, columns=["text", "label", "source", "source_row"]), quarantined, keys)


def write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, then rename: readers and restarts see the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def ingest_file(ws: Workspace, ledger: Ledger, name: str, data: bytes) -> FileOutcome:
    """Ingest one landed file's bytes (the caller removes it from the landing zone afterwards)."""
    sha = hashlib.sha256(data).hexdigest()
    known = ledger.file(sha)
    if known is not None:
        note = f"already ingested as {known.name}: nothing to do"
        ledger.record_delivery(sha, name, note)
        return FileOutcome(name, sha, 0, 0, 0, note)

    try:
        verdict = quarantine_rows(read_records(data, name), name, ws.settings.data, ledger)
    except ValueError as exc:  # the whole file is one quarantined unit; its bytes stay in the archive
        verdict = Verdict(pd.DataFrame(), [{"row": 0, "reason": str(exc), "record": None}], [])

    stem = sha[:16]
    write_atomically(ws.archive_dir / f"{stem}-{PurePosixPath(name).name}", data)
    if len(verdict.accepted):
        write_atomically(ws.staged_dir / f"{stem}.parquet", parquet_bytes(verdict.accepted))
    if verdict.quarantined:
        lines = [json.dumps({"file": name, "sha256": sha, **q}, ensure_ascii=False) for q in verdict.quarantined]
        write_atomically(ws.quarantine_dir / f"{stem}.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))

    rows_in = len(verdict.accepted) + len(verdict.quarantined)
    record = FileRecord(sha, name, rows_in, len(verdict.accepted), len(verdict.quarantined), None)
    ledger.record_file(record, size=len(data), row_keys=verdict.keys)
    reasons: dict[str, int] = {}
    for q in verdict.quarantined:
        reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
    return FileOutcome(name, sha, rows_in, record.rows_accepted, record.rows_quarantined, "ingested", reasons)


def landed_files(ws: Workspace) -> list[str]:
    """Files waiting in the landing zone, oldest name first; hidden and partial files are not ready yet."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(ws.landing)
    if not fs.exists(root):
        return []
    names = []
    for entry in fs.ls(root, detail=True):
        base = PurePosixPath(entry["name"]).name
        if entry["type"] == "file" and not base.startswith(".") and not base.endswith((".tmp", ".part")):
            names.append(entry["name"])
    return sorted(names)


def form_batches(ws: Workspace, ledger: Ledger) -> list[str]:
    """Turn staged rows into batches of at least `min_batch_rows`; fewer wait for more to arrive."""
    formed: list[str] = []
    group: list[FileRecord] = []
    for record in ledger.unbatched_files():
        group.append(record)
        if sum(r.rows_accepted for r in group) < ws.settings.data.min_batch_rows:
            continue
        batch_id = ledger.next_batch_id()
        frames = [pd.read_parquet(ws.staged_dir / f"{r.sha256[:16]}.parquet") for r in group]
        batch = pd.concat(frames, ignore_index=True)
        write_atomically(ws.batch_file(batch_id), parquet_bytes(batch))
        ledger.record_batch(batch_id, len(batch), [r.sha256 for r in group])
        for r in group:
            (ws.staged_dir / f"{r.sha256[:16]}.parquet").unlink(missing_ok=True)
        formed.append(batch_id)
        group = []
    return formed


def collect(ws: Workspace) -> CollectResult:
    """Ingest every file waiting in the landing zone, then form the batches that have enough rows."""
    import fsspec

    fs, _ = fsspec.core.url_to_fs(ws.landing)
    ledger = Ledger(ws.ledger_db)
    try:
        outcomes = []
        for path in landed_files(ws):
            outcomes.append(ingest_file(ws, ledger, PurePosixPath(path).name, fs.cat_file(path)))
            fs.rm(path)  # only now: its rows are durably in staging, quarantine and the ledger
        return CollectResult(outcomes, form_batches(ws, ledger))
    finally:
        ledger.close()


def next_batch(ws: Workspace) -> tuple[str, list[str]] | None:
    """The oldest batch not yet learned from, with every batch up to it; None when all are done."""
    ledger = Ledger(ws.ledger_db)
    try:
        batches = [b.batch_id for b in ledger.batches()]
        pending = [b.batch_id for b in ledger.batches(status="pending")]
    finally:
        ledger.close()
    if not pending:
        return None
    return pending[0], batches[: batches.index(pending[0]) + 1]
