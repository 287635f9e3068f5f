"""capture: every text the served model (`kaizen serve-model`) and the batch scorer (`kaizen score`, the scoring
deployment) answered, kept for the loop's later checks (drift on live traffic, choosing texts to label), which read
it through `read_captures` alone.

One record per answered text: `capture_id`, `time` (UTC), `source` ("serve" or "score"), `model_version`, `text`
(null unless capture.keep_text), `text_sha256`, `prediction`, `reason` (why there is no label) and the
probabilities as two list columns, `labels` and `probabilities`, in the model's class order: a label set that grows
changes the values, never the schema, so files written before and after it read as one table (`p_<label>` columns
would differ from file to file).

Records are Parquet files at Workspace.captures, under `day=YYYY-MM-DD/` (UTC), one file per flush and day, named
by the time of its last record: a local file is written atomically, an object in one PUT. The writer samples
(capture.sample_rate), buffers and writes on a thread of its own, so the caller's whole cost is a queue put; it
deletes the days past capture.retention_days once a day. Reading never deletes.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kaizen.tasks.workspace.files import write_atomically
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.redact import redact

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

logger = logging.getLogger(__name__)

SOURCES = ("serve", "score")
NAME_TIME = "%Y%m%dT%H%M%S%fZ"  # a file's name starts with the time of its last record
# Answers waiting for the writer's thread, at most: past it (a store that hangs) answers are dropped and counted,
# never held without bound, and the caller never waits.
PENDING = 10_000
# How often the writer's thread takes what waits. It polls rather than being woken by each answer, and seldom: each
# wake-up takes the GIL from a request being answered, which on busy cores can cost that request milliseconds.
# At most PENDING answers arrive in between (10,000 a second).
POLL_SECONDS = 1.0
# The texts and the model's answers (one dict per text), decoded on the writer's thread, off the request path.
Answers = Callable[[], tuple[Sequence[Any], Sequence[dict]]]


def schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("capture_id", pa.string()), ("time", pa.timestamp("us", tz="UTC")), ("source", pa.string()),
                      ("model_version", pa.string()), ("text", pa.string()), ("text_sha256", pa.string()),
                      ("prediction", pa.string()), ("reason", pa.string()), ("labels", pa.list_(pa.string())),
                      ("probabilities", pa.list_(pa.float64()))])


def record(text: Any, answer: dict, at: datetime, source: str, version: str, keep_text: bool) -> dict:
    """One text's record. A text that is no string (a number, a null) has neither text nor hash: its reason says."""
    labels = [key[2:] for key in answer if key.startswith("p_")]
    given = [answer[f"p_{label}"] for label in labels]
    known = bool(given) and all(p is not None and p == p for p in given)  # None, or NaN from a DataFrame
    is_text = isinstance(text, str)
    # A lone surrogate (JSON allows "\ud800") has no UTF-8: escaped, so one odd text never fails a whole file.
    data = text.encode("utf-8", "backslashreplace") if is_text else b""
    return {"capture_id": uuid.uuid4().hex, "time": at, "source": source, "model_version": version,
            "text": data.decode("utf-8") if is_text and keep_text else None,
            "text_sha256": hashlib.sha256(data).hexdigest() if is_text else None,
            "prediction": _text(answer.get("prediction")), "reason": _text(answer.get("reason")),
            "labels": labels, "probabilities": [float(p) for p in given] if known else None}


def _text(value: Any) -> str | None:
    """A label or a reason as text; a missing one as null, however the answer spelt it (None, or NaN from a frame)."""
    return value if isinstance(value, str) else None


@dataclass
class CaptureStats:
    texts: int = 0  # answered texts the writer decoded
    written: int = 0  # records written (after sampling)
    files: int = 0
    dropped: int = 0  # answers dropped unread: the writer was PENDING answers behind
    lost: int = 0  # records a failed write could not keep
    failures: int = 0  # errors met (each logged with its traceback)


