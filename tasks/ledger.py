"""The ingestion ledger: which files were ingested (by content hash), which rows exist, which batches they formed.

SQLite, because every state change of collect must be one atomic commit: a file is either fully recorded
(its rows' keys, its counts, its batch) or not at all, whatever kills the process.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kaizen.tasks.faults import kill_point

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
"""


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


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- files and rows ---------------------------------------------------------------------------
    def file(self, sha256: str) -> FileRecord | None:
        row = self._db.execute(
            "SELECT sha256, name, rows_in, rows_accepted, rows_quarantined, batch_id FROM files WHERE sha256=?",
            (sha256,),
        ).fetchone()
        return FileRecord(*row) if row else None

    def known_keys(self, keys: list[str]) -> dict[str, str]:
        """The keys among `keys` already ingested, with the file (sha256) that brought each."""
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, sha in self._db.execute(f"SELECT key, sha256 FROM row_keys WHERE key IN ({marks})", chunk):
                found[key] = sha
        return found

    def record_file(self, record: FileRecord, size: int, row_keys: list[tuple[str, int]]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files VALUES (?,?,?,?,?,?,?,NULL)",
                (record.sha256, record.name, size, now(), record.rows_in, record.rows_accepted,
                 record.rows_quarantined),
            )
            db.executemany(
                "INSERT INTO row_keys VALUES (?,?,?)", [(key, record.sha256, row) for key, row in row_keys]
            )
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
        rows = self._db.execute(
            "SELECT sha256, name, rows_in, rows_accepted, rows_quarantined, batch_id FROM files "
            "WHERE batch_id IS NULL AND rows_accepted > 0 ORDER BY ingested_at, rowid"
        ).fetchall()
        return [FileRecord(*row) for row in rows]

    def files(self) -> list[FileRecord]:
        rows = self._db.execute(
            "SELECT sha256, name, rows_in, rows_accepted, rows_quarantined, batch_id FROM files ORDER BY rowid"
        ).fetchall()
        return [FileRecord(*row) for row in rows]

    # --- batches ----------------------------------------------------------------------------------
    def next_batch_id(self) -> str:
        (count,) = self._db.execute("SELECT COUNT(*) FROM batches").fetchone()
        return f"batch-{count + 1:04d}"

    def record_batch(self, batch_id: str, rows: int, shas: list[str]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO batches (batch_id, created_at, rows, files) VALUES (?,?,?,?)",
                (batch_id, now(), rows, json.dumps(shas)),
            )
            db.executemany("UPDATE files SET batch_id=? WHERE sha256=?", [(batch_id, sha) for sha in shas])
            kill_point("ledger:batch-uncommitted")  # tests: a kill here must leave no trace of the batch

    def finish_batch(self, batch_id: str, *, run_id: str | None, model_version: str | None, decision: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET status='done', run_id=?, model_version=?, decision=? WHERE batch_id=?",
                (run_id, model_version, decision, batch_id),
            )

    # --- failed attempts (tasks/failures.py) --------------------------------------------------------
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
        query = "SELECT batch_id, created_at, rows, files, status, run_id, model_version, decision FROM batches"
        args: tuple[str, ...] = ()
        if status:
            query, args = query + " WHERE status=?", (status,)
        rows = self._db.execute(query + " ORDER BY batch_id", args).fetchall()
        return [BatchRecord(r[0], r[1], r[2], tuple(json.loads(r[3])), *r[4:]) for r in rows]
