"""collect: ingest labeled files from the landing zone exactly once, quarantining bad rows with a reason.

Per file, in this order, so that a kill at any point loses nothing and ingests nothing twice: archive the
raw bytes, write accepted rows to staging and rejected rows to quarantine (each atomically), commit the file
to the ledger (keyed by content hash), and only then remove it from the landing zone. A file whose commit
never happened is simply ingested again (every write is deterministic); one whose commit happened is found
"already ingested" and removed. Staged rows become a batch once at least `min_batch_rows` have arrived; until
then they wait, whatever their number. `recover` clears what a killed run left half written.

A file of any size is read in chunks (tasks/ingest/ingest_file.py): it is copied from the landing zone and hashed in
pieces, then read, judged and written `chunk_rows` rows at a time into temporaries that are committed, in the
order above, only once the whole file has been read. Memory follows the chunk, not the file.

Files under the landing zone's `corrections/` are corrected labels (tasks/ingest/corrections.py), collected the
same way after the data files, whose rows they may correct.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
import yaml

from kaizen.tasks.ingest import landing
from kaizen.tasks.ingest.corrections import (
    FOLDER,
    applied_path,
    correction_files,
    ingest_corrections,
    write_correction_files,
)
from kaizen.tasks.ingest.ingest_file import (
    CHUNK_ROWS,
    FileOutcome,
    archive_path,
    incoming_path,
    ingest_copy,
    ingest_file,
    keys_path,
    staged_path,
)
from kaizen.tasks.ingest.landing import Skipped
from kaizen.tasks.ingest.ledger import FileRecord, Ledger
from kaizen.tasks.workspace.faults import kill_point
from kaizen.tasks.workspace.files import commit_file, temporary
from kaizen.tasks.workspace.layout import Workspace, hold
from kaizen.tasks.workspace.objects import ObjectStore, md5_of
from kaizen.tasks.workspace.repo import write_stage_vars

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["KILL_POINTS", "CollectResult", "FileOutcome", "archive_path", "collect", "form_batches", "ingest_file",
           "landed_files", "next_batch", "nothing_new", "recover"]
logger = logging.getLogger(__name__)

# Where a kill is injected in tests (tasks/workspace/faults.py), in the order a collect reaches them.
KILL_POINTS = ("atomic:written", "collect:archived", "collect:staged", "collect:quarantined", "collect:shared",
               "ledger:file-uncommitted", "collect:recorded", "collect:removed", "collect:batch-written",
               "ledger:batch-uncommitted", "collect:batch-recorded")


@dataclass(frozen=True)
class CollectResult:
    files: list[FileOutcome]
    new_batches: list[str]
    skipped: list[Skipped] = field(default_factory=list)  # landed entries not read this run, and why
    held_rows: int = 0  # accepted rows waiting in staging for `min_batch_rows`
    corrections: list[FileOutcome] = field(default_factory=list)  # correction files; rows_accepted: rows applied

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
        lines = [_line(f, "rows accepted") for f in self.files] + [_line(f, "labels corrected") for f in self.corrections]
        lines += [f"{s.name}: not collected: {s.reason}" for s in self.skipped]
        if self.held_rows:
            lines.append(f"{self.held_rows} accepted rows wait in staging for enough to form a batch")
        return lines


def _line(f: FileOutcome, done: str) -> str:
    why = "; ".join(f"{n} x {reason}" for reason, n in f.reasons.items())
    line = f"{f.name}: {f.note}" if f.note != "ingested" else (
        f"{f.name}: {f.rows_accepted} of {f.rows_in} {done}" + (f", quarantined: {why}" if why else ""))
    return line + "".join(f" ({remark})" for remark in f.remarks)


def landed_files(ws: Workspace) -> list[str]:
    """The names of the files waiting in the landing zone, oldest name first, then of the correction files waiting
    in its `corrections/`; hidden and partial files are not ready yet."""
    return ([f.name for f in landing.survey(ws.landing, settle_seconds=0)[0]] +
            [f"{FOLDER}/{f.name}" for f in landing.survey(ws.corrections_landing, settle_seconds=0)[0]])


def form_batches(ws: Workspace, ledger: Ledger) -> list[str]:
    """Turn staged rows into batches of at least `min_batch_rows`; fewer wait for more to arrive."""
    formed: list[str] = []
    group: list[FileRecord] = []
    for record in ledger.unbatched_files():
        group.append(record)
        if sum(r.rows_accepted for r in group) < ws.settings.data.min_batch_rows:
            continue
        batch_id, store = ledger.next_batch_id(), ws.object_store
        staged = [_staged_here(ws, store, r) for r in group]
        batch_file = ws.batch_file(batch_id)
        rows = _concatenated(staged, batch_file)
        md5 = None
        if store is not None:  # any machine restores the batch from here, verified by the md5 the ledger keeps
            md5 = md5_of(batch_file)
            store.put(batch_file, ws.object_key(batch_file))
        kill_point("collect:batch-written")
        ledger.record_batch(batch_id, rows, [r.sha256 for r in group], md5)
        kill_point("collect:batch-recorded")
        for path in staged:
            path.unlink(missing_ok=True)
            if store is not None:
                store.remove(ws.object_key(path))
        formed.append(batch_id)
        group = []
    return formed


def _staged_here(ws: Workspace, store: ObjectStore | None, record: FileRecord) -> Path:
    """A file's staged rows on this disk: fetched from the shared loop's object store when another machine
    ingested the file (verified against the md5 its ledger record holds)."""
    path = staged_path(ws, record.sha256)
    if not path.exists() and store is not None:
        store.fetch(ws.object_key(path), path, record.staged_md5)
    return path


def _concatenated(parts: list[Path], path: Path) -> int:
    """The staged files one after the other in one Parquet file, written atomically a row group at a time
    (a batch of millions of rows never sits in memory); its number of rows."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, rows = temporary(path), 0
    schema = _batch_schema(parts)
    writer: pq.ParquetWriter | None = None
    try:
        for part in parts:
            source = pq.ParquetFile(part)
            writer = writer or pq.ParquetWriter(tmp, schema)
            # By row group (staged ones hold a chunk each): iter_batches keeps what it read until the file is closed
            for group in range(source.num_row_groups):
                table = _conformed(source.read_row_group(group), schema)
                writer.write_table(table)
                rows += table.num_rows
                del table
    finally:
        if writer is not None:
            writer.close()
    commit_file(tmp, path)
    return rows


