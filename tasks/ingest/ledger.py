"""The ingestion ledger: which files were ingested (by content hash), which rows exist, which batches they formed.

A transactional database, because every state change of collect must be one atomic commit: a file is either
fully recorded (its rows' keys, its counts, its batch) or not at all, whatever kills the process. SQLite in
the workspace by default; PostgreSQL (storage.ledger) when machines share the workspace. The SQL below is the
same for both; tasks/workspace/databases.py adapts what differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kaizen.tasks.workspace import databases
from kaizen.tasks.workspace.faults import kill_point

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, ingested_at TEXT NOT NULL,
    rows_in INTEGER NOT NULL, rows_accepted INTEGER NOT NULL, rows_quarantined INTEGER NOT NULL,
    batch_id TEXT
);
CREATE TABLE IF NOT EXISTS row_keys (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL, row INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL, name TEXT NOT NULL, seen_at TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, rows INTEGER NOT NULL, files TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', run_id TEXT, model_version TEXT, decision TEXT
);
CREATE TABLE IF NOT EXISTS batch_attempts (
    batch_id TEXT NOT NULL, attempt INTEGER NOT NULL, at TEXT NOT NULL, outcome TEXT NOT NULL, error TEXT,
    PRIMARY KEY (batch_id, attempt)
);
CREATE TABLE IF NOT EXISTS data_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, batch_id TEXT NOT NULL, prepared_md5 TEXT NOT NULL, lock TEXT NOT NULL,
    made_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS correction_files (
    sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, ingested_at TEXT NOT NULL,
    rows_in INTEGER NOT NULL, rows_applied INTEGER NOT NULL, rows_quarantined INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, text TEXT NOT NULL, source_sha256 TEXT NOT NULL,
    old_label TEXT, new_label TEXT NOT NULL, file_sha256 TEXT NOT NULL, file_name TEXT NOT NULL,
    row INTEGER NOT NULL, at TEXT NOT NULL, applied_in TEXT
);
CREATE INDEX IF NOT EXISTS corrections_by_key ON corrections (key);
CREATE TABLE IF NOT EXISTS labeling_queue (
    capture_id TEXT PRIMARY KEY, queue TEXT NOT NULL, model_version TEXT, text_key TEXT NOT NULL,
    queued_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS labeling_queue_by_key ON labeling_queue (text_key);
CREATE TABLE IF NOT EXISTS best_models (
    batch_id TEXT PRIMARY KEY, version TEXT NOT NULL, accuracy DOUBLE PRECISION NOT NULL, rows INTEGER NOT NULL,
    recorded_at TEXT NOT NULL
);
"""
# Columns added after the first release: a ledger written before them gets them on open.
ADDED_COLUMNS = {
    "batches": {"trust": "TEXT NOT NULL DEFAULT 'trusted'", "trust_reason": "TEXT", "trust_by": "TEXT",
                "md5": "TEXT"},  # the accepted batch file's md5 (its md5 in dvc.lock), to verify a restored copy
    "files": {"staged_md5": "TEXT"},  # the staged rows' md5, to verify a copy fetched from the object store
    "row_keys": {"label": "TEXT",  # the label the row was accepted with (NULL: ingested before kaizen kept it)
                 "capture_id": "TEXT"},  # the captured text it labels, from a labeling queue (tasks/ingest/labeling.py)
}
TRUSTED, SUSPECT = "trusted", "suspect"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    name: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    batch_id: str | None
    staged_md5: str | None = None


FILE_COLUMNS = "sha256, name, rows_in, rows_accepted, rows_quarantined, batch_id, staged_md5"


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    created_at: str
    rows: int
    files: tuple[str, ...]
    status: str
    run_id: str | None
    model_version: str | None
    decision: str | None
    trust: str = TRUSTED  # suspect: its labels disagree with what the loop knows; never trained on or replayed
    trust_reason: str | None = None
    trust_by: str | None = None  # "loop", or the operator who overruled it
    md5: str | None = None  # of the accepted batch file; None for a batch formed before kaizen recorded it


