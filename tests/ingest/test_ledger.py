"""tasks.ledger on both of its databases: SQLite (embedded) and a real PostgreSQL server (a shared workspace).

The same class and the same SQL on both: files and their row keys in one commit, batches, an additive column.
On PostgreSQL the workspace is held in the database (an advisory lock every machine sees), and two collectors in
two folders running at once over the same landing zone still ingest every file exactly once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from kaizen.tasks.ingest.ledger import FileRecord, Ledger
from kaizen.tasks.workspace.layout import hold
from kaizen.tasks.workspace.members import init_workspace, open_member
from kaizen.tasks.workspace.objects import md5_of
from tests.support.files import sample


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "ledger.db"
    return request.getfixturevalue("postgres")["create"](f"ledger_{uuid.uuid4().hex[:10]}")


def record(sha: str, accepted: int, quarantined: int = 0) -> FileRecord:
    return FileRecord(sha, f"{sha}.csv", accepted + quarantined, accepted, quarantined, None)


def test_a_file_and_its_row_keys_are_one_commit(location) -> None:
    import psycopg

    with Ledger(location) as ledger:
        ledger.record_file(record("a" * 64, 2, 1), size=10, row_keys=[("k1", 1), ("k2", 2)])
        assert ledger.file("a" * 64) == record("a" * 64, 2, 1)
        assert ledger.known_keys(["k1", "k3", "k2"]) == {"k1": "a" * 64, "k2": "a" * 64}
        # A second file that repeats a row key fails whole: neither it nor any of its keys is left.
        with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
            ledger.record_file(record("b" * 64, 2), size=10, row_keys=[("k3", 1), ("k1", 2)])
        assert ledger.file("b" * 64) is None and ledger.known_keys(["k3"]) == {}
        ledger.record_file(record("c" * 64, 1), size=5, row_keys=[("k4", 1)])
        ledger.record_file(record("d" * 64, 0, 3), size=5, row_keys=[])
        ledger.record_delivery("c" * 64, "copy-of-c.csv", "already ingested as c.csv")
        assert [f.sha256[0] for f in ledger.files()] == ["a", "c", "d"]  # in the order they were ingested
        assert [f.sha256[0] for f in ledger.unbatched_files()] == ["a", "c"]  # d had no accepted rows


def test_batches_are_numbered_closed_and_listed(location) -> None:
    with Ledger(location) as ledger:
        for sha in ("a", "b", "c"):
            ledger.record_file(record(sha * 64, 5), size=1, row_keys=[(f"{sha}{i}", i) for i in range(5)])
        assert ledger.next_batch_id() == "batch-0001"
        ledger.record_batch("batch-0001", 10, ["a" * 64, "b" * 64])
        ledger.record_batch(ledger.next_batch_id(), 5, ["c" * 64])
        ledger.finish_batch("batch-0001", run_id="r1", model_version="1", decision="promoted")
        assert [(b.batch_id, b.status, b.files, b.decision) for b in ledger.batches()] == [
            ("batch-0001", "done", ("a" * 64, "b" * 64), "promoted"), ("batch-0002", "pending", ("c" * 64,), None)]
        assert [b.batch_id for b in ledger.batches(status="pending")] == ["batch-0002"]
        assert ledger.unbatched_files() == [] and ledger.file("c" * 64).batch_id == "batch-0002"


def test_an_additive_column_reaches_a_ledger_made_before_it(location) -> None:
    with Ledger(location) as ledger:
        ledger.record_file(record("a" * 64, 1), size=1, row_keys=[("k", 1)])
    with Ledger(location) as ledger:  # a newer kaizen opens the older ledger
        for _ in range(2):  # idempotent
            ledger._db.add_column("files", "trust", "TEXT NOT NULL DEFAULT 'unchecked'")
        assert ledger._db.execute("SELECT trust FROM files WHERE sha256=?", ("a" * 64,)).fetchone() == ("unchecked",)
        assert ledger.file("a" * 64).rows_accepted == 1


def test_a_shared_workspace_is_held_in_postgres_where_every_machine_sees_it(make_workspace, postgres) -> None:
    ws = make_workspace(storage__ledger=postgres["create"](f"ledger_{uuid.uuid4().hex[:10]}"))
    with hold(ws, "collect", wait=False) as waited:
        assert waited is False
        with postgres["connect"](ws.ledger_db.rsplit("/", 1)[1]) as db:  # the lock is the database's
            assert db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchone() == (1,)
        child = subprocess.run([sys.executable, "-c", COLLECT_ONCE, str(ws.root)], capture_output=True, text=True,
                               timeout=120)
        assert child.returncode == 3, child.stderr  # another process, another connection: Busy
        assert "another collect is running" in child.stdout and "the ledger's 'collect' lock" in child.stdout
    assert not (ws.state_dir / "collect.lock").exists()  # no file lock: a network file system may not honour one
    with hold(ws, "collect", wait=False):
        pass  # released when its holder left


COLLECT_ONCE = """
import sys
from kaizen.tasks.ingest.collect import collect
from kaizen.tasks.workspace.files import Busy
from kaizen.tasks.workspace.layout import Workspace
try:
    collect(Workspace.open(sys.argv[1]))
