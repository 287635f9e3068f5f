"""Files for the tests: label-balanced samples of the real data, landing a file (from a DataFrame or its bytes),
the bytes of CSV, JSON Lines and Parquet files built row by row, and what collect made of a landed file."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from kaizen.tasks.workspace.files import UNFINISHED, frame_bytes
from kaizen.tasks.workspace.layout import Workspace

HEADER = ("text", "label")


def sample(domain: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """A label-balanced sample of a real domain."""
    per_label = n // domain["label"].nunique()
    return (domain.groupby("label", group_keys=False)
            .apply(lambda g: g.sample(n=min(per_label, len(g)), random_state=seed))
            .sample(frac=1.0, random_state=seed).reset_index(drop=True)[["text", "label"]])


def land(where: Workspace | Path, name: str | bytes, data: pd.DataFrame | bytes) -> Path:
    """Write a file `name` into a workspace's landing zone, or into a folder: `data` as it is, or a DataFrame in
    the format the name ends in (after a `.part` or `.tmp` of a file still being written). Its path."""
    folder = Path(where.landing) if isinstance(where, Workspace) else Path(where)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, pd.DataFrame):
        written = os.fsdecode(name)
        for ending in UNFINISHED:
            written = written.removesuffix(ending)
        data = frame_bytes(data, written)
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), os.fsencode(name))))  # a name that is not UTF-8 too
    path.write_bytes(data)
    return path


def records(rows: list[tuple]) -> list[dict]:
    """(text, label) rows as JSON records."""
    return [{"text": text, "label": label} for text, label in rows]


def csv_bytes(rows: list[tuple], header: tuple = HEADER, delimiter: str = ",") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def jsonl_bytes(records: list[Any]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def parquet_bytes(rows: pd.DataFrame | list[tuple]) -> bytes:
    """A DataFrame, or (text, label) rows, as a Parquet file."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=list(HEADER))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quarantine_records(ws: Workspace, data: bytes) -> list[dict]:
    """The quarantine records collect wrote for the file of `data` (none: [])."""
    path = ws.quarantine_dir / f"{sha256(data)[:16]}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def digests(folder: Path) -> dict[str, str]:
    """Every file under `folder`, by its relative path: the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): sha256(p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}
