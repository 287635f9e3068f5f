"""dedup: the rows a file has accepted so far, by dedup key, for a file of any size.

A file is judged a chunk at a time, yet a row must be refused as a duplicate of any earlier row of the same
file, however far back. Held in Python, the keys of a 10M-row file would take gigabytes; they are kept in a
temporary SQLite file instead, next to the staged rows (memory: SQLite's page cache). The same table then
hands the ledger the file's keys in key order, which is the cheap order to insert them into its index.
A Bloom filter in memory answers "never seen" for almost every new key without asking SQLite.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

CACHE_KIB = 96 * 1024  # SQLite's page cache: bounded memory, and a few million keys' pages stay in it
PROBE = 500  # keys per lookup query (SQLite's default limit on variables is far above)
# The Bloom filter: a byte per slot, not a bit (setting bits of shared bytes cannot be vectorised without losing
# some), at most 64 MiB; 4 slots a key: with 10M keys, one new key in 20 is a false "maybe" that SQLite answers.
MAX_SLOTS = 1 << 26
# The keys as the ledger stores them, with their rows, labels and capture ids, in key order, over this file attached
# as `incoming`.
KEYS_QUERY = "SELECT lower(hex(key)) AS k, row AS r, label AS l, capture_id AS c FROM incoming.seen ORDER BY key"
HASHES = 4


class FileKeys:
    """Keys (SHA-1 hex digests, tasks/formats/text.py's text_key, stored as bytes) of the accepted rows of one file: first
    row, label and capture id (None for a row that labels no capture) of each. The database is a throwaway: no
    journal and no fsync (a kill loses it, and `recover` removes it)."""

    def __init__(self, path: Path, size: int = 0, pending: int = 400_000) -> None:
        """`size`: the file's bytes, which bound its rows: the filter gets a slot for two bytes, within limits.
        `pending`: keys held in memory before they go to SQLite in one sorted insert. Each insert touches most
        pages of a large table, so fewer, larger ones cost far less (400,000 keys: ~100 MB of Python objects)."""
        import numpy as np

        self.path = path
        self._slots = np.zeros(min(MAX_SLOTS, max(1 << 16, size // 2)), dtype=np.bool_)
        path.unlink(missing_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self.count = 0
        self._pending: dict[str, tuple[int, str, str | None]] = {}
        self._most = pending
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
        self._slots[:] = False
        self._pending.clear()
        self._db.execute("DROP TABLE IF EXISTS seen")
        self._db.execute("CREATE TABLE seen (key BLOB PRIMARY KEY, row INTEGER NOT NULL, label TEXT NOT NULL, "
                         "capture_id TEXT) WITHOUT ROWID")
        self.count = 0

    def lookup(self, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
        """The keys among `keys` accepted before, with the row and the label that first had each."""
        keys = list(keys)
        found = {key: self._pending[key][:2] for key in keys if key in self._pending}
        keys = [key for key in keys if key not in found]
        if not self.count or not keys:
            return found
        maybe = self._maybe(keys)
        # The digest, not its hex: half the pages to cache
        wanted = sorted({bytes.fromhex(key) for key, hit in zip(keys, maybe, strict=True) if hit})
        for start in range(0, len(wanted), PROBE):
            part = wanted[start: start + PROBE]
            marks = ",".join("?" * len(part))
            for key, row, label in self._db.execute(f"SELECT key, row, label FROM seen WHERE key IN ({marks})", part):
                found[key.hex()] = (row, label)
        return found

    def add(self, rows: list[tuple[str, int, str]] | list[tuple[str, int, str, str | None]]) -> None:
        """Keys newly accepted (key, row, label) or (key, row, label, capture id), none of them seen before."""
        if not rows:
            return
        self._slots[self._positions([key for key, *_ in rows])] = True
        self._pending.update((key, (row, label, capture[0] if capture else None)) for key, row, label, *capture in rows)
        self.count += len(rows)
        if len(self._pending) >= self._most:
            self.flush()

    def flush(self) -> None:
        """Keys held in memory written to SQLite, sorted: each B-tree page is visited once."""
        self._db.execute("BEGIN")
        self._db.executemany("INSERT INTO seen VALUES (?,?,?,?)",
                             sorted((bytes.fromhex(key), *kept) for key, kept in self._pending.items()))
        self._db.execute("COMMIT")
        self._pending.clear()

    def source(self) -> tuple[Path, str]:
        """This file and the query (over it attached as `incoming`) yielding every key, its row, label and capture id,
        in key order."""
        self.flush()
        return self.path, KEYS_QUERY

    def _positions(self, keys: list[str]) -> Any:
        """The filter's slots for each key: its SHA-1 digest is five independent 32-bit hashes already."""
        import numpy as np

        words = np.frombuffer(bytes.fromhex("".join(keys)), dtype=">u4").reshape(len(keys), 5)[:, :HASHES]
        return words.astype(np.uint64) % np.uint64(len(self._slots))

    def _maybe(self, keys: list[str]) -> Any:
        """False for a key certainly never added; True for one that may have been (rarely one that was not)."""
        return self._slots[self._positions(keys)].all(axis=1)

    def keys(self) -> Iterator[tuple[str, int, str, str | None]]:
        """Every key with its row, label and capture id, in key order, streamed."""
        self.flush()
        cursor = self._db.execute("SELECT key, row, label, capture_id FROM seen ORDER BY key")
        while rows := cursor.fetchmany(10_000):
            yield from ((key.hex(), *kept) for key, *kept in rows)
