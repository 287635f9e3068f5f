"""The PostgreSQL advisory lock that holds a shared workspace (databases.advisory_lock), on a real server: it
survives the idle periods of its holder, a dead holder frees it within seconds, and a lock the server dropped
under its holder is noticed by the heartbeat and reported as LockLost."""

from __future__ import annotations

import logging
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from kaizen.tasks.workspace import databases
from kaizen.tasks.workspace.databases import LOCK_SESSION, LockLost, advisory_lock, lock_connection, lock_key
from kaizen.tasks.workspace.files import Busy
from tests.support.processes import wait_until
from tests.support.workspaces import REPO

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def database(postgres: dict) -> tuple[str, str]:
    """A fresh database: (its name, its URL)."""
    name = f"locks_{uuid.uuid4().hex[:10]}"
    return name, postgres["create"](name)


@pytest.fixture
def lock_name() -> str:
    return f"loop-{uuid.uuid4().hex[:8]}"


def holders(db: psycopg.Connection, name: str) -> list[tuple[int, int]]:
    """(backend pid, client port) of each session that holds the advisory lock `name`."""
    key = lock_key(name)
    return db.execute(
        "SELECT l.pid, a.client_port FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype ="
        " 'advisory' AND l.granted AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND"
        " l.objsubid = 1", ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchall()


def try_lock(db: psycopg.Connection, name: str) -> bool:
    """Whether `db` can take the lock now; if it can, it lets it go again at once."""
    row = db.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(name),)).fetchone()
    assert row is not None, "a SELECT of one function call returns one row"
    (got,) = row
    if got:
        db.execute("SELECT pg_advisory_unlock(%s)", (lock_key(name),))
    return got


def test_an_idle_holder_keeps_the_lock_through_the_servers_idle_session_timeout(postgres, database,
                                                                                 lock_name) -> None:
    name, url = database
    with postgres["connect"]() as admin:
        admin.execute(f"ALTER DATABASE {name} SET idle_session_timeout = '1s'")
    # The default beat (20 s) never runs here: the lock's session itself must have turned the timeout off.
    with postgres["connect"](name) as plain, postgres["connect"](name) as other:
        other.execute("SET idle_session_timeout = 0")
        with advisory_lock(url, lock_name, wait=False, busy="held") as waited:
            assert waited is False
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                assert not try_lock(other, lock_name), "the idle holder's lock was dropped"
                time.sleep(0.25)
        # The database's timeout is real: a session that did not turn it off was ended while the lock was held.
        with pytest.raises(psycopg.OperationalError):
            plain.execute("SELECT 1")
        assert try_lock(other, lock_name)


def keepalive_timer(local_port: int, peer_port: int) -> float:
    """Seconds until the next keepalive probe of the TCP connection local_port -> peer_port, as `ss` shows it
    once the connection is quiet (just after a reply, the timer is the retransmission one until the ACK)."""

    def timer() -> float | None:
        out = subprocess.run(["ss", "-tnoH", "state", "established",
                              f"( sport = :{local_port} and dport = :{peer_port} )"],
                             capture_output=True, text=True, check=True).stdout
        found = re.search(r"timer:\(keepalive,([\d.]+)(ms|sec|min)", out)
        return float(found[1]) * {"ms": 0.001, "sec": 1, "min": 60}[found[2]] if found else None

    seconds = wait_until(f"a keepalive timer on {local_port} -> {peer_port}", timer, 3, every=0.05)
    assert seconds is not None, "wait_until returns a true value"
    return seconds


def test_the_locks_connection_has_keepalives_at_both_ends(postgres, database, lock_name) -> None:
    name, url = database
    with lock_connection(url) as db:  # the server applied each of the session's settings
        settings = dict(db.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                                   (list(LOCK_SESSION),)).fetchall())
        assert settings == LOCK_SESSION
        assert settings["tcp_keepalives_idle"] == "30"  # seconds: the dead holder is noticed in about a minute
    if not shutil.which("ss"):
        pytest.skip("`ss` (iproute2) is not installed: the sockets of the holder cannot be inspected")
    server_port = int(url.rsplit(":", 1)[1].split("/")[0])
    with advisory_lock(url, lock_name, wait=False, busy="held"), postgres["connect"](name) as db:
        [(_, client_port)] = holders(db, lock_name)
        # Both ends probe after 30 s of silence; the kernel's default is 2 h (the server's end: "119min").
        assert keepalive_timer(server_port, client_port) <= 30
        assert keepalive_timer(client_port, server_port) <= 30


