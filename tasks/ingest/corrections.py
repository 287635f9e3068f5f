"""corrections: corrected labels as an input of their own, landed under `corrections/` in the landing zone.

A correction file has the columns of a data file (text, label; the same formats, read by the same reader) and
each row names a text already ingested (matched by its dedup key, tasks/formats/text.py text_key) and the
label it should have. It supersedes the text's earlier label, recorded with its lineage in the ledger (the
correction file's hash and name, the data file the text came from, old and new label, when); a row that
corrects nothing (a text never ingested, an unknown label, the label the text has already, a second row for
the same text) is quarantined with its reason, so rows in = applied + quarantined. A correction file is ingested
exactly once, as a data file is (collect, tasks/ingest/collect.py): archived, quarantine written, one ledger
commit, then removed from the landing zone.

The batches stay as ingested. Before each `dvc repro` the corrections are written from the ledger into one file
per batch (`data/corrections/<batch>.parquet`, key -> label), an input of that batch's `split` stage, which
applies them before splitting: a corrected batch gets new splits and md5s, so a new data version, and every
later replay sample, gate yardstick and `kaizen reproduce` sees the corrected labels. Written from the ledger,
they are the same on any machine of a shared loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kaizen.tasks.formats.reader import Chunk, read_chunks, short
from kaizen.tasks.ingest import landing
from kaizen.tasks.ingest.dedup import FileKeys
from kaizen.tasks.ingest.ingest_file import (
    CHUNK_ROWS,
    FileOutcome,
    QuarantineFile,
    Tally,
    archive_path,
    keys_path,
    quarantine_path,
    read_or_reason,
    share,
)
from kaizen.tasks.ingest.ledger import FileRecord, Ledger, now
from kaizen.tasks.ingest.validate import missing_columns, raw_record, usable_rows
from kaizen.tasks.workspace.faults import kill_point
from kaizen.tasks.workspace.files import commit_file, json_line, temporary, write_atomically
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.settings import DataSettings

FOLDER = "corrections"  # inside the landing zone (Workspace.corrections_landing)


@dataclass(frozen=True)
class Correction:
    """One text's label corrected by a correction file, with its lineage (the ledger's `corrections` table)."""
    key: str  # the text's dedup key
    text: str  # as the correction file wrote it
    source_sha256: str  # the data file that brought the text
    old_label: str | None  # its label until then (None: ingested before the ledger kept labels)
    new_label: str
    file_sha256: str  # the correction file
    file_name: str
    row: int  # in the correction file
    at: str = ""
    batch_id: str | None = None  # the batch the text is in (None while its rows wait in staging)
    applied_in: str | None = None  # the batch whose iteration first built a data version with it


# --- the ledger's corrections ---------------------------------------------------------------------------------
def corrections(ledger: Ledger, applied_in: str | None = None) -> list[Correction]:
    """Every correction in the order they were made, each with the batch its text is in; `applied_in`: only those
    first built into a data version by that batch's iteration."""
    rows = ledger.read(
        "SELECT c.key, c.text, c.source_sha256, c.old_label, c.new_label, c.file_sha256, c.file_name, c.row, c.at, "
        "f.batch_id, c.applied_in FROM corrections c LEFT JOIN files f ON f.sha256 = c.source_sha256 "
        f"{'WHERE c.applied_in=?' if applied_in else ''} ORDER BY c.id", (applied_in,) if applied_in else ())
    return [Correction(*row) for row in rows]


def correction_files(ledger: Ledger, sha256: str | None = None) -> list[FileRecord]:
    """The correction files ingested (or the one with that hash), oldest first; rows_accepted: rows applied."""
    where, args = ("WHERE sha256=?", (sha256,)) if sha256 else ("", ())
    return [FileRecord(*row) for row in ledger.read(
        f"SELECT sha256, name, rows_in, rows_applied, rows_quarantined, NULL FROM correction_files {where} "
        "ORDER BY ingested_at, sha256", args)]