class CaptureWriter:
    """Records the answers of one server or scoring run: `submit` never blocks and never raises (an append to a
    deque, which the GIL keeps whole); a thread decodes, samples and writes every capture.flush_rows records or
    capture.flush_seconds, and at `close`."""

    def __init__(self, ws: Workspace, source: str, model_version: str, pending: int = PENDING) -> None:
        if source not in SOURCES:
            raise ValueError(f"a capture's source is one of {SOURCES}, not {source!r}")
        self.ws, self.source, self.version, self.settings = ws, source, str(model_version), ws.settings.capture
        self.stats = CaptureStats()
        self._inbox: deque[tuple[float, Answers]] = deque()
        self._pending, self._closing = pending, threading.Event()
        self._sampler = random.Random()
        self._pruned: date | None = None
        self._thread = threading.Thread(target=self._run, name=f"kaizen-capture-{source}", daemon=True)
        self._thread.start()

    def submit(self, answers: Answers, at: float | None = None) -> None:
        """Hand over one request's (or chunk's) answers, answered at `at` (now by default)."""
        if len(self._inbox) < self._pending:
            self._inbox.append((time.time() if at is None else at, answers))
            return
        self.stats.dropped += 1
        if self.stats.dropped in (1, 10) or self.stats.dropped % 1000 == 0:  # loud, yet not once per request
            logger.error("capture: the writer is %d answers behind (%s): %d answer(s) dropped so far, not recorded",
                         self._pending, redact(self.ws.captures), self.stats.dropped)

    def close(self) -> CaptureStats:
        """Write what waits and stop the thread (the server's shutdown, the end of a scoring run)."""
        self._closing.set()
        self._thread.join()
        return self.stats

    def _run(self) -> None:
        records: list[dict] = []
        due = time.monotonic() + self.settings.flush_seconds
        while True:
            closing = self._closing.wait(min(POLL_SECONDS, max(due - time.monotonic(), 0.0)))
            while self._inbox:
                records += self._records(*self._inbox.popleft())
                if len(records) >= self.settings.flush_rows:
                    self._flush(records)
                    records = []
            if closing:
                break
            if time.monotonic() >= due:
                self._flush(records)
                records, due = [], time.monotonic() + self.settings.flush_seconds
        self._flush(records)

    # A failure below is the capture's, never the answer's (it went out already): logged with its traceback and
    # counted, and the writer carries on.
    def _records(self, at: float, answers: Answers) -> list[dict]:
        try:
            texts, answered = answers()
            when, rate = datetime.fromtimestamp(at, UTC), self.settings.sample_rate
            kept = [record(text, answer, when, self.source, self.version, self.settings.keep_text)
                    for text, answer in zip(texts, answered, strict=True) if self._sampler.random() < rate]
            self.stats.texts += len(texts)
            return kept
        except Exception:
            self.stats.failures += 1
            logger.exception("capture: the answers of one %s request could not be read; not recorded", self.source)
            return []

    def _flush(self, records: list[dict]) -> None:
        now = datetime.now(UTC)
        if self._pruned != now.date():
            try:
                prune(self.ws, now)
                self._pruned = now.date()
            except Exception:
                self.stats.failures += 1
                logger.exception("capture: the days past retention could not be deleted from %s",
                                 redact(self.ws.captures))
        for day in sorted({r["time"].date() for r in records}):
            of_day = [r for r in records if r["time"].date() == day]
            try:
                self._write(of_day, day)
                self.stats.files, self.stats.written = self.stats.files + 1, self.stats.written + len(of_day)
            except Exception:
                self.stats.failures, self.stats.lost = self.stats.failures + 1, self.stats.lost + len(of_day)
                logger.exception("capture: %d record(s) could not be written to %s; they are lost", len(of_day),
                                 redact(self.ws.captures))

    def _write(self, records: list[dict], day: date) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(records, schema=schema()), buffer)
        name = f"{max(r['time'] for r in records):{NAME_TIME}}-{uuid.uuid4().hex[:12]}.parquet"
        if "://" not in self.ws.captures:  # a folder: whole or absent for a reader, after a kill too
            write_atomically(Path(self.ws.captures) / f"day={day}" / name, buffer.getvalue().to_pybytes())
            return
        fs, root = _location(self.ws)
        fs.makedirs(f"{root}/day={day}", exist_ok=True)
        fs.pipe_file(f"{root}/day={day}/{name}", buffer.getvalue().to_pybytes())  # one PUT: whole or absent


def writer(ws: Workspace, source: str, model_version: str) -> CaptureWriter | None:
    """A writer for `source`, or None when capture.enabled is false."""
    return CaptureWriter(ws, source, model_version) if ws.settings.capture.enabled else None


