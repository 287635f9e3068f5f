"""validate: a file's raw rows -> the rows a model can learn from, once each, and every other row with its reason.

A row is judged on its own (its text and label) and against every row seen before it, in this file and in
every file already ingested (the ledger's row keys): a text that differs only in case or spacing is the
same example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from kaizen.tasks.formats.reader import Chunk, RawRow, encodable, plain, short
from kaizen.tasks.formats.text import text_key
from kaizen.tasks.ingest.dedup import FileKeys
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.workspace.settings import DataSettings

NA_MARKERS = {"nan", "null", "none", "na", "n/a", "#n/a", "<na>"}  # what spreadsheets and pandas write for "no value"


# capture_id: the captured text a row labels, when it came back from a labeling queue (`kaizen select`), else null
ACCEPTED_COLUMNS = ["text", "label", "source", "source_row", "label_given", "capture_id"]
CAPTURE_COLUMN = "capture_id"  # an optional column of a landed file, kept with each accepted row
CAPTURE_ID = re.compile(r"[0-9a-f]{32}")  # as tasks/serving/capture.py's `record` makes them (uuid4().hex)


@dataclass(frozen=True)
class Verdict:
    accepted: pd.DataFrame  # ACCEPTED_COLUMNS: label_given is the label as the file wrote it, before label_map
    quarantined: list[dict]  # row, reason, record
    mappings: dict[tuple[str, str], int] = field(default_factory=dict)  # (label given, label) -> rows, where they differ


def mapped(label: object, label_map: dict[str, str]) -> object:
    """The label `data.label_map` gives a label as written (a number is matched as text: 1 and "1" alike)."""
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        return label
    return label_map.get(str(label), label)


def row_problem(text: object, label: object, settings: DataSettings) -> str | None:
    """Why a row's text and label cannot be learned from; None when they can."""
    if not isinstance(text, str):
        return "missing text" if plain(text) is None else f"text is not a string ({type(text).__name__})"
    if not text.strip():
        return "empty text"
    if text.strip().casefold() in NA_MARKERS:
        return f"missing text ({text.strip()!r} marks a missing value)"
    if len(text) > settings.max_text_chars:
        return f"text longer than {settings.max_text_chars} characters ({len(text)})"
    if not encodable(text):
        return "text is not valid Unicode (it holds a lone surrogate)"
    if plain(label) is None or (isinstance(label, str) and not label.strip()):
        return "missing label"
    if not isinstance(label, str) or label not in settings.labels:
        return f"unknown label {short(label)} (expected one of {sorted(settings.labels)})"
    return None


def capture_of(value: object) -> tuple[str | None, str | None]:
    """The capture id a row names (None when its cell is empty or missing) and why it is not one (None when it is):
    a row that claims a capture it cannot name is quarantined, never learned with a made-up lineage."""
    if plain(value) is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, str) and CAPTURE_ID.fullmatch(value.strip()):
        return value.strip(), None
    return None, f"{CAPTURE_COLUMN} {short(value)} is not a capture id (32 hex digits, as `kaizen select` wrote it)"


def missing_columns(chunk: Chunk, settings: DataSettings) -> str | None:
    """Why no row of the chunk can be judged: the text or label column is missing (None when both are there)."""
    missing = [c for c in (settings.text_column, settings.label_column) if c not in chunk.columns]
    if not missing:
        return None
    reason = f"missing column(s) {missing}; the file has {short(chunk.columns, 300)}"
    if any(d in c for c in chunk.columns for d in ",;\t|"):
        reason += " (wrong delimiter? a column name holds a delimiter)"
    return reason