def record_corrections(ledger: Ledger, record: FileRecord, size: int, applied: Path) -> None:
    """A correction file, the corrections it applied (streamed from `applied`, JSON Lines) and its delivery, in
    one commit."""
    with ledger.transaction() as db, open(applied, encoding="utf-8") as rows:
        at = now()
        db.execute("INSERT INTO correction_files (sha256, name, size, ingested_at, rows_in, rows_applied, "
                   "rows_quarantined) VALUES (?,?,?,?,?,?,?)", (record.sha256, record.name, size, at, record.rows_in,
                                                                 record.rows_accepted, record.rows_quarantined))
        db.executemany("INSERT INTO corrections (key, text, source_sha256, old_label, new_label, file_sha256, "
                       "file_name, row, at) VALUES (?,?,?,?,?,?,?,?,?)",
                       ((c["key"], c["text"], c["source_sha256"], c["old_label"], c["new_label"], record.sha256,
                         record.name, c["row"], at) for c in map(json.loads, rows)))
        db.execute("INSERT INTO deliveries (sha256, name, seen_at, outcome) VALUES (?,?,?,?)",
                   (record.sha256, record.name, at, "ingested"))
        kill_point("ledger:corrections-uncommitted")  # tests: a kill here must leave no trace of the file


def mark_applied(ledger: Ledger, batches: list[str], learning: str) -> None:
    """The corrections of texts in `batches` not yet built into a data version are now, by the one that
    `learning`'s iteration builds: its run records them."""
    with ledger.transaction() as db:
        db.executemany("UPDATE corrections SET applied_in=? WHERE applied_in IS NULL AND source_sha256 IN "
                       "(SELECT sha256 FROM files WHERE batch_id=?)", [(learning, b) for b in batches])