def _location(ws: Workspace) -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(ws.captures)
    fs.invalidate_cache(root)  # s3fs would answer listings from a cache filled before another writer's files
    return fs, root.rstrip("/")


def _days(fs: Any, root: str) -> Iterator[tuple[date, str]]:
    """Each day's folder, oldest first; a name kaizen did not write is an error, never silently passed over."""
    try:
        found = fs.ls(root, detail=False)
    except FileNotFoundError:
        return
    for path in sorted(found):
        name = PurePosixPath(path).name
        if name.startswith((".", "_")):  # a temporary file of write_atomically
            continue
        try:
            day = date.fromisoformat(name.removeprefix("day=")) if name.startswith("day=") else None
        except ValueError:
            day = None
        if day is None:
            raise ValueError(f"{redact(path)}: not a day of captures (day=YYYY-MM-DD)")
        yield day, path


def prune(ws: Workspace, now: datetime) -> list[date]:
    """Delete the days of captures that lie wholly before `now` - capture.retention_days; the days deleted. The
    writer calls it once a day (a reader never deletes: it may hold read-only credentials)."""
    fs, root = _location(ws)
    cutoff = (now - timedelta(days=ws.settings.capture.retention_days)).date()
    old = [(day, path) for day, path in _days(fs, root) if day < cutoff]
    for _, path in old:
        fs.rm(path, recursive=True)
    return [day for day, _ in old]


def _files(fs: Any, root: str, since: datetime | None, until: datetime | None) -> list[tuple[datetime, str]]:
    """(time of its last record, path) of each file of the days that may hold records in [since, until), latest
    first."""
    found = []
    for day, folder in _days(fs, root):
        if (since and day < since.astimezone(UTC).date()) or (until and day > until.astimezone(UTC).date()):
            continue
        for path in fs.ls(folder, detail=False):
            name = PurePosixPath(path).name
            if name.startswith((".", "_")):
                continue
            try:
                found.append((datetime.strptime(name.split("-")[0], NAME_TIME).replace(tzinfo=UTC), path))
            except ValueError as exc:
                raise ValueError(f"{redact(path)}: not a file of captures ({NAME_TIME}-ID.parquet)") from exc
    return sorted(found, reverse=True)


def read_captures(ws: Workspace, since: datetime | None = None, until: datetime | None = None,
                  limit_rows: int = 100_000) -> pd.DataFrame:
    """The records with since <= time < until (each bound optional, timezone-aware), the latest `limit_rows` of
    them, oldest first: the columns of `schema()` (`labels` and `probabilities` hold arrays). Files are read latest
    first and reading stops once no file left can hold a later record, so memory follows `limit_rows`, not the
    history."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if any(bound is not None and bound.tzinfo is None for bound in (since, until)):
        raise ValueError("read_captures: since and until must be timezone-aware (datetime.now(UTC), not now())")
    if limit_rows < 1:
        raise ValueError(f"read_captures: limit_rows must be at least 1, got {limit_rows}")
    fs, root = _location(ws)
    tables: list[pa.Table] = []
    kept, earliest = 0, None  # rows read so far, and the earliest time among them
    for last, path in _files(fs, root, since, until):
        if kept >= limit_rows and earliest is not None and last < earliest:
            break  # this file and every one after it end before all of the rows already read
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
        if since is not None:
            table = table.filter(pc.field("time") >= pa.scalar(since, pa.timestamp("us", tz="UTC")))
        if until is not None:
            table = table.filter(pc.field("time") < pa.scalar(until, pa.timestamp("us", tz="UTC")))
        if table.num_rows:
            tables.append(table)
            kept += table.num_rows
            first = pc.min(table["time"]).as_py()
            earliest = first if earliest is None else min(earliest, first)
    table = pa.concat_tables(tables, promote_options="default") if tables else schema().empty_table()
    table = table.sort_by("time")
    return table.slice(max(table.num_rows - limit_rows, 0)).to_pandas()


def frame_answers(texts: Sequence[Any], predicted: pd.DataFrame) -> Answers:
    """The answers of an in-process prediction (`prediction`, `p_<label>`, `reason` per text), for `submit`."""
    return lambda: (texts, predicted.to_dict("records"))