except Busy as exc:
    print(exc)
    sys.exit(3)
"""

# A collector that keeps collecting until the test says every file has landed and it finds nothing more.
COLLECTOR = """
import json, sys, time
from pathlib import Path
from kaizen.tasks.ingest.collect import collect
from kaizen.tasks.workspace.files import Busy
from kaizen.tasks.workspace.layout import Workspace
ws, out, done = Workspace.open(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
busy, deadline = 0, time.monotonic() + 120
while time.monotonic() < deadline:
    landed = done.exists() and not any(Path(ws.landing).iterdir())
    try:
        result = collect(ws)
    except Busy:
        busy += 1
        time.sleep(0.02)
        continue
    with out.open("a") as log:
        for f in result.files:
            log.write(json.dumps({"name": f.name, "sha": f.sha256, "note": f.note, "accepted": f.rows_accepted}) + "\\n")
    if landed:
        break
print(json.dumps({"busy": busy}))
"""


def test_two_collectors_in_two_folders_ingest_each_file_exactly_once(make_workspace, postgres, object_store, domains,
                                                                     tmp_path) -> None:
    """Two machines (two folders, the second joined to the first's loop) collect from one landing zone over one
    PostgreSQL ledger and one S3 store: each file once, and a batch formed on either machine from rows the other
    staged (they travel through the object store, verified by md5)."""
    ledger_url = postgres["create"](f"ledger_{uuid.uuid4().hex[:10]}")
    first = make_workspace("machine-a", storage__ledger=ledger_url, storage__landing=str(tmp_path / "landing"),
                           storage__dvc_remote=f"s3://{object_store['bucket']}/{uuid.uuid4().hex[:8]}/dvc")
    ws = open_member(first.root)  # the first run on a shared ledger records the loop there
    second = init_workspace(tmp_path / "machine-b", join=ledger_url)
    assert (second.workspace_id, second.ledger_db, second.landing) == (ws.workspace_id, ws.ledger_db, ws.landing)
    rows = sample(domains["movies"], 250, seed=4)
    files = {f"part-{i:02d}.csv": rows.iloc[i * 20:(i + 1) * 20] for i in range(12)}
    files["copy-of-part-03.csv"] = files["part-03.csv"]  # the same bytes again: ingested once
    files["overlap.csv"] = pd.concat([files["part-05.csv"].iloc[:5], rows.iloc[240:245]])  # 5 rows seen before
    landing, done = Path(ws.landing), tmp_path / "all-landed"
    landing.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    outs = [tmp_path / f"collector-{i}.jsonl" for i in range(2)]
    collectors = [subprocess.Popen([sys.executable, "-c", COLLECTOR, str(root), str(out), str(done)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for root, out in zip((ws.root, second.root), outs, strict=True)]
    for name, frame in files.items():  # written under a hidden name, then renamed: never read half written
        frame.to_csv(landing / f".{name}.tmp", index=False)
        (landing / f".{name}.tmp").rename(landing / name)
        time.sleep(0.15)
    done.touch()
    finished = [c.communicate(timeout=180) for c in collectors]
    assert [c.returncode for c in collectors] == [0, 0], [err[-3000:] for _, err in finished]

    seen = [json.loads(line) for out in outs if out.exists() for line in out.read_text().splitlines()]
    assert sorted(s["name"] for s in seen) == sorted(files)  # every file handled once, by one collector
    ingested = [s for s in seen if s["note"] == "ingested"]
    assert len(ingested) == len({s["sha"] for s in ingested}) == len(files) - 1
    assert [s["note"] for s in seen if s["name"] == "copy-of-part-03.csv" or s["name"] == "part-03.csv"].count(
        "ingested") == 1
    # The 5 shared rows are accepted once, in whichever of the two files was ingested first (two collectors that
    # start late find every file landed and take them by name, overlap.csv first): 20 + 5, or 15 + 10.
    shared = sorted(s["accepted"] for s in seen if s["name"] in ("part-05.csv", "overlap.csv"))
    assert shared in ([5, 20], [10, 15]), shared
    assert list(landing.iterdir()) == []

    with Ledger(ws.ledger_db) as ledger:
        assert len(ledger.files()) == len(files) - 1
        accepted = sum(f.rows_accepted for f in ledger.files())
        batches = ledger.batches()
        assert [b.batch_id for b in batches] == [f"batch-{i:04d}" for i in range(1, len(batches) + 1)]
        in_batches = [sha for b in batches for sha in b.files]
        assert len(in_batches) == len(set(in_batches))  # no file in two batches
        (keys,) = ledger._db.execute("SELECT COUNT(*) FROM row_keys").fetchone()
        waiting = ledger.unbatched_files()
    assert accepted == keys == 245  # 245 distinct rows; overlap.csv's 5 repeated ones quarantined
    # Every accepted row in exactly one place, in the object store, whichever machine wrote it (md5s checked).
    store, copies = ws.object_store, tmp_path / "copies"
    assert store is not None
    batched = sum(len(pd.read_parquet(copies / b.batch_id)) for b in batches
                  if store.fetch(f"accepted/{b.batch_id}.parquet", copies / b.batch_id, b.md5))
    staged = sum(len(pd.read_parquet(copies / f.sha256)) for f in waiting
                 if store.fetch(f"staged/{f.sha256[:16]}.parquet", copies / f.sha256, f.staged_md5))
    assert batched + staged == accepted
    assert {b.md5 for b in batches} == {md5_of(ws.batch_file(b.batch_id)) if ws.batch_file(b.batch_id).exists()
                                        else md5_of(second.batch_file(b.batch_id)) for b in batches}
    busy = [json.loads(out.strip().splitlines()[-1])["busy"] for out, _ in finished]
    assert sum(busy) > 0  # they did run at once: a collect found the other holding the ledger


def test_a_ledger_from_before_the_trust_columns_gets_them_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE batches (batch_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, rows INTEGER NOT NULL,
            files TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', run_id TEXT, model_version TEXT,
            decision TEXT);
        INSERT INTO batches VALUES ('batch-0001', '2026-01-01T00:00:00+00:00', 10, '[]', 'done', 'r', '1',
            'promoted');
    """)
    old.commit()
    old.close()
    with Ledger(path) as ledger:
        (batch,) = ledger.batches()
        assert (batch.batch_id, batch.decision, batch.trust, batch.trust_reason) == (
            "batch-0001", "promoted", "trusted", None)


def test_trust_is_recorded_and_an_operator_can_requeue(location) -> None:
    with Ledger(location) as ledger:
        ledger.record_batch("batch-0001", 10, [])
        ledger.finish_batch("batch-0001", run_id="r", model_version=None, decision="suspect")
        ledger.set_trust("batch-0001", "suspect", "kappa -0.6", "loop")
        assert ledger.suspect_batches() == ["batch-0001"]
        ledger.set_trust("batch-0001", "trusted", "fixed at the source", "operator ana", requeue=True)
        (batch,) = ledger.batches()
        assert (batch.status, batch.decision, batch.trust, batch.trust_by) == (
            "pending", None, "trusted", "operator ana")
        with pytest.raises(KeyError, match="batch-0404"):
            ledger.set_trust("batch-0404", "trusted", "x", "operator ana")
        with pytest.raises(ValueError, match="trust must be"):
            ledger.set_trust("batch-0001", "maybe", "x", "operator ana")
