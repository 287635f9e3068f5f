"""ingest: one landed file -> its staged rows, its quarantine records and its ledger record, a chunk at a time.

Memory follows the chunk, not the file: rows are read, judged and written `chunk_rows` at a time, accepted rows
appended to the staged Parquet file and quarantined ones to the quarantine file, both temporary until the
whole file has been read. A fault found late (a malformed quote on the last line) still refuses the whole
file with nothing of it kept: the temporaries are dropped and the file becomes one quarantine record. Only
then are the files committed, in the order collect's exactly-once promise needs (see tasks/ingest/collect.py).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaizen.tasks.formats.reader import BadFile, ColumnsGrew, read_chunks
from kaizen.tasks.ingest import landing
from kaizen.tasks.ingest.dedup import FileKeys
from kaizen.tasks.ingest.ledger import FileRecord, Ledger
from kaizen.tasks.ingest.validate import ACCEPTED_COLUMNS, judge, mapping_remarks
from kaizen.tasks.workspace.faults import kill_point
from kaizen.tasks.workspace.files import commit_file, json_line, temporary
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.objects import md5_of

if TYPE_CHECKING:
    import pyarrow as pa

    from kaizen.tasks.workspace.settings import LimitsSettings

logger = logging.getLogger(__name__)

CHUNK_ROWS = 50_000  # rows judged and written at a time: ~50 MB of Python objects for short texts
SUMMARY_REASONS = 100  # reasons named in the record of rows not copied (each row's reason may differ)


@dataclass(frozen=True)
class FileOutcome:
    name: str
    sha256: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    note: str  # "ingested" or why nothing was ingested ("already ingested as ...")
    reasons: dict[str, int] = field(default_factory=dict)  # quarantine reason -> rows
    remarks: tuple[str, ...] = ()  # what else happened: a delimiter guessed, a file that could not be removed


@dataclass
class Tally:
    """What reading a file wrote to its temporaries."""
    accepted: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    mappings: dict[tuple[str, str], int] = field(default_factory=dict)
    remarks: tuple[str, ...] = ()


def archive_path(ws: Workspace, sha: str, name: str) -> Path:
    """Where a file's bytes are kept: its hash and a cleaned name, never a path a name could steer."""
    return ws.archive_dir / f"{sha[:16]}-{landing.safe_component(landing.printable(name))}"


def staged_path(ws: Workspace, sha: str) -> Path:
    """A file's accepted rows until they join a batch."""
    return ws.staged_dir / f"{sha[:16]}.parquet"


def quarantine_path(ws: Workspace, sha: str) -> Path:
    """A file's quarantined rows, each with its reason."""
    return ws.quarantine_dir / f"{sha[:16]}.jsonl"


def incoming_path(ws: Workspace) -> Path:
    """Where a landed file is copied before its hash, and so its archive name, is known."""
    ws.archive_dir.mkdir(parents=True, exist_ok=True)
    return ws.archive_dir / ".incoming.tmp"


def keys_path(ws: Workspace) -> Path:
    """The file's dedup keys while it is read: loop state, outside the data folders (one collect at a time)."""
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    return ws.state_dir / ".collect-keys.tmp"


def ingest_file(ws: Workspace, ledger: Ledger, name: str, data: bytes, chunk_rows: int = CHUNK_ROWS) -> FileOutcome:
    """Ingest one file's bytes (for callers holding them; collect streams a landed file with `ingest_copy`)."""
    incoming = incoming_path(ws)
    incoming.write_bytes(data)
    return ingest_copy(ws, ledger, name, incoming, hashlib.sha256(data).hexdigest(), len(data), chunk_rows)


