"""Restore from the shared stores what an iteration needs and this folder lacks: the folder is only a cache.

An iteration reads three things from disk besides the champion (which MLflow serves, tracking.local_model): every
accepted batch (the DVC stages' input; the replay sample draws from those still accepted), the data version the
last iteration built (dvc.lock: which split of which batch has which md5), and the prepared splits that version
names (replay, the drift reference and the gate's yardsticks on every earlier domain). On a machine that did not
run the last iteration, or on an empty disk, they come back here, each verified by md5: a batch from the loop's
object store against the ledger's md5, dvc.lock from the ledger (the newest data version any machine recorded),
the splits from the DVC remote by `dvc pull`, which checks each file's md5 itself. Something truly gone is
MissingFromStores, named, before any training, and not counted against the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kaizen.tasks.data.data_version import out_intact, run_dvc, split_stages
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.workspace.files import move_if_present, write_atomically
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.objects import MissingFromStores
from kaizen.tasks.workspace.repo import write_stage_vars


@dataclass(frozen=True)
class Restored:
    batches: tuple[str, ...]  # accepted batches fetched from the object store
    lock: bool  # dvc.lock replaced by the newest recorded data version
    outputs: tuple[str, ...]  # prepared outputs pulled from the DVC remote
    bytes: int  # of the batches fetched and the outputs pulled
    seconds: float

    def describe(self) -> str:
        if not (self.batches or self.lock or self.outputs):
            return "nothing to restore: this folder holds the loop's current state"
        parts = [f"{len(self.batches)} accepted batches"] if self.batches else []
        parts += ["dvc.lock of the newest data version"] if self.lock else []
        parts += [f"{len(self.outputs)} prepared outputs"] if self.outputs else []
        return f"restored {', '.join(parts)} ({self.bytes / 1e6:.1f} MB) from the shared stores in {self.seconds:.1f} s"


def restore_inputs(ws: Workspace) -> Restored:
    """Bring this folder up to the loop's current state (see the module's docstring); what it restored."""
    started = time.monotonic()
    with Ledger(ws.ledger_db) as ledger:
        batches = ledger.batches()
        lock = ledger.latest_data_lock()
    store, fetched, size = ws.object_store, [], 0
    for batch in batches:
        path = ws.batch_file(batch.batch_id)
        if batch.status == "failed":  # set aside on another machine: out of this folder's DVC input too, as there
            move_if_present(path, ws.set_aside_file(batch.batch_id))
            continue
        if path.exists():
            continue
        if store is None or batch.md5 is None:
            where = "the loop keeps no object store (its ledger is not shared)" if store is None else \
                "it was formed before kaizen kept batches in the object store"
            raise MissingFromStores(f"{batch.batch_id}'s accepted rows are missing from {path}, and {where}")
        size += store.fetch(ws.object_key(path), path, batch.md5)
        fetched.append(batch.batch_id)
    replaced = lock is not None and (not ws.dvc_lock.exists() or ws.dvc_lock.read_text(encoding="utf-8") != lock)
    if replaced:  # another machine ran since (or none ran here): its outputs are deterministic, so its lock holds
        write_atomically(ws.dvc_lock, lock.encode("utf-8"))  # type: ignore[union-attr]
    pulled = _pull_missing(ws)
    size += sum(p.stat().st_size for out in pulled for p in (ws.root / out).rglob("*") if p.is_file())
    return Restored(tuple(fetched), replaced, tuple(pulled), size, time.monotonic() - started)


def _pull_missing(ws: Workspace) -> list[str]:
    """The prepared outputs dvc.lock names that this folder lacks (or holds altered), pulled from the DVC remote.
    Not the replay sample: it is drawn again for the batch being learned."""
    missing = [out["path"] for name, stage in split_stages(ws).items()
               if ws.batch_file(name.removeprefix("split@")).exists()  # a set-aside batch's split is not needed
               and not out_intact(ws, stage) for out in stage.get("outs", [])]
    if missing:
        write_stage_vars(ws.root)  # the stages DVC resolves are those of the accepted batches, restored by now
        try:
            run_dvc(ws, "pull", "--force", *missing)  # --force: DVC owns these folders; a stale one is replaced
        except RuntimeError as exc:
            raise MissingFromStores(f"the prepared data {', '.join(missing)} of the loop's newest data version could "
                                    f"not be restored from the DVC remote {ws.dvc_remote}: {exc}") from exc
    return missing
