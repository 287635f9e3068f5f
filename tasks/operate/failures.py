"""Failed iterations: one bad batch must not stop all learning.

An iteration that raises is one failed attempt at its batch, recorded in the ledger with its error. When the
last `operations.max_failed_attempts` attempts failed with the same error (a test split too small, a label
removed from params.yaml, a corrupt cached model), the batch is set aside: marked `failed` with that error, its
accepted rows moved out of the DVC stage's input (`data/failed/`), and the loop goes on with the batches behind
it. An attempt that failed because a server could not be reached, or because something the loop keeps in its
shared stores is gone (MissingFromStores), is recorded but not counted: the batch is not at fault. Every failed
attempt sends a `kaizen.iteration.failed` event; `kaizen batch retry B` puts a set-aside batch back once the cause
is fixed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.notify import events
from kaizen.tasks.operate.operations import BATCH_WAIT_SECONDS, between_iterations
from kaizen.tasks.registry.tags import TAG, Decision
from kaizen.tasks.workspace.files import move_if_present
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.objects import MissingFromStores
from kaizen.tasks.workspace.redact import redact

logger = logging.getLogger(__name__)
# Run ids, hashes and addresses differ between attempts that fail for one reason: they do not make errors differ.
_VOLATILE = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b|\b[0-9a-f]{12,}\b|0x[0-9a-f]+")


class BatchError(RuntimeError):
    """A batch cannot be retried as asked; the message says why."""


@dataclass(frozen=True)
class FailedAttempt:
    batch_id: str
    error: str
    counted: bool  # False: a server could not be reached or a stored object is gone; the batch is not at fault
    in_a_row: int  # counted failures in a row with this error
    set_aside: bool  # this attempt made the batch `failed`


def error_text(exc: BaseException) -> str:
    """What an attempt failed with, one line, credentials masked, ids that differ between attempts elided:
    `KeyError: 'neutral'`. Two attempts failed the same way when their error texts are equal."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return _VOLATILE.sub("…", redact(f"{type(exc).__name__}: {message}"))[:500]


def unreachable(exc: BaseException) -> bool:
    """Whether the error (or one it came from) is a server that could not be reached."""
    import httpx
    import requests

    return _caused_by(exc, (requests.ConnectionError, requests.Timeout, httpx.TransportError))


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds):
            return True
        current = current.__cause__ or current.__context__
    return False


def not_the_batch(exc: BaseException) -> str | None:
    """Why an attempt's failure is not the batch's fault ("unreachable", "missing"), or None: it is counted."""
    if unreachable(exc):
        return "unreachable"
    return "missing" if _caused_by(exc, (MissingFromStores,)) else None


def note_failure(ws: Workspace, batch_id: str, exc: BaseException) -> FailedAttempt:
    """Record a failed attempt at `batch_id`; set the batch aside when it failed the same way too often."""
    error, excused = error_text(exc), not_the_batch(exc)
    counted = excused is None
    limit = ws.settings.operations.max_failed_attempts
    with Ledger(ws.ledger_db) as ledger:
        ledger.record_attempt(batch_id, excused or "failed", error)
        in_a_row, _, _ = ledger.failures_in_a_row(batch_id)
        set_aside = counted and in_a_row >= limit
        if set_aside:
            ledger.set_status(batch_id, "failed", Decision.FAILED)
    if set_aside:
        move_if_present(ws.batch_file(batch_id), ws.set_aside_file(batch_id))
    if counted:  # the tracking server answers: close the attempt's run, marked with its error
        try:
            _close_runs(ws, batch_id, error)
        except Exception as exc:  # noqa: BLE001  the attempt's own error is the one to report, and it is
            # recorded already; a run left open is labelled orphaned by the next attempt's recovery.
            logger.warning("%s: the failed attempt's MLflow run could not be closed (the next attempt labels it "
                           "orphaned): %s", batch_id, error_text(exc))
    attempt = FailedAttempt(batch_id, error, counted, in_a_row, set_aside)
    what = (f"set aside as failed after {in_a_row} attempts with this error; fix the cause, then "
            f"`kaizen batch retry {batch_id}`") if set_aside else (
        f"attempt {in_a_row} of {limit} with this error" if counted else
        "a server could not be reached: not counted" if excused == "unreachable" else
        "something the loop keeps in its shared stores is gone: not counted")
    logger.error("%s: iteration failed: %s (%s)", batch_id, error, what)
    events.emit(ws, events.FAILED, {"batch": batch_id, "error": error, "counted": counted, "in_a_row": in_a_row,
                                   "max_failed_attempts": limit, "batch_status": "failed" if set_aside else "pending"})
    return attempt


def _close_runs(ws: Workspace, batch_id: str, error: str) -> None:
    """The open, undecided runs of this workspace's attempts at `batch_id` end FAILED with the error (the next
    attempt's recovery labels them orphaned)."""
    from kaizen.tasks.registry import tracking
    from kaizen.tasks.registry.record import in_workspace

    client = tracking.connect(ws)
    runs = client.search_runs([tracking.experiment_id(client, ws)], max_results=100,
                              filter_string=f"tags.`{TAG['batch']}` = '{batch_id}' and attributes.status = 'RUNNING'")
    for run in runs:
        if in_workspace(run, ws) and not run.data.tags.get(TAG["decision"]):
            tracking.set_tags(client, run.info.run_id, {TAG["error"]: error})
            client.set_terminated(run.info.run_id, "FAILED")


def retry(ws: Workspace, batch_id: str, wait_seconds: float = BATCH_WAIT_SECONDS) -> None:
    """Put a failed batch back: pending again, its rows back in the DVC stage's input, its count started over.
    Between iterations only: a running one is waited for, a while (operations.between_iterations)."""
    with between_iterations(ws, wait_seconds), Ledger(ws.ledger_db) as ledger:
        status = {b.batch_id: b.status for b in ledger.batches()}
        if batch_id not in status:
            raise BatchError(f"no batch {batch_id!r} in {ws.root} (batches: {', '.join(status) or 'none yet'})")
        if status[batch_id] != "failed":
            raise BatchError(f"{batch_id} is {status[batch_id]}, not failed: nothing to retry")
        move_if_present(ws.set_aside_file(batch_id), ws.batch_file(batch_id))
        ledger.record_attempt(batch_id, "retry")
        ledger.set_status(batch_id, "pending", None)


def failed_batches(ws: Workspace) -> list[dict]:
    """Each batch set aside: its id, rows, the error it failed with, how many times in a row, and when last."""
    with Ledger(ws.ledger_db) as ledger:
        out = []
        for batch in ledger.batches(status="failed"):
            in_a_row, error, at = ledger.failures_in_a_row(batch.batch_id)
            out.append({"batch": batch.batch_id, "rows": batch.rows, "error": error, "attempts": in_a_row,
                        "failed_at": at})
    return out