def ingest_copy(ws: Workspace, ledger: Ledger, name: str, incoming: Path, sha: str, size: int,
                chunk_rows: int = CHUNK_ROWS) -> FileOutcome:
    """Ingest a landed file copied to `incoming` (the caller removes it from the landing zone afterwards);
    `incoming` becomes its archive copy."""
    name = landing.printable(name)
    known = ledger.file(sha)
    if known is not None:
        incoming.unlink()
        note = f"already ingested as {known.name}: nothing to do"
        ledger.record_delivery(sha, name, note)
        return FileOutcome(name, sha, 0, 0, 0, note)

    staged, quarantine = staged_path(ws, sha), quarantine_path(ws, sha)
    for folder in (ws.staged_dir, ws.quarantine_dir):
        folder.mkdir(parents=True, exist_ok=True)
    with FileKeys(keys_path(ws), size, pending=2 * chunk_rows) as seen:
        tally = read_rows(ws, ledger, name, sha, incoming, seen, chunk_rows)
        archived = archive_path(ws, sha, name)
        commit_file(incoming, archived)
        kill_point("collect:archived")
        if tally.accepted:
            commit_file(temporary(staged), staged)
            kill_point("collect:staged")
        if tally.quarantined:
            commit_file(temporary(quarantine), quarantine)
            kill_point("collect:quarantined")
        else:
            temporary(quarantine).unlink()
        staged_md5 = share(ws, archived, staged if tally.accepted else None,
                           quarantine if tally.quarantined else None)
        rows_in = tally.accepted + tally.quarantined
        record = FileRecord(sha, name, rows_in, tally.accepted, tally.quarantined, None, staged_md5)
        ledger.record_file(record, size=size, row_keys=seen.keys(), attach=seen.source())
    remarks = tally.remarks + mapping_remarks(tally.mappings)
    return FileOutcome(name, sha, rows_in, tally.accepted, tally.quarantined, "ingested", tally.reasons, remarks)


def share(ws: Workspace, archived: Path, staged: Path | None, quarantine: Path | None) -> str | None:
    """A shared loop's copies of what collect wrote, in its object store before the ledger commits the file: any
    machine forms the batch from the staged rows, and the archive and quarantine outlive this disk. The staged
    rows' md5, which the ledger keeps to verify a copy fetched elsewhere (None without a store or staged rows)."""
    store = ws.object_store
    if store is not None:
        for path in (archived, staged, quarantine):
            if path is not None:
                store.put(path, ws.object_key(path))
    kill_point("collect:shared")
    return md5_of(staged) if store is not None and staged is not None else None


def read_rows(ws: Workspace, ledger: Ledger, name: str, sha: str, path: Path, seen: FileKeys,
              chunk_rows: int) -> Tally:
    """Each row of a file accepted (to the staged temporary) or quarantined (to the quarantine temporary). A
    file that cannot be read is one quarantined unit whose reason is the error: whatever one file holds, it
    never stops the files after it nor the loop (its bytes stay in the archive, and the traceback in the log)."""
    read = read_or_reason(name, lambda columns: _read(ws, ledger, name, sha, path, seen, chunk_rows, columns))
    return read if isinstance(read, Tally) else _refused(ws, name, sha, seen, read)


def read_or_reason(name: str, read: Callable[[list[str] | None], Tally]) -> Tally | str:
    """`read(columns)` to its end, again knowing every column when a JSON Lines column turns up late; or, when
    the file cannot be read, the reason it is quarantined whole (for data and correction files alike)."""
    columns: list[str] | None = None
    while True:
        try:
            return read(columns)
        except ColumnsGrew as grew:  # a JSON Lines column first seen late: read again, knowing every column
            columns = grew.columns
            continue
        except BadFile as exc:
            return str(exc)
        except (sqlite3.Error, OSError):
            # The ledger's or our own disk's trouble, not the file's (its faults are BadFile): the run stops
            # and the file stays in the landing zone.
            raise
        except Exception as exc:  # a reader's bug or limit met by this file's bytes
            logger.exception("%s could not be read; quarantined whole", name)
            return f"unreadable file: {type(exc).__name__}: {str(exc)[:300]}"


def _read(ws: Workspace, ledger: Ledger, name: str, sha: str, path: Path, seen: FileKeys, chunk_rows: int,
          columns: list[str] | None) -> Tally:
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = ws.settings.data
    staged = temporary(staged_path(ws, sha))
    seen.clear()
    tally = Tally()
    writer: pq.ParquetWriter | None = None
    try:
        with QuarantineFile(temporary(quarantine_path(ws, sha)), name, sha, ws.settings.limits) as out:
            for chunk in read_chunks(path, name, (settings.text_column, settings.label_column), chunk_rows, columns,
                                     ws.settings.limits):
                verdict = judge(chunk, name, settings, ledger, seen)
                if len(verdict.accepted) + len(verdict.quarantined) != len(chunk.rows):  # every row gets a verdict
                    raise RuntimeError(f"{len(chunk.rows)} rows read, but {len(verdict.accepted)} accepted and "
                                       f"{len(verdict.quarantined)} quarantined")
                if len(verdict.accepted):
                    table = pa.Table.from_pandas(verdict.accepted, schema=accepted_schema(), preserve_index=False)
                    writer = writer or pq.ParquetWriter(staged, table.schema)
                    writer.write_table(table)
                out.add(verdict.quarantined, tally)
                tally.accepted += len(verdict.accepted)
                for pair, n in verdict.mappings.items():
                    tally.mappings[pair] = tally.mappings.get(pair, 0) + n
                tally.remarks = chunk.remarks
    finally:
        if writer is not None:
            writer.close()
    return tally


