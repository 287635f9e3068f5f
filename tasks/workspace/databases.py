"""The databases behind kaizen's own state (the ingestion ledger): SQLite inside the workspace by default, or
PostgreSQL when several machines share the workspace (SQLite's locking is not safe on a network file system).

The SQL is written once, in the common dialect with `?` placeholders, where it is used (tasks/ingest/ledger.py).
This module is the small adapter for what differs: connecting, placeholders, DDL types, how a transaction
takes the write lock (`BEGIN IMMEDIATE` vs an advisory transaction lock), adding a column, SQLite's implicit
`rowid`, and a lock held across processes and machines (`flock` vs a PostgreSQL advisory lock).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

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


# An advisory lock's connection sits idle for as long as its holder works (minutes to an hour), and each of its
# two ends needs settings of its own. LOCK_CONNECT is libpq's, for this end's socket: with keepalives and
# TCP_USER_TIMEOUT (ms) a heartbeat to a server that vanished fails in about a minute instead of hanging.
# LOCK_SESSION is the server's, for its end (libpq's options do not reach it): with them the server notices a
# holder whose host died without a word (no FIN) in about a minute, 30 s idle then 3 probes 10 s apart, and
# drops the lock, where the kernel's defaults take two hours. The timeouts that end an idle session, or a long
# wait for the lock, are off for this session only: ending it would silently drop the lock.
LOCK_CONNECT: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                                "keepalives_count": 3, "tcp_user_timeout": 60_000}
LOCK_SESSION: dict[str, str] = {
    "tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000", "idle_session_timeout": "0", "idle_in_transaction_session_timeout": "0",
    "statement_timeout": "0", "lock_timeout": "0"}
_HELD = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
         " AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1")


class LockLost(RuntimeError):
    """The server stopped holding an advisory lock while its holder worked: another process may have taken it
    and run alongside."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"the PostgreSQL advisory lock {name!r} was lost while held: {reason}; another process "
                         "may have taken it and run at the same time")
        self.name, self.reason = name, reason


def lock_connection(url: str) -> psycopg.Connection:
    """An autocommit connection with LOCK_CONNECT and LOCK_SESSION, for a lock held on it for long."""
    import psycopg

    db = psycopg.connect(url, autocommit=True, **LOCK_CONNECT)
    try:
        for setting, value in LOCK_SESSION.items():  # set_config: SET takes no bound parameters
            try:
                db.execute("SELECT set_config(%s, %s, false)", (setting, value))
            except psycopg.errors.UndefinedObject:  # idle_session_timeout is PostgreSQL 14's: none to turn off
                logger.info("PostgreSQL %s has no setting %s: left as it is", db.info.server_version, setting)
    except BaseException:
        db.close()
        raise
    return db


class _Heartbeat(threading.Thread):
    """Every `beat` seconds, on the lock's connection: the server must still list the lock as this session's.
    The query also keeps the session from looking idle to poolers, firewalls and NAT tables that drop idle
    connections, and to an idle_session_timeout this session could not turn off (before PostgreSQL 14)."""

    def __init__(self, db: psycopg.Connection, key: int, name: str, beat: float) -> None:
        super().__init__(name=f"kaizen-lock-{name}", daemon=True)
        self.db, self.key, self.lock_name, self.beat = db, key, name, beat
        # psycopg serialises a connection's queries itself; this makes one-query-at-a-time ours to rely on.
        self.guard = threading.Lock()
        self.stopping, self.lost, self.reason = threading.Event(), threading.Event(), ""

    def run(self) -> None:
        while not self.stopping.wait(self.beat) and self.check():
            pass

    def check(self) -> bool:
        """Whether the lock is still held; if not (or if that cannot be known), why is recorded and logged."""
        try:
            with self.guard:
                row = self.db.execute(_HELD, ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF)).fetchone()
        except Exception as error:  # unconfirmed is lost: the holder can no longer vouch for the lock
            return self.lose(f"checking it failed ({type(error).__name__}: {error})")
        return bool(row and row[0]) or self.lose("the server no longer lists it as held by this session")

    def lose(self, reason: str) -> bool:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
            logger.error("The PostgreSQL advisory lock %r is lost: %s", self.lock_name, reason)
        return False

    def release(self) -> None:
        """Stop beating, then unlock, unless the lock is already known lost: its unlock reports whether the
        server still held it, the last check. A failure is recorded as a loss, never raised."""
        self.stopping.set()
        self.join()  # the connection is ours alone again (a beat in flight ends within the network timeouts)
        if self.lost.is_set():
            return
        try:
            with self.guard:
                row = self.db.execute("SELECT pg_advisory_unlock(%s)", (self.key,)).fetchone()
        except Exception as error:
            self.lose(f"unlocking it failed ({type(error).__name__}: {error})")
            return
        if not (row and row[0]):
            self.lose("the server no longer held it when it was released")


@contextmanager
def advisory_lock(url: str, name: str, wait: bool, busy: str, *, beat: float = 20.0) -> Iterator[bool]:
    """Hold the PostgreSQL advisory lock `name` on its own connection: every process on every machine that
    uses this database sees it. Waits for the holder, or raises files.Busy(`busy`) when `wait` is False.
    Yields whether it waited. The server drops the lock with the connection, so a killed holder leaves none,
    and a holder whose host died is noticed within about a minute (LOCK_CONNECT, LOCK_SESSION).

    The lock is a session lock, so anything that ends the session drops it without a word to the holder. A
    heartbeat thread checks every `beat` seconds that the server still lists it; once it is lost, the error
    is logged at once and LockLost is raised when the block ends (the work in it cannot be stopped safely
    midway), unless another exception is already on its way out: that one propagates, the loss logged."""
    from kaizen.tasks.workspace.files import Busy

    key = lock_key(name)
    db = lock_connection(url)
    try:
        row = db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        assert row is not None, "a SELECT of one function call returns one row"
        (got,) = row
        if not got:
            if not wait:
                raise Busy(busy)
            db.execute("SELECT pg_advisory_lock(%s)", (key,))
        heartbeat = _Heartbeat(db, key, name, beat)
        heartbeat.start()
        try:
            yield not got
        except BaseException:
            heartbeat.release()  # a loss is logged; the error under way is the one to raise
            raise
        heartbeat.release()
        if heartbeat.lost.is_set():
            raise LockLost(name, heartbeat.reason)
    finally:
        db.close()