def _batch_schema(parts: list[Path]) -> pa.Schema:
    """The first staged file's columns, then any column only a later one has: files staged by an older kaizen lack
    `capture_id`, and the batch keeps it for the rows that have one."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(parts[0])
    for part in parts[1:]:
        for column in pq.read_schema(part):
            if column.name not in schema.names:
                schema = schema.append(column)
    return schema


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A staged row group with the batch's columns (null where it lacks one) and types (an older kaizen's may
    differ)."""
    import pyarrow as pa

    for column in schema:
        if column.name not in table.column_names:
            table = table.append_column(column, pa.nulls(len(table), column.type))
    table = table.select(schema.names)
    return table if table.schema.equals(schema) else table.cast(schema)


def recover(ws: Workspace, ledger: Ledger) -> None:
    """Clear what a killed collect left half done; the ledger is the truth, the archive is never touched.

    Temporary files of interrupted writes go; staged rows of files already batched go (killed before their
    removal); staged rows, quarantine records and batch files the ledger does not know go (killed before
    the commit: the landing file is still there and is ingested again, rewriting them).
    """
    for folder in (ws.archive_dir, ws.staged_dir, ws.quarantine_dir, ws.accepted_dir):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()
    keys_path(ws).unlink(missing_ok=True)
    applied_path(ws).unlink(missing_ok=True)
    files = {f.sha256[:16]: f.batch_id for f in ledger.files()}
    waiting = {stem for stem, batch_id in files.items() if batch_id is None}
    for staged in ws.staged_dir.glob("*.parquet"):
        if staged.stem not in waiting:
            staged.unlink()
    corrected = {f.sha256[:16] for f in correction_files(ledger)}
    for record in ws.quarantine_dir.glob("*.jsonl"):
        if record.stem not in files and record.stem not in corrected:
            record.unlink()
    batches = {b.batch_id for b in ledger.batches()}
    for batch in ws.accepted_dir.glob("batch-*.parquet"):
        if batch.stem not in batches:
            batch.unlink()


