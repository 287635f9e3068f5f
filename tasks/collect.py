"""collect: ingest labeled files from the landing zone exactly once, quarantining bad rows with a reason.

Per file, in this order, so that a kill at any point loses nothing and ingests nothing twice: archive the
raw bytes, write accepted rows to staging and rejected rows to quarantine (each atomically), commit the file
to the ledger (keyed by content hash), and only then remove it from the landing zone. A file whose commit
never happened is simply ingested again (every write is deterministic); one whose commit happened is found
"already ingested" and removed. Staged rows become a batch once at least `min_batch_rows` have arrived; until
then they wait, whatever their number. `recover` clears what a killed run left half written.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path

import fsspec
import pandas as pd

from kaizen.tasks import landing
from kaizen.tasks.faults import kill_point
from kaizen.tasks.files import json_line, parquet_bytes, write_atomically
from kaizen.tasks.landing import Skipped
from kaizen.tasks.ledger import FileRecord, Ledger
from kaizen.tasks.parse import BadFile, parse
from kaizen.tasks.repo import write_stage_vars
from kaizen.tasks.validate import Verdict, judge
from kaizen.tasks.workspace import Workspace, hold

logger = logging.getLogger(__name__)

# Where a kill is injected in tests (tasks/faults.py), in the order a collect reaches them.
KILL_POINTS = ("atomic:written", "collect:archived", "collect:staged", "collect:quarantined",
               "ledger:file-uncommitted", "collect:recorded", "collect:removed", "collect:batch-written",
               "ledger:batch-uncommitted", "collect:batch-recorded")


@dataclass(frozen=True)
class FileOutcome:
    name: str
    sha256: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    note: str  # "ingested" or why nothing was ingested ("already ingested as ...")
    reasons: dict[str, int] = field(default_factory=dict)  # quarantine reason -> rows
    remarks: tuple[str, ...] = ()  # what else happened: a delimiter guessed, a file that could not be removed


@dataclass(frozen=True)
class CollectResult:
    files: list[FileOutcome]
    new_batches: list[str]
    skipped: list[Skipped] = field(default_factory=list)  # landed entries not read this run, and why
    held_rows: int = 0  # accepted rows waiting in staging for `min_batch_rows`

    @property
    def rows_accepted(self) -> int:
        return sum(f.rows_accepted for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)

    @property
    def reasons(self) -> dict[str, int]:
        """Every quarantine reason of this run with its number of rows, most frequent first."""
        total: dict[str, int] = {}
        for f in self.files:
            for reason, n in f.reasons.items():
                total[reason] = total.get(reason, 0) + n
        return dict(sorted(total.items(), key=lambda item: -item[1]))

    def describe(self) -> list[str]:
        """One line per file and per skipped entry, then the staging state: the run's summary in words."""
        lines = []
        for f in self.files:
            why = "; ".join(f"{n} x {reason}" for reason, n in f.reasons.items())
            line = f"{f.name}: {f.note}" if f.note != "ingested" else (
                f"{f.name}: {f.rows_accepted} of {f.rows_in} rows accepted" + (f", quarantined: {why}" if why else ""))
            lines.append(line + "".join(f" ({remark})" for remark in f.remarks))
        lines += [f"{s.name}: not collected: {s.reason}" for s in self.skipped]
        if self.held_rows:
            lines.append(f"{self.held_rows} accepted rows wait in staging for enough to form a batch")
        return lines


def archive_path(ws: Workspace, sha: str, name: str) -> Path:
    """Where a file's bytes are kept: its hash and a cleaned name, never a path a name could steer."""
    return ws.archive_dir / f"{sha[:16]}-{landing.safe_component(landing.printable(name))}"


