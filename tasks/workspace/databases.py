"""The databases behind kaizen's own state (the ingestion ledger): SQLite inside the workspace by default, or
PostgreSQL when several machines share the workspace (SQLite's locking is not safe on a network file system).

The SQL is written once, in the common dialect with `?` placeholders, where it is used (tasks/ingest/ledger.py).
This module is the small adapter for what differs: connecting, placeholders, DDL types, how a transaction
takes the write lock (`BEGIN IMMEDIATE` vs an advisory transaction lock), adding a column, SQLite's implicit
`rowid`, and a lock held across processes and machines (`flock` vs a PostgreSQL advisory lock).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

POSTGRES = ("postgresql://", "postgres://")


def is_postgres(location: Path | str) -> bool:
    return str(location).startswith(POSTGRES)


def lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for a lock's name."""
    return int.from_bytes(hashlib.sha256(f"kaizen:{name}".encode()).digest()[:8], "big", signed=True)


class SQLite:
    """The embedded default: one file, WAL, every commit durable; `BEGIN IMMEDIATE` serialises writers."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, args)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def create(self, schema: str, rowid_tables: Sequence[str] = ()) -> None:
        self._db.executescript(schema)  # every SQLite table has its rowid already

    def add_column(self, table: str, column: str, declaration: str) -> None:
        """An additive migration: the column is added to a ledger made before it existed."""
        if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
            self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    @contextmanager
    def transaction(self) -> Iterator[SQLite]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def attached(self, path: Path, schema: str) -> Iterator[SQLite]:
        """Another SQLite file readable as `schema` (outside a transaction: SQLite refuses ATTACH inside one)."""
        self._db.execute("ATTACH DATABASE ? AS " + schema, (str(path),))
        try:
            yield self
        finally:
            self._db.execute("DETACH DATABASE " + schema)

    def close(self) -> None:
        self._db.close()


class Postgres:
    """A shared server: placeholders and DDL translated; a transaction takes an advisory transaction lock
    first, so writers are serialised as under SQLite's `BEGIN IMMEDIATE`. The tables live in a schema of their
    own, so one database can serve MLflow and kaizen. The URL holds no password: libpq reads PGPASSWORD (or
    ~/.pgpass) from the environment."""

    def __init__(self, url: str, schema: str = "kaizen") -> None:
        import psycopg

        self._db = psycopg.connect(url, autocommit=True)
        self._schema = schema
        self._db.execute(f"SET search_path TO {schema}")
        self._write_lock = lock_key(f"{schema}:write")

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._db.execute(self._sql(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._db.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)

    def create(self, schema: str, rowid_tables: Sequence[str] = ()) -> None:
        """The schema, with SQLite's implicit `rowid` (insertion order) made a column of `rowid_tables`.
        In one locked transaction: concurrent `CREATE TABLE IF NOT EXISTS` can clash in PostgreSQL."""
        ddl = schema.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        with self.transaction():
            self._db.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
            for statement in filter(str.strip, ddl.split(";")):
                self._db.execute(statement)
            for table in rowid_tables:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS rowid BIGSERIAL")

    def add_column(self, table: str, column: str, declaration: str) -> None:
        self._db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {declaration}")

    @contextmanager
    def transaction(self) -> Iterator[Postgres]:
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_lock,))
            yield self

    def close(self) -> None:
        self._db.close()


def connect(location: Path | str) -> SQLite | Postgres:
    """A SQLite file (a path) or a PostgreSQL database (a postgresql:// URL)."""
    return Postgres(str(location)) if is_postgres(location) else SQLite(Path(location))


@contextmanager
def advisory_lock(url: str, name: str, wait: bool, busy: str) -> Iterator[bool]:
    """Hold the PostgreSQL advisory lock `name` on its own connection: every process on every machine that
    uses this database sees it. Waits for the holder, or raises files.Busy(`busy`) when `wait` is False.
    Yields whether it waited. The server drops the lock with the connection, so a killed holder leaves none."""
    import psycopg

    from kaizen.tasks.workspace.files import Busy

    key = lock_key(name)
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        assert row is not None, "a SELECT of one function call returns one row"
        (got,) = row
        if not got:
            if not wait:
                raise Busy(busy)
            db.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield not got
        finally:
            db.execute("SELECT pg_advisory_unlock(%s)", (key,))