def collect(ws: Workspace, chunk_rows: int = CHUNK_ROWS) -> CollectResult:
    """Ingest every file ready in the landing zone, then every correction file under its `corrections/` (after the
    rows they may correct), then form the batches that have enough rows. Files are read `chunk_rows` rows at a
    time: memory follows the chunk, not the file."""
    with hold(ws, "collect", wait=False), Ledger(ws.ledger_db) as ledger:
        recover(ws, ledger)
        outcomes, skipped = _ingest_landed(ws, ledger, ws.landing, "", ingest_copy, chunk_rows)
        fixes, skipped_fixes = _ingest_landed(ws, ledger, ws.corrections_landing, f"{FOLDER}/", ingest_corrections,
                                              chunk_rows)
        batches = form_batches(ws, ledger)
        # The DVC stages list every accepted batch and read its corrections, for the loop and a `dvc repro` alike
        stage_vars = yaml.safe_load(write_stage_vars(ws.root).read_text(encoding="utf-8"))
        write_correction_files(ws, ledger, stage_vars["batches"])
        held = sum(f.rows_accepted for f in ledger.unbatched_files())
        return CollectResult(outcomes, batches, skipped + skipped_fixes, held, fixes)


def _ingest_landed(ws: Workspace, ledger: Ledger, zone: str, prefix: str, ingest: Callable[..., FileOutcome],
                   chunk_rows: int) -> tuple[list[FileOutcome], list[Skipped]]:
    """Each file ready in `zone` ingested by `ingest` (its name shown with `prefix`), then removed from it."""
    fs, _ = fsspec.core.url_to_fs(zone)
    ready, skipped = landing.survey(zone, ws.settings.data.settle_seconds)
    skipped = [replace(s, name=prefix + s.name) for s in skipped]
    outcomes = []
    for file in ready:
        incoming = incoming_path(ws)  # copied first: the bytes read are the bytes archived, hashed and parsed
        try:
            sha, size = landing.fetch(fs, file, incoming)
        except landing.NotReady as exc:  # left in place and reported; the next run tries again
            incoming.unlink(missing_ok=True)
            skipped.append(Skipped(prefix + file.name, str(exc)))
            continue
        outcome = ingest(ws, ledger, prefix + file.name, incoming, sha, size, chunk_rows)
        kill_point("collect:recorded")
        problem = landing.remove(fs, file)  # only now: its rows are durably staged and in the ledger
        kill_point("collect:removed")
        outcomes.append(replace(outcome, remarks=outcome.remarks + (problem,)) if problem else outcome)
    return outcomes, skipped


def nothing_new(ws: Workspace) -> bool:
    """Nothing for an iteration to do: no file waits in the landing zone and no batch waits to be learned. A run
    can say so without starting Prefect, MLflow or DVC (an idle `kaizen run` costs under a second)."""
    if landed_files(ws):
        return False
    with Ledger(ws.ledger_db) as ledger:
        return not ledger.batches(status="pending")


def next_batch(ws: Workspace) -> tuple[str, list[str]] | None:
    """The oldest batch not yet learned from, with every batch up to it; None when all are done. Batches set
    aside as failed (tasks/operate/failures.py) are neither learned from nor among the batches before it."""
    with Ledger(ws.ledger_db) as ledger:
        batches = [b.batch_id for b in ledger.batches() if b.status != "failed"]
        pending = [b.batch_id for b in ledger.batches(status="pending")]
    if not pending:
        return None
    return pending[0], batches[: batches.index(pending[0]) + 1]