def ingest_file(ws: Workspace, ledger: Ledger, name: str, data: bytes) -> FileOutcome:
    """Ingest one landed file's bytes (the caller removes it from the landing zone afterwards)."""
    name = landing.printable(name)
    sha = hashlib.sha256(data).hexdigest()
    known = ledger.file(sha)
    if known is not None:
        note = f"already ingested as {known.name}: nothing to do"
        ledger.record_delivery(sha, name, note)
        return FileOutcome(name, sha, 0, 0, 0, note)

    verdict, remarks = read_rows(ws, ledger, name, data)

    stem = sha[:16]
    write_atomically(archive_path(ws, sha, name), data)
    kill_point("collect:archived")
    if len(verdict.accepted):
        write_atomically(ws.staged_dir / f"{stem}.parquet", parquet_bytes(verdict.accepted))
        kill_point("collect:staged")
    if verdict.quarantined:
        lines = [json_line({"file": name, "sha256": sha, **q}) for q in verdict.quarantined]
        write_atomically(ws.quarantine_dir / f"{stem}.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
        kill_point("collect:quarantined")

    rows_in = len(verdict.accepted) + len(verdict.quarantined)
    record = FileRecord(sha, name, rows_in, len(verdict.accepted), len(verdict.quarantined), None)
    ledger.record_file(record, size=len(data), row_keys=verdict.keys)
    reasons: dict[str, int] = {}
    for q in verdict.quarantined:
        reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
    return FileOutcome(name, sha, rows_in, record.rows_accepted, record.rows_quarantined, "ingested", reasons,
                       remarks)


def read_rows(ws: Workspace, ledger: Ledger, name: str, data: bytes) -> tuple[Verdict, tuple[str, ...]]:
    """Each row of a file accepted or quarantined. A file that cannot be read is one quarantined unit whose reason
    is the error: whatever one file holds, it never stops the files after it nor the loop (its bytes stay in
    the archive, and the traceback in the log)."""
    settings = ws.settings.data
    try:
        table = parse(data, name, (settings.text_column, settings.label_column))
        verdict = judge(table, name, settings, ledger)
        if len(verdict.accepted) + len(verdict.quarantined) != len(table.rows):  # every row read gets a verdict
            raise RuntimeError(f"{len(table.rows)} rows read, but {len(verdict.accepted)} accepted and "
                               f"{len(verdict.quarantined)} quarantined")
    except BadFile as exc:
        return _refused(str(exc)), ()
    except sqlite3.Error:  # the ledger's trouble, not the file's: the run stops and the file stays in the landing zone
        raise
    except Exception as exc:  # a reader's bug or limit met by this file's bytes
        logger.exception("%s could not be read; quarantined whole", name)
        return _refused(f"unreadable file: {type(exc).__name__}: {str(exc)[:300]}"), ()
    return verdict, table.remarks + verdict.remarks


def _refused(reason: str) -> Verdict:
    return Verdict(pd.DataFrame(), [{"row": 0, "reason": reason, "record": None}], [])


def landed_files(ws: Workspace) -> list[str]:
    """Files waiting in the landing zone, oldest name first; hidden and partial files are not ready yet."""
    return [f.path for f in landing.survey(ws.landing, settle_seconds=0)[0]]


def form_batches(ws: Workspace, ledger: Ledger) -> list[str]:
    """Turn staged rows into batches of at least `min_batch_rows`; fewer wait for more to arrive."""
    formed: list[str] = []
    group: list[FileRecord] = []
    for record in ledger.unbatched_files():
        group.append(record)
        if sum(r.rows_accepted for r in group) < ws.settings.data.min_batch_rows:
            continue
        batch_id = ledger.next_batch_id()
        frames = [pd.read_parquet(ws.staged_dir / f"{r.sha256[:16]}.parquet") for r in group]
        batch = pd.concat(frames, ignore_index=True)
        write_atomically(ws.batch_file(batch_id), parquet_bytes(batch))
        kill_point("collect:batch-written")
        ledger.record_batch(batch_id, len(batch), [r.sha256 for r in group])
        kill_point("collect:batch-recorded")
        for r in group:
            (ws.staged_dir / f"{r.sha256[:16]}.parquet").unlink(missing_ok=True)
        formed.append(batch_id)
        group = []
    return formed


def recover(ws: Workspace, ledger: Ledger) -> None:
    """Clear what a killed collect left half done; the ledger is the truth, the archive is never touched.

    Temporary files of interrupted writes go; staged rows of files already batched go (killed before their
    removal); staged rows, quarantine records and batch files the ledger does not know go (killed before
    the commit: the landing file is still there and is ingested again, rewriting them).
    """
    for folder in (ws.archive_dir, ws.staged_dir, ws.quarantine_dir, ws.accepted_dir):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()
    files = {f.sha256[:16]: f.batch_id for f in ledger.files()}
    waiting = {stem for stem, batch_id in files.items() if batch_id is None}
    for staged in ws.staged_dir.glob("*.parquet"):
        if staged.stem not in waiting:
            staged.unlink()
    for record in ws.quarantine_dir.glob("*.jsonl"):
        if record.stem not in files:
            record.unlink()
    batches = {b.batch_id for b in ledger.batches()}
    for batch in ws.accepted_dir.glob("batch-*.parquet"):
        if batch.stem not in batches:
            batch.unlink()


def collect(ws: Workspace) -> CollectResult:
    """Ingest every file ready in the landing zone, then form the batches that have enough rows."""
    fs, _ = fsspec.core.url_to_fs(ws.landing)
    with hold(ws, "collect", wait=False), Ledger(ws.ledger_db) as ledger:
        recover(ws, ledger)
        ready, skipped = landing.survey(ws.landing, ws.settings.data.settle_seconds)
        outcomes = []
        for file in ready:
            try:
                data = landing.read(fs, file)
            except landing.NotReady as exc:  # left in place and reported; the next run tries again
                skipped.append(Skipped(file.name, str(exc)))
                continue
            outcome = ingest_file(ws, ledger, file.name, data)
            kill_point("collect:recorded")
            problem = landing.remove(fs, file)  # only now: its rows are durably staged and in the ledger
            kill_point("collect:removed")
            outcomes.append(replace(outcome, remarks=outcome.remarks + (problem,)) if problem else outcome)
        batches = form_batches(ws, ledger)
        write_stage_vars(ws.root)  # the DVC stages list every accepted batch, for the loop and a `dvc repro` alike
        held = sum(f.rows_accepted for f in ledger.unbatched_files())
        return CollectResult(outcomes, batches, skipped, held)


def nothing_new(ws: Workspace) -> bool:
    """Nothing for an iteration to do: no file waits in the landing zone and no batch waits to be learned. A run
    can say so without starting Prefect, MLflow or DVC (an idle `kaizen run` costs under a second)."""
    if landed_files(ws):
        return False
    with Ledger(ws.ledger_db) as ledger:
        return not ledger.batches(status="pending")


def next_batch(ws: Workspace) -> tuple[str, list[str]] | None:
    """The oldest batch not yet learned from, with every batch up to it; None when all are done. Batches set
    aside as failed (tasks/failures.py) are neither learned from nor among the batches before it."""
    with Ledger(ws.ledger_db) as ledger:
        batches = [b.batch_id for b in ledger.batches() if b.status != "failed"]
        pending = [b.batch_id for b in ledger.batches(status="pending")]
    if not pending:
        return None
    return pending[0], batches[: batches.index(pending[0]) + 1]
