"""Operating the registry: roll the champion back, reproduce a version's training data, overrule a batch's trust.

A rollback is one alias move (the commit point), recorded with who, when and why on the model versions and
on a run of its own, so the MLflow UI shows it beside the iterations.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from kaizen.tasks.ingest.ledger import now
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.record import ForeignModel, claim_model
from kaizen.tasks.registry.tags import TAG, Decision
from kaizen.tasks.workspace.files import Busy
from kaizen.tasks.workspace.layout import Workspace, hold

BATCH_WAIT_SECONDS = 30.0  # how long an operator's batch command waits for a running iteration, by default


class OperationError(RuntimeError):
    """An operation that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class Rollback:
    from_version: str
    to_version: str
    reason: str
    who: str
    when: str
    run_id: str


def rollback(ws: Workspace, reason: str, to: str | None = None) -> Rollback:
    """Move `champion` to `to` (default: the previous champion); the replaced one becomes `previous-champion`."""
    if not reason.strip():
        raise OperationError("a rollback needs a reason (--reason)")
    with hold(ws, "champion", wait=True):  # an iteration's promotion and this move take turns
        return _rollback(ws, reason, to)


def _rollback(ws: Workspace, reason: str, to: str | None) -> Rollback:
    client = tracking.connect(ws)
    try:
        claim_model(client, ws)
    except ForeignModel as exc:
        raise OperationError(str(exc)) from exc
    name = ws.settings.model.registered_name
    current = tracking.model_by_alias(client, name, tracking.CHAMPION)
    if current is None:
        raise OperationError("there is no champion to roll back")
    if to is None:
        previous = tracking.model_by_alias(client, name, tracking.PREVIOUS)
        if previous is None:
            raise OperationError("no previous champion: name a version with --to")
        to = previous.version
    target = tracking.model_version(client, name, str(to))  # raises if the version does not exist
    if target.version == current.version:
        raise OperationError(f"version {target.version} is already the champion")

    who, when = getpass.getuser(), now()
    tracking.swap_champion(client, name, target.version, current)  # the commit point
    record = {TAG["rollback_from"]: current.version, TAG["rollback_to"]: target.version,
              TAG["rollback_reason"]: reason, TAG["rollback_by"]: who, TAG["rollback_at"]: when}
    tracking.tag_version(client, name, target.version, record)
    tracking.tag_version(client, name, current.version, {TAG["rolled_back"]: f"{when} by {who}: {reason}"})
    run = client.create_run(tracking.experiment_id(client, ws), run_name=f"rollback-v{current.version}-to-v"
                            f"{target.version}", tags={**record, TAG["decision"]: Decision.ROLLBACK,
                                                       TAG["workspace"]: ws.workspace_id})
    client.set_terminated(run.info.run_id, "FINISHED")
    return Rollback(current.version, target.version, reason, who, when, run.info.run_id)


@contextmanager
def between_iterations(ws: Workspace, wait_seconds: float = BATCH_WAIT_SECONDS) -> Iterator[None]:
    """Hold the loop's own lock (the one an iteration holds while it works: layout.hold "loop", in the ledger's
    database for a shared loop), so that an operator's change to a batch never lands inside an iteration. A
    running one is waited for up to `wait_seconds` (an iteration takes minutes: an operator at a terminal should
    not wait blind), then files.Busy names the holder and what to do."""
    deadline = time.monotonic() + wait_seconds
    with ExitStack() as held:
        while True:
            try:
                held.enter_context(hold(ws, "loop", wait=False))
                break
            except Busy as exc:
                if time.monotonic() >= deadline:
                    raise Busy(f"{exc}. An iteration holds the workspace while it works; waited {wait_seconds:g} s "
                               "for it to end: try again when it has ended, or wait longer (--wait)") from exc
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        yield


@dataclass(frozen=True)
class TrustChange:
    batch_id: str
    trust: str
    requeued: bool  # a batch cleared after the loop held it back is learned from at the next run
    note: str  # what the operator should know next


def set_batch_trust(ws: Workspace, batch_id: str, trusted: bool, reason: str,
                    wait_seconds: float = BATCH_WAIT_SECONDS) -> TrustChange:
    """An operator overrules the loop on a batch's labels. Trusting a suspect batch queues it to be learned
    from; distrusting one keeps it out of training, replay and every later gate (a model already trained on it
    stays what it is: roll back to undo that). Between iterations only (`between_iterations`)."""
    from kaizen.tasks.ingest.ledger import SUSPECT, TRUSTED, Ledger

    if not reason.strip():
        raise OperationError("overruling the loop needs a reason (--reason)")
    with between_iterations(ws, wait_seconds), Ledger(ws.ledger_db) as ledger:
        record = next((b for b in ledger.batches() if b.batch_id == batch_id), None)
        if record is None:
            known = ", ".join(b.batch_id for b in ledger.batches()) or "none yet"
            raise OperationError(f"no batch {batch_id!r} (batches: {known})")
        requeue = trusted and record.status == "done" and record.decision == Decision.SUSPECT
        ledger.set_trust(batch_id, TRUSTED if trusted else SUSPECT, reason, f"operator {getpass.getuser()} at {now()}",
                         requeue=requeue)
    if requeue:
        note = "it is pending again: the next run learns from it"
    elif trusted:
        note = "it counts as trusted data from now on"
    elif record.status == "done" and record.model_version:
        note = (f"model version {record.model_version} was trained on it: `kaizen rollback` to a version before "
                "it if that one must not serve")
    else:
        note = "it stays out of training, replay and every later gate"
    return TrustChange(batch_id, TRUSTED if trusted else SUSPECT, requeue, note)


def _dir_manifest(dvc_cache: Path, dir_md5: str) -> list[dict]:
    """The file list DVC stored for a directory version (its `.dir` object)."""
    digest = dir_md5.removesuffix(".dir")
    return json.loads((dvc_cache / "files" / "md5" / digest[:2] / f"{digest[2:]}.dir").read_text())


def reproduce(ws: Workspace, version: str, dest: Path | None = None, remote: str | None = None) -> tuple[Path, str]:
    """Restore the exact data a model version was trained, validated and tested on (every batch's splits and its
    replay sample) from a DVC remote (default: the workspace's, storage.dvc_remote) into `dest`; verify every
    file's md5. Returns `dest`'s data folder and the data version."""
    from kaizen.tasks.data.data_version import read_data_version, restore_data_version

    client = tracking.connect(ws)
    ref = tracking.model_version(client, ws.settings.model.registered_name, version)
    lock_text = client.download_artifacts(ref.run_id, "data/dvc.lock")
    data_version = read_data_version(Path(lock_text).read_text(encoding="utf-8"))
    if data_version.prepared_md5 != ref.tags.get(TAG["data_version"]):
        raise OperationError(f"version {version}: its run's dvc.lock names {data_version.prepared_md5}, its tag "
                             f"{ref.tags.get(TAG['data_version'])}")
    dest = dest or ws.state_dir / "reproduce" / f"v{version}"
    data = restore_data_version(ws, data_version.lock, dest, remote)
    for out, md5 in data_version.outs.items():  # each batch's splits and the replay sample, file by file
        for entry in _dir_manifest(dest / ".dvc" / "cache", md5):
            path = dest / out / entry["relpath"]
            actual = hashlib.md5(path.read_bytes()).hexdigest()
            if actual != entry["md5"]:
                raise OperationError(f"{path.relative_to(dest)}: md5 {actual} does not match the recorded "
                                     f"{entry['md5']}")
    return data, data_version.prepared_md5