def accepted_schema() -> pa.Schema:
    """The staged rows' columns (validate.ACCEPTED_COLUMNS) with their types: stated, because a chunk whose rows
    name no capture would otherwise give `capture_id` arrow's null type, which the file's next chunk cannot join."""
    import pyarrow as pa

    return pa.schema([(c, pa.int64() if c == "source_row" else pa.string()) for c in ACCEPTED_COLUMNS])


def _refused(ws: Workspace, name: str, sha: str, seen: FileKeys, reason: str) -> Tally:
    """The whole file as one quarantined unit: no row of it is kept, whatever was read before the fault."""
    temporary(staged_path(ws, sha)).unlink(missing_ok=True)
    seen.clear()
    tally = Tally()
    with QuarantineFile(temporary(quarantine_path(ws, sha)), name, sha, ws.settings.limits) as out:
        out.add([{"row": 0, "reason": reason, "record": None}], tally)
    return tally


class QuarantineFile:
    """A file's quarantine records, proportional to what was landed rather than to what it unpacks to: each long
    text cell keeps a prefix (`limits.quarantine_text_chars`) with its length and sha256 (the archive holds the
    whole file), and past `limits.max_quarantine_bytes` rows are counted, not copied; one last record says how
    many and why. Every row still counts in the tally: rows in = accepted + quarantined."""

    def __init__(self, path: Path, name: str, sha: str, limits: LimitsSettings) -> None:
        self.path, self.name, self.sha = path, name, sha
        self.text_chars, self.max_bytes = limits.quarantine_text_chars, limits.max_quarantine_bytes
        self.written = 0
        self.first_not_copied: int | None = None
        self.not_copied: Counter[str] = Counter()

    def __enter__(self) -> QuarantineFile:
        self.out = open(self.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 (closed by __exit__)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.out:
            if self.not_copied and exc[0] is None:
                self.out.write(json_line(self._summary()) + "\n")

    def add(self, records: list[dict[str, Any]], tally: Tally) -> None:
        for q in records:
            tally.reasons[q["reason"]] = tally.reasons.get(q["reason"], 0) + 1
            if self.first_not_copied is None:
                line = json_line({"file": self.name, "sha256": self.sha, **self._cut(q)}) + "\n"
                size = len(line.encode("utf-8"))
                if self.written + size <= self.max_bytes:
                    self.out.write(line)
                    self.written += size
                    continue
                self.first_not_copied = q["row"]
            self.not_copied[q["reason"]] += 1
        tally.quarantined += len(records)

    def _cut(self, q: dict[str, Any]) -> dict[str, Any]:
        """The record with each text cell longer than the prefix cut to it; `truncated` gives each cut cell's
        length in characters and the sha256 of its UTF-8, to find the row in the archived file."""
        record = q["record"]
        long = [k for k, v in (record or {}).items() if isinstance(v, str) and len(v) > self.text_chars]
        if not long:
            return q
        truncated = {k: {"chars": len(record[k]), "sha256": hashlib.sha256(record[k].encode("utf-8")).hexdigest()}
                     for k in long}
        kept = {k: v[: self.text_chars] if k in long else v for k, v in record.items()}
        return {**q, "record": kept, "truncated": truncated}

    def _summary(self) -> dict[str, Any]:
        n = sum(self.not_copied.values())
        return {"file": self.name, "sha256": self.sha, "row": None, "record": None, "not_copied": n,
                "reason": f"{n} more quarantined rows (from row {self.first_not_copied}) counted, not copied: this "
                          f"quarantine file reached limits.max_quarantine_bytes ({self.max_bytes:,} bytes)",
                "reasons": dict(self.not_copied.most_common(SUMMARY_REASONS))}