def usable_rows(chunk: Chunk, settings: DataSettings) -> tuple[list[tuple[int, str, str, str, str | None]], list[dict]]:
    """The rows of a chunk whose text and label a model can learn from, as (row, text, label, dedup key, capture
    id), and every other row with its reason, judged each on its own (the columns are there)."""
    candidates: list[tuple[int, str, str, str, str | None]] = []  # row, text, label, key, capture id
    quarantined: list[dict] = []
    for i, raw in enumerate(chunk.rows, chunk.start):
        text, label = raw.record[settings.text_column], mapped(raw.record[settings.label_column], settings.label_map)
        capture, bad_capture = capture_of(raw.record.get(CAPTURE_COLUMN))
        problem = raw.problem or row_problem(text, label, settings) or bad_capture
        if problem:
            quarantined.append({"row": i, "reason": problem, "record": raw_record(raw)})
        else:
            assert isinstance(label, str), "row_problem passes only a label of data.labels"
            candidates.append((i, text, label, text_key(text), capture))
    return candidates, quarantined


def judge(chunk: Chunk, name: str, settings: DataSettings, ledger: Ledger, seen: FileKeys) -> Verdict:
    """Accept the rows of a chunk a model can learn from, once each; quarantine every other row with its reason.
    `seen` holds the rows this file accepted in earlier chunks, and gets this chunk's."""
    missing = missing_columns(chunk, settings)
    if missing:
        return Verdict(pd.DataFrame(), [{"row": i, "reason": missing, "record": raw_record(r)}
                                        for i, r in enumerate(chunk.rows, chunk.start)])

    candidates, quarantined = usable_rows(chunk, settings)
    keys = [key for _, _, _, key, _ in candidates]
    already = ledger.key_origins(keys)
    earlier = seen.lookup(keys)  # accepted in an earlier chunk of this file
    fresh: dict[str, tuple[int, str, str | None]] = {}  # accepted in this chunk: row, label, capture id
    accepted: dict[str, list] = {c: [] for c in ACCEPTED_COLUMNS}  # by column: a frame of lists is built fast
    counts: dict[tuple[str, str], int] = {}
    for row, text, label, key, capture in candidates:
        first = fresh.get(key) or earlier.get(key)
        if first:
            reason = f"duplicate of row {first[0]} of this file"
            reason += f", with another label ({short(first[1])} there)" if label != first[1] else ""
        elif key in already:
            reason = already_ingested(ledger, already[key][0], already[key][1], label)
        else:
            fresh[key] = (row, label, capture)
            given = str(plain(chunk.rows[row - chunk.start].record[settings.label_column]))
            for column, value in zip(ACCEPTED_COLUMNS, (text, label, name, row, given, capture), strict=True):
                accepted[column].append(value)
            if given != label:
                counts[(given, label)] = counts.get((given, label), 0) + 1
            continue
        quarantined.append({"row": row, "reason": reason, "record": raw_record(chunk.rows[row - chunk.start])})
    seen.add([(key, *kept) for key, kept in fresh.items()])
    quarantined.sort(key=lambda q: q["row"])
    return Verdict(pd.DataFrame(accepted, columns=ACCEPTED_COLUMNS), quarantined, counts)


def already_ingested(ledger: Ledger, sha: str, there: str | None, here: str) -> str:
    """Why a row whose text an earlier file brought is refused: a repeat, or a label that disagrees, which only a
    correction file changes (tasks/ingest/corrections.py)."""
    origin = ledger.file(sha)
    reason = f"duplicate of a row already ingested from {origin.name if origin else sha}"
    if there is not None and there != here:
        reason += (f", with a different label ({short(there)} there, {short(here)} here): land it under "
                   "corrections/ to correct it")
    return reason


def raw_record(row: RawRow) -> dict:
    """A row's cells as its quarantine record keeps them."""
    return {k: plain(v) for k, v in row.record.items()}


def mapping_remarks(counts: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """One remark naming every label mapping applied to the accepted rows, with its number of rows."""
    if not counts:
        return ()
    shown = ", ".join(f"{given!r} -> {label!r} ({n} rows)" for (given, label), n in sorted(counts.items()))
    return (f"labels mapped by data.label_map: {shown}",)