class Ledger:
    def __init__(self, location: Path | str) -> None:
        """`location`: a SQLite file, or a postgresql:// URL (Workspace.ledger_db gives the workspace's)."""
        self._db = databases.connect(location)
        self._db.create(SCHEMA, rowid_tables=("files",))  # files are listed in the order they were ingested
        for table, columns in ADDED_COLUMNS.items():
            for name, declaration in columns.items():
                self._db.add_column(table, name, declaration)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[databases.SQLite | databases.Postgres]:
        """One atomic commit; writers are serialised (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock)."""
        with self._db.transaction() as db:
            yield db

    def read(self, sql: str, args: tuple = ()) -> list[tuple]:
        """The rows of a query, for the module that owns a table of this ledger (tasks/ingest/corrections.py,
        tasks/evaluation/best.py)."""
        return self._db.execute(sql, args).fetchall()

    # --- files and rows ---------------------------------------------------------------------------
    def file(self, sha256: str) -> FileRecord | None:
        row = self._db.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE sha256=?", (sha256,)).fetchone()
        return FileRecord(*row) if row else None

    def known_keys(self, keys: list[str]) -> dict[str, str]:
        """The keys among `keys` already ingested, with the file (sha256) that brought each."""
        return {key: sha for key, (sha, _) in self.key_origins(keys).items()}

    def key_origins(self, keys: list[str]) -> dict[str, tuple[str, str | None]]:
        """The keys among `keys` already ingested, with the file (sha256) that brought each and the label it has
        now: the latest correction's, else the one it was accepted with (None when the ledger predates labels)."""
        found: dict[str, tuple[str, str | None]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            query = ("SELECT r.key, r.sha256, COALESCE((SELECT c.new_label FROM corrections c WHERE c.key = r.key "
                     f"ORDER BY c.id DESC LIMIT 1), r.label) FROM row_keys r WHERE r.key IN ({','.join('?' * len(chunk))})")
            found.update((key, (sha, label)) for key, sha, label in self._db.execute(query, chunk))
        return found

    def record_file(self, record: FileRecord, size: int,
                    row_keys: Iterable[tuple[str, int] | tuple[str, int, str] | tuple[str, int, str, str | None]],
                    attach: tuple[Path, str] | None = None) -> None:
        """The file, its keys (streamed: a large file's do not fit in memory) and its delivery, in one commit.
        `row_keys`: (key, row), (key, row, label) or (key, row, label, capture_id). `attach`: a SQLite file and a
        query over it (as schema `incoming`) yielding the same keys (k), rows (r), labels (l) and capture ids (c); a
        SQLite ledger copies them SQLite to SQLite, ten million keys never crossing into Python one by one."""
        # (the SQLite ledger, the file, the query) when copied SQLite to SQLite, else None
        copied = (self._db, *attach) if attach is not None and isinstance(self._db, databases.SQLite) else None
        with ExitStack() as stack:
            if copied:
                ledger_db, attached_file, _ = copied
                stack.enter_context(ledger_db.attached(attached_file, "incoming"))
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO files (sha256, name, size, ingested_at, rows_in, rows_accepted, rows_quarantined, "
                    "staged_md5) VALUES (?,?,?,?,?,?,?,?)",
                    (record.sha256, record.name, size, now(), record.rows_in, record.rows_accepted,
                     record.rows_quarantined, record.staged_md5),
                )
                if copied:
                    db.execute("INSERT INTO row_keys (key, sha256, row, label, capture_id) SELECT k, ?, r, l, c "
                               f"FROM ({copied[2]})", (record.sha256,))
                else:
                    db.executemany("INSERT INTO row_keys (key, sha256, row, label, capture_id) VALUES (?,?,?,?,?)",
                                   ((key, record.sha256, row, *(list(rest) + [None, None])[:2])
                                    for key, row, *rest in row_keys))
                db.execute(
                    "INSERT INTO deliveries (sha256, name, seen_at, outcome) VALUES (?,?,?,?)",
                    (record.sha256, record.name, now(), "ingested"),
                )
                kill_point("ledger:file-uncommitted")  # tests: a kill here must leave no trace of the file

    def record_delivery(self, sha256: str, name: str, outcome: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO deliveries (sha256, name, seen_at, outcome) VALUES (?,?,?,?)",
                (sha256, name, now(), outcome),
            )

    def unbatched_files(self) -> list[FileRecord]:
        """Ingested files whose accepted rows wait in staging, oldest first."""
        rows = self._db.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE batch_id IS NULL AND rows_accepted > 0 "
                                "ORDER BY ingested_at, rowid").fetchall()
        return [FileRecord(*row) for row in rows]

    def files(self) -> list[FileRecord]:
        rows = self._db.execute(f"SELECT {FILE_COLUMNS} FROM files ORDER BY rowid").fetchall()
        return [FileRecord(*row) for row in rows]

    # --- batches ----------------------------------------------------------------------------------
    def next_batch_id(self) -> str:
        (count,) = self._db.execute("SELECT COUNT(*) FROM batches").fetchone()
        return f"batch-{count + 1:04d}"

    def record_batch(self, batch_id: str, rows: int, shas: list[str], md5: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO batches (batch_id, created_at, rows, files, md5) VALUES (?,?,?,?,?)",
                (batch_id, now(), rows, json.dumps(shas), md5),
            )
            db.executemany("UPDATE files SET batch_id=? WHERE sha256=?", [(batch_id, sha) for sha in shas])
            kill_point("ledger:batch-uncommitted")  # tests: a kill here must leave no trace of the batch

    def finish_batch(self, batch_id: str, *, run_id: str | None, model_version: str | None, decision: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET status='done', run_id=?, model_version=?, decision=? WHERE batch_id=?",
                (run_id, model_version, decision, batch_id),
            )

    def set_trust(self, batch_id: str, trust: str, reason: str, by: str, requeue: bool = False) -> None:
        """Record whether a batch's labels are trusted, why and by whom; `requeue` makes it pending again, so
        the loop learns from a batch an operator has cleared."""
        if trust not in (TRUSTED, SUSPECT):
            raise ValueError(f"trust must be {TRUSTED!r} or {SUSPECT!r}, got {trust!r}")
        with self.transaction() as db:
            changed = db.execute("UPDATE batches SET trust=?, trust_reason=?, trust_by=? WHERE batch_id=?",
                                 (trust, reason, by, batch_id)).rowcount
            if not changed:
                raise KeyError(f"no batch {batch_id!r} in the ledger")
            if requeue:
                db.execute("UPDATE batches SET status='pending', run_id=NULL, model_version=NULL, decision=NULL "
                           "WHERE batch_id=?", (batch_id,))

    # --- data versions (tasks/data/data_version.py) ---------------------------------------------------------
    def record_data_version(self, batch_id: str, prepared_md5: str, lock: str) -> None:
        """The dvc.lock a data version was built with: any machine restores the pipeline's state from the newest."""
        with self.transaction() as db:
            db.execute("INSERT INTO data_versions (batch_id, prepared_md5, lock, made_at) VALUES (?,?,?,?)",
                       (batch_id, prepared_md5, lock, now()))

    def latest_data_lock(self) -> str | None:
        row = self._db.execute("SELECT lock FROM data_versions ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def suspect_batches(self) -> list[str]:
        return [b.batch_id for b in self.batches() if b.trust == SUSPECT]

    # --- failed attempts (tasks/operate/failures.py) --------------------------------------------------------
    def record_attempt(self, batch_id: str, outcome: str, error: str | None = None) -> None:
        """An attempt at a batch that failed ("failed": counted, "unreachable": a server was down, not counted)
        or an operator's "retry" (counting starts over)."""
        with self.transaction() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(attempt), 0) FROM batch_attempts WHERE batch_id=?",
                                 (batch_id,)).fetchone()
            db.execute("INSERT INTO batch_attempts VALUES (?,?,?,?,?)", (batch_id, last + 1, now(), outcome, error))

    def failures_in_a_row(self, batch_id: str) -> tuple[int, str | None, str | None]:
        """(how many counted failures in a row ended with the same error as the last one, that error, when it
        happened), since the last retry; servers that were down interrupt nothing."""
        rows = self._db.execute("SELECT outcome, error, at FROM batch_attempts WHERE batch_id=? ORDER BY attempt DESC",
                                (batch_id,)).fetchall()
        same, error, at = 0, None, None
        for outcome, err, when in rows:
            if outcome == "retry":
                break
            if outcome != "failed":
                continue
            if error is None:
                error, at = err, when
            if err != error:
                break
            same += 1
        return same, error, at

    def set_status(self, batch_id: str, status: str, decision: str | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE batches SET status=?, decision=? WHERE batch_id=?", (status, decision, batch_id))

    def batches(self, status: str | None = None) -> list[BatchRecord]:
        query = ("SELECT batch_id, created_at, rows, files, status, run_id, model_version, decision, trust, "
                 "trust_reason, trust_by, md5 FROM batches")
        args: tuple[str, ...] = ()
        if status:
            query, args = query + " WHERE status=?", (status,)
        rows = self._db.execute(query + " ORDER BY batch_id", args).fetchall()
        return [BatchRecord(r[0], r[1], r[2], tuple(json.loads(r[3])), *r[4:]) for r in rows]