def test_the_heartbeat_tells_a_held_lock_from_one_no_longer_held(postgres, database, lock_name, caplog) -> None:
    name, url = database
    caplog.set_level(logging.ERROR, logger="kaizen.tasks.workspace.databases")
    # Keys of both signs: pg_locks splits the 64-bit key into two unsigned 32-bit halves.
    names = [f"{lock_name}-{i}" for i in range(64)]
    for each in (next(n for n in names if lock_key(n) < 0), next(n for n in names if lock_key(n) >= 0)):
        with lock_connection(url) as db, postgres["connect"](name) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (lock_key(each) ^ 1,))  # a neighbour's key: not ours
            db.execute("SELECT pg_advisory_lock(%s)", (lock_key(each),))
            heartbeat = databases._Heartbeat(db, lock_key(each), each, beat=1)
            assert heartbeat.check()
            db.execute("SELECT pg_advisory_unlock(%s)", (lock_key(each),))
            assert not heartbeat.check()
            assert heartbeat.reason == "the server no longer lists it as held by this session"
    caplog.clear()
    # Beating often, on a healthy connection, for a while: never a false alarm.
    with advisory_lock(url, lock_name, wait=False, busy="held", beat=0.05):
        time.sleep(0.5)
    assert "is lost" not in caplog.text


HOLDER = """
import sys, time
from kaizen.tasks.workspace.databases import advisory_lock
with advisory_lock(sys.argv[1], sys.argv[2], wait=False, busy="held"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def child() -> Iterator[Callable[..., subprocess.Popen]]:
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        started.append(subprocess.Popen([sys.executable, "-c", *args], cwd=REPO, stdout=subprocess.PIPE, text=True))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_holder_killed_outright_frees_the_lock_within_seconds(postgres, database, lock_name, child) -> None:
    name, url = database
    holder = child(HOLDER, url, lock_name)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(Busy), advisory_lock(url, lock_name, wait=False, busy="held"):
        pass
    holder.send_signal(signal.SIGKILL)  # no unlock, no goodbye to the server
    killed = time.monotonic()
    with postgres["connect"](name) as db:
        wait_until("the killed holder's lock to be free", lambda: try_lock(db, lock_name), 5, every=0.1)
    assert time.monotonic() - killed < 5
    with advisory_lock(url, lock_name, wait=False, busy="held") as waited:
        assert waited is False


def test_a_lock_the_server_drops_is_noticed_by_the_heartbeat_and_raised(postgres, database, lock_name,
                                                                         caplog) -> None:
    name, url = database
    caplog.set_level(logging.ERROR, logger="kaizen.tasks.workspace.databases")
    with (pytest.raises(LockLost, match=lock_name) as lost,
          advisory_lock(url, lock_name, wait=False, busy="held", beat=0.2), postgres["connect"](name) as db):
        [(pid, _)] = holders(db, lock_name)
        assert db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        # Noticed while the block still runs, within a beat or so, not only at its end.
        wait_until("the heartbeat to report the loss", lambda: "is lost" in caplog.text, 2, every=0.05)
        assert try_lock(db, lock_name)  # the danger itself: another process could take it now
    assert "AdminShutdown" in lost.value.reason  # what the server said
    assert isinstance(lost.value, RuntimeError)


def test_an_error_already_on_its_way_out_is_not_replaced_by_the_loss(postgres, database, lock_name,
                                                                     caplog) -> None:
    name, url = database
    caplog.set_level(logging.ERROR, logger="kaizen.tasks.workspace.databases")
    with (pytest.raises(ValueError, match="the work failed"),
          advisory_lock(url, lock_name, wait=False, busy="held", beat=0.1)):
        with postgres["connect"](name) as db:
            [(pid, _)] = holders(db, lock_name)
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until("the heartbeat to report the loss", lambda: "is lost" in caplog.text, 2, every=0.05)
        raise ValueError("the work failed")
    assert caplog.text.count("is lost") == 1  # logged once, and the unlock did not fail a second time