# --- the DVC stage's input ------------------------------------------------------------------------------------
def write_correction_files(ws: Workspace, ledger: Ledger, batches: list[str]) -> None:
    """Each batch's corrected labels (key -> the latest label) as its `split` stage reads them; every batch gets a
    file (DVC needs each dependency to exist), rewritten only when it changes (the data version stays)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    latest: dict[str, dict[str, str]] = {}
    for c in corrections(ledger):
        if c.batch_id is not None:
            latest.setdefault(c.batch_id, {})[c.key] = c.new_label
    for batch in batches:
        labels = latest.get(batch, {})
        keys = sorted(labels)  # one order, so the same corrections are the same bytes on any machine
        table = pa.table({"key": keys, "label": [labels[k] for k in keys]},
                         schema=pa.schema([("key", pa.string()), ("label", pa.string())]))
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        data, path = buffer.getvalue().to_pybytes(), ws.corrections_file(batch)
        if not path.exists() or path.read_bytes() != data:
            write_atomically(path, data)


# --- ingest ---------------------------------------------------------------------------------------------------
def applied_path(ws: Workspace) -> Path:
    """The corrections a file applies while it is read (loop state: one collect at a time; `recover` clears it)."""
    return ws.state_dir / ".corrections-applied.tmp"


def ingest_corrections(ws: Workspace, ledger: Ledger, name: str, incoming: Path, sha: str, size: int,
                       chunk_rows: int = CHUNK_ROWS) -> FileOutcome:
    """Ingest a correction file copied to `incoming` (which becomes its archive copy), in the order collect's
    exactly-once promise needs; the caller removes it from the landing zone afterwards."""
    name = landing.printable(name)
    known = correction_files(ledger, sha)
    if known:
        incoming.unlink()
        note = f"already ingested as {known[0].name}: nothing to do"
        ledger.record_delivery(sha, name, note)
        return FileOutcome(name, sha, 0, 0, 0, note)
    ws.quarantine_dir.mkdir(parents=True, exist_ok=True)
    quarantine, applied = quarantine_path(ws, sha), applied_path(ws)
    with FileKeys(keys_path(ws), size, pending=2 * chunk_rows) as seen:
        tally = _read(ws, ledger, name, sha, incoming, seen, chunk_rows)
    archived = archive_path(ws, sha, name)
    commit_file(incoming, archived)
    kill_point("collect:archived")
    if tally.quarantined:
        commit_file(temporary(quarantine), quarantine)
        kill_point("collect:quarantined")
    else:
        temporary(quarantine).unlink()
    share(ws, archived, None, quarantine if tally.quarantined else None)
    rows_in = tally.accepted + tally.quarantined
    record_corrections(ledger, FileRecord(sha, name, rows_in, tally.accepted, tally.quarantined, None), size, applied)
    applied.unlink()
    return FileOutcome(name, sha, rows_in, tally.accepted, tally.quarantined, "ingested", tally.reasons, tally.remarks)


def _read(ws: Workspace, ledger: Ledger, name: str, sha: str, path: Path, seen: FileKeys, chunk_rows: int) -> Tally:
    """Every row applied or quarantined; a file that cannot be read is one quarantined unit, as a data file is
    (tasks/ingest/ingest_file.py read_or_reason)."""
    read = read_or_reason(name, lambda columns: _judged(ws, ledger, name, sha, path, seen, chunk_rows, columns))
    if isinstance(read, Tally):
        return read
    seen.clear()
    applied_path(ws).write_text("", encoding="utf-8")
    tally = Tally()
    with QuarantineFile(temporary(quarantine_path(ws, sha)), name, sha, ws.settings.limits) as out:
        out.add([{"row": 0, "reason": read, "record": None}], tally)
    return tally


def _judged(ws: Workspace, ledger: Ledger, name: str, sha: str, path: Path, seen: FileKeys, chunk_rows: int,
            columns: list[str] | None) -> Tally:
    settings = ws.settings.data
    seen.clear()
    tally = Tally()
    with QuarantineFile(temporary(quarantine_path(ws, sha)), name, sha, ws.settings.limits) as out, \
            open(applied_path(ws), "w", encoding="utf-8", newline="\n") as kept:
        for chunk in read_chunks(path, name, (settings.text_column, settings.label_column), chunk_rows, columns,
                                 ws.settings.limits):
            applied, quarantined = judge_corrections(chunk, settings, ledger, seen)
            kept.writelines(json_line(asdict(c)) + "\n" for c in applied)
            out.add(quarantined, tally)
            tally.accepted += len(applied)
            tally.remarks = chunk.remarks
    return tally


def judge_corrections(chunk: Chunk, settings: DataSettings, ledger: Ledger,
                      seen: FileKeys) -> tuple[list[Correction], list[dict]]:
    """The rows of a chunk that correct a label, and every other row with its reason. `seen` holds the texts this
    file corrected in earlier chunks, and gets this chunk's."""
    missing = missing_columns(chunk, settings)
    if missing:
        return [], [{"row": i, "reason": missing, "record": raw_record(r)} for i, r in enumerate(chunk.rows, chunk.start)]
    candidates, quarantined = usable_rows(chunk, settings)
    keys = [key for _, _, _, key, _ in candidates]
    origins, earlier = ledger.key_origins(keys), seen.lookup(keys)
    fresh: dict[str, tuple[int, str]] = {}
    applied: list[Correction] = []
    for row, text, label, key, _ in candidates:  # a correction's capture id, if any, changes no lineage
        first = fresh.get(key) or earlier.get(key)
        if first:
            reason = f"corrects the same text as row {first[0]} of this file"
            reason += f", with another label ({short(first[1])} there)" if label != first[1] else ""
        elif key not in origins:
            reason = "no such text was ever ingested: nothing to correct (new rows go in the landing zone itself)"
        elif origins[key][1] == label:
            reason = f"already labeled {short(label)}: nothing to correct"
        else:
            fresh[key] = (row, label)
            applied.append(Correction(key, text, origins[key][0], origins[key][1], label, "", "", row))
            continue
        quarantined.append({"row": row, "reason": reason, "record": raw_record(chunk.rows[row - chunk.start])})
    seen.add([(key, row, label) for key, (row, label) in fresh.items()])
    quarantined.sort(key=lambda q: q["row"])
    return applied, quarantined
