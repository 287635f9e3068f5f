"""validate: a file's raw rows -> the rows a model can learn from, once each, and every other row with its reason.

A row is judged on its own (its text and label) and against every row seen before it, in this file and in
every file already ingested (the ledger's row keys): a text that differs only in case or spacing is the
same example.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from kaizen.tasks.ledger import Ledger
from kaizen.tasks.parse import Table, encodable, plain, short
from kaizen.tasks.settings import DataSettings
from kaizen.tasks.text import text_key

NA_MARKERS = {"nan", "null", "none", "na", "n/a", "#n/a", "<na>"}  # what spreadsheets and pandas write for "no value"


ACCEPTED_COLUMNS = ["text", "label", "source", "source_row", "label_given"]


@dataclass(frozen=True)
class Verdict:
    accepted: pd.DataFrame  # ACCEPTED_COLUMNS: label_given is the label as the file wrote it, before label_map
    quarantined: list[dict]  # row, reason, record
    keys: list[tuple[str, int]]  # dedup key and row of every accepted row
    remarks: tuple[str, ...] = ()  # what was done to the rows that a user should know (labels mapped)


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


def judge(table: Table, name: str, settings: DataSettings, ledger: Ledger) -> Verdict:
    """Accept the rows a model can learn from, once each; quarantine every other row with its reason."""
    raw = [{k: plain(v) for k, v in row.record.items()} for row in table.rows]
    missing = [c for c in (settings.text_column, settings.label_column) if c not in table.columns]
    if missing:
        reason = f"missing column(s) {missing}; the file has {short(table.columns, 300)}"
        if any(d in c for c in table.columns for d in ",;\t|"):
            reason += " (wrong delimiter? a column name holds a delimiter)"
        return Verdict(pd.DataFrame(), [{"row": i, "reason": reason, "record": r} for i, r in enumerate(raw, 1)], [])

    candidates: list[tuple[int, str, str, str]] = []  # row, text, label, key
    quarantined: list[dict] = []
    for i, row in enumerate(table.rows, 1):
        text, label = row.record[settings.text_column], mapped(row.record[settings.label_column], settings.label_map)
        reason = row.problem or row_problem(text, label, settings)
        if reason:
            quarantined.append({"row": i, "reason": reason, "record": raw[i - 1]})
        else:
            candidates.append((i, text, label, text_key(text)))

    already = ledger.known_keys([key for *_, key in candidates])
    seen: dict[str, tuple[int, str]] = {}
    accepted, keys = [], []
    for row, text, label, key in candidates:
        if key in seen:
            first, first_label = seen[key]
            reason = f"duplicate of row {first} of this file"
            reason += f", with another label ({short(first_label)} there)" if label != first_label else ""
        elif key in already:
            origin = ledger.file(already[key])
            reason = f"duplicate of a row already ingested from {origin.name if origin else already[key]}"
        else:
            seen[key] = (row, label)
            given = str(raw[row - 1][settings.label_column])
            accepted.append({"text": text, "label": label, "source": name, "source_row": row, "label_given": given})
            keys.append((key, row))
            continue
        quarantined.append({"row": row, "reason": reason, "record": raw[row - 1]})
    quarantined.sort(key=lambda q: q["row"])
    frame = pd.DataFrame(accepted, columns=ACCEPTED_COLUMNS)
    return Verdict(frame, quarantined, keys, _mapping_remarks(frame))


def _mapping_remarks(accepted: pd.DataFrame) -> tuple[str, ...]:
    """One remark naming every label mapping applied to the accepted rows, with its number of rows."""
    changed = accepted[accepted["label_given"] != accepted["label"]]
    if changed.empty:
        return ()
    counts = changed.groupby(["label_given", "label"]).size()
    shown = ", ".join(f"{given!r} -> {label!r} ({n} rows)" for (given, label), n in counts.items())
    return (f"labels mapped by data.label_map: {shown}",)
