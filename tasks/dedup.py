"""dedup: the rows a file has accepted so far, by dedup key, for a file of any size.

A file is judged a chunk at a time, yet a row must be refused as a duplicate of any earlier row of the same
file, however far back. Held in Python, the keys of a 10M-row file would take gigabytes; they are kept in a
temporary SQLite file instead, next to the staged rows (memory: SQLite's page cache). The same table then
hands the ledger the file's keys in key order, which is the cheap order to insert them into its index.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

CACHE_KIB = 96 * 1024  # SQLite's page cache: bounded memory, and a few million keys' pages stay in it
PROBE = 500  # keys per lookup query (SQLite's default limit on variables is far above)


class FileKeys:
    """Keys (hex digests, stored as bytes) of the accepted rows of one file: first row and label of each. The database is a throwaway: no
    journal and no fsync (a kill loses it, and `recover` removes it with the other `.tmp` files)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self.count = 0
        self.clear()

    def __enter__(self) -> FileKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Forget every key: the file is read again from its start, or refused whole."""
        self._db.execute("DROP TABLE IF EXISTS seen")
        self._db.execute("CREATE TABLE seen (key BLOB PRIMARY KEY, row INTEGER NOT NULL, label TEXT NOT NULL) "
                         "WITHOUT ROWID")
        self.count = 0

    def lookup(self, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
        """The keys among `keys` accepted before, with the row and the label that first had each."""
        wanted = sorted({bytes.fromhex(key) for key in keys})  # the digest, not its hex: half the pages to cache
        found: dict[str, tuple[int, str]] = {}
        if not self.count:
            return found
        for start in range(0, len(wanted), PROBE):
            part = wanted[start: start + PROBE]
            marks = ",".join("?" * len(part))
            for key, row, label in self._db.execute(f"SELECT key, row, label FROM seen WHERE key IN ({marks})", part):
                found[key.hex()] = (row, label)
        return found

    def add(self, rows: list[tuple[str, int, str]]) -> None:
        """Keys newly accepted (key, row, label), none of them seen before."""
        self._db.execute("BEGIN")
        self._db.executemany("INSERT INTO seen VALUES (?,?,?)",  # sorted: each B-tree page is visited once
                             sorted((bytes.fromhex(key), row, label) for key, row, label in rows))
        self._db.execute("COMMIT")
        self.count += len(rows)

    def keys(self) -> Iterator[tuple[str, int]]:
        """Every key with its row, in key order, streamed."""
        cursor = self._db.execute("SELECT key, row FROM seen ORDER BY key")
        while rows := cursor.fetchmany(10_000):
            yield from ((key.hex(), row) for key, row in rows)
