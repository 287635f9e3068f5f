"""One identity for one loop, kept where every machine sees it: the loop's database (the ledger's).

A loop was named after the folder it ran in, so another folder could not carry it on. Now the first `kaizen init`
on a shared ledger records the loop there, with its id and its settings (params.yaml); a second folder joins it
explicitly (`kaizen init DIR --join postgresql://...`, or a deployment's run on a worker's empty disk), and gets
both. A folder that did not join keeps its own id and is refused by the loop's database and by the registered
model, as before. Each folder caches the identity in `.kaizen/loop.json` (Workspace.workspace_id reads it).

The settings follow the newest edit: a member whose params.yaml changed since it last agreed with the loop
publishes it at its next run; a member whose params.yaml did not change takes the loop's (`sync_settings`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kaizen.tasks.workspace import databases
from kaizen.tasks.workspace.files import write_atomically

SCHEMA = "CREATE TABLE IF NOT EXISTS loop (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class ForeignLoop(RuntimeError):
    """This folder is not a member of the loop whose database it names."""


class NoLoop(LookupError):
    """The database named to join holds no loop yet."""


def _connect(ledger: Path | str):
    db = databases.connect(ledger)
    db.create(SCHEMA)
    return db


def _loop(db) -> tuple[str, str] | None:
    values = dict(db.execute("SELECT key, value FROM loop").fetchall())
    return (values["id"], values["params"]) if "id" in values else None


def recorded(ledger: Path | str) -> tuple[str, str] | None:
    """The loop's (id, params.yaml text) in its database, or None before any folder claimed it."""
    db = _connect(ledger)
    try:
        return _loop(db)
    finally:
        db.close()


def claim(ledger: Path | str, loop_id: str, params: str) -> tuple[str, str]:
    """Record `loop_id` and its settings as the loop of this database unless one is recorded already (two first
    claims at once: one wins, in one transaction); the loop's (id, params) afterwards."""
    db = _connect(ledger)
    try:
        with db.transaction():
            found = _loop(db)
            if found is None:
                db.executemany("INSERT INTO loop (key, value) VALUES (?,?)", [("id", loop_id), ("params", params)])
    finally:
        db.close()
    return found or (loop_id, params)


def write_membership(loop_file: Path, loop_id: str, params: str) -> None:
    """This folder's copy of the loop's identity, and the settings it last agreed on with the loop."""
    record = {"id": loop_id, "params_md5": _md5(params)}
    write_atomically(loop_file, json.dumps(record).encode("utf-8"))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()  # noqa: S324  (a change detector)


def sync_settings(ledger: Path | str, loop_id: str, shared: str, params_file: Path, loop_file: Path) -> str | None:
    """Bring params.yaml and the loop's settings (`shared`, as check_member read them) together: an edit made here
    since the folder last agreed with the loop is published; otherwise the loop's settings, edited on another
    machine, are taken. What happened, in words, or None when both already agree."""
    local = params_file.read_text(encoding="utf-8")
    agreed_md5 = json.loads(loop_file.read_text(encoding="utf-8")).get("params_md5") if loop_file.exists() else None
    if local == shared:
        if agreed_md5 != _md5(local):
            write_membership(loop_file, loop_id, local)
        return None
    if agreed_md5 == _md5(local):
        write_atomically(params_file, shared.encode("utf-8"))
        agreed, local = "took the loop's settings, changed on another machine since this folder last ran", shared
    else:
        publish_settings(ledger, loop_id, local)
        agreed = "published this folder's params.yaml, edited here, as the loop's settings"
    write_membership(loop_file, loop_id, local)
    return agreed


def publish_settings(ledger: Path | str, loop_id: str, params: str) -> None:
    """Make `params` the loop's settings, the ones every folder that joins from now on starts from."""
    db = _connect(ledger)
    try:
        with db.transaction():
            (owner,) = db.execute("SELECT value FROM loop WHERE key='id'").fetchone() or (None,)
            if owner != loop_id:
                raise ForeignLoop(f"cannot publish the settings of loop {loop_id!r}: the database holds {owner!r}")
            db.execute("UPDATE loop SET value=? WHERE key='params'", (params,))
    finally:
        db.close()


def check_member(ledger: Path | str, loop_id: str, params: str, shown: str) -> str:
    """Raise ForeignLoop unless `loop_id` is the loop this database holds (a database no folder claimed yet, made
    before loops were recorded, is claimed with `params` by the first folder that runs on it); the loop's
    settings."""
    owner, shared = recorded(ledger) or claim(ledger, loop_id, params)
    if owner != loop_id:
        raise ForeignLoop(
            f"the ledger at {shown} holds the loop {owner!r}, and this folder is {loop_id!r}: carry that loop on from "
            f"here with `kaizen init DIR --join {shown}` in an empty folder (it copies the loop's settings and "
            "identity), or give this workspace a ledger of its own (storage.ledger)")
    return shared
