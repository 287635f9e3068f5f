"""scoring: label every text of a file, a folder or an fsspec URL with the champion, into one Parquet or CSV file:
the one batch scorer, behind `kaizen score` and `kaizen predict FILE`.

The input is read leniently in chunks of `serving.chunk_rows` (tasks/formats/reader.py: the formats collect reads,
compressed or not, and plain text), each chunk labelled by the champion as MLflow serves it
(tasks/serving/champion.py) and appended to the output, so memory stays flat however large the input.
Every input row gets an output row: `source` (its file), `row` (its line, or its row in a Parquet file), the
input's columns as text, `prediction`, `p_<label>` for every class, `reason` and `model_version`. A row that
cannot be labelled (no text, not a string, empty, a broken line) has a reason instead of a label; so has a file,
or the rest of one, that cannot be read (one row, `row` empty). Nothing is dropped and nothing stops the run.
The output is written under a temporary name and renamed when complete. The texts labelled are recorded as the
served model's answers are (tasks/serving/capture.py, source "score"), except under `kaizen predict`: a person
trying texts by hand is not traffic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

import pandas as pd

from kaizen.tasks.formats.reader import Chunk, input_files, read_leniently
from kaizen.tasks.serving.capture import CaptureWriter, frame_answers, writer
from kaizen.tasks.workspace.layout import Workspace

if TYPE_CHECKING:
    from pyarrow.parquet import ParquetWriter

Progress = Callable[[float, int], None]  # (share of the input done, rows written so far)


class ScoringError(RuntimeError):
    """Nothing could be scored as asked (no input, no champion); the message says why."""


@dataclass(frozen=True)
class ScoreResult:
    out: str
    model_version: str
    files: int
    rows: int  # output rows: labelled + with a reason
    labelled: int
    with_reason: int
    seconds: float
    problems: list[str] = field(default_factory=list)  # file-level problems, in words
    captured: int = 0  # rows recorded in the workspace's captures (tasks/serving/capture.py), after sampling

    def as_dict(self) -> dict:
        return asdict(self)


def _as_text(value) -> str | None:
    """An input value carried into the output: text as it was, other values as JSON, missing values as null."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


OUTPUT = ("source", "row", "prediction", "reason", "model_version")  # besides the text and p_<label> columns
WRITTEN = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}  # the output's format, by its ending


class _Output:
    """The Parquet or CSV file being written. Its columns are fixed by the first rows read: the input's other
    columns are carried along as text (a later file's extra columns are not; its missing ones are null)."""

    def __init__(self, fs, path: str, text_column: str, labels: list[str]) -> None:
        self.fs, self.path, self.tmp = fs, path, f"{path}.part"
        self.kind = WRITTEN[PurePosixPath(path).suffix.lower()]
        self.text_column, self.labels = text_column, labels
        self.carried: dict[str, str] | None = None  # input column -> output column
        self.pending: list[pd.DataFrame] = []  # problems met before the first rows fixed the columns
        self.writer: ParquetWriter | None = None  # for a Parquet output
        self.handle: BinaryIO | None = None  # the temporary file, once open

    def carry(self, columns) -> None:
        if self.carried is None:
            taken = {*OUTPUT, self.text_column, *(f"p_{label}" for label in self.labels)}
            self.carried = {c: f"input_{c}" if c in taken else c for c in map(str, columns) if c != self.text_column}

    def schema(self):
        import pyarrow as pa

        fields = [("source", pa.string()), ("row", pa.int64()), (self.text_column, pa.string())]
        fields += [(c, pa.string()) for c in (self.carried or {}).values()]
        fields += [("prediction", pa.string()), *[(f"p_{label}", pa.float64()) for label in self.labels],
                   ("reason", pa.string()), ("model_version", pa.string())]
        return pa.schema(fields)

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.carried is None:
            self.pending.append(frame)
            return
        header = self.handle is None
        if self.handle is None:
            self.fs.makedirs(str(PurePosixPath(self.path).parent), exist_ok=True)
            self.handle = self.fs.open(self.tmp, "wb")
            if self.kind == "parquet":
                self.writer = pq.ParquetWriter(self.handle, self.schema())
        for part in [*self.pending, frame]:
            part = part.reindex(columns=self.schema().names)
            if self.writer is not None:
                self.writer.write_table(pa.Table.from_pandas(part, schema=self.schema(), preserve_index=False))
            else:  # the header once, before the first rows
                self.handle.write(part.to_csv(index=False, header=header, lineterminator="\n").encode("utf-8"))
                header = False
        self.pending = []

    def close(self) -> None:
        """Finish the file and give it its name (every row was written under the temporary one)."""
        self.carry([])
        self.write(pd.DataFrame(columns=["source"]))
        if self.writer is not None:
            self.writer.close()
        assert self.handle is not None, "write() opened the file: carry() fixed its columns"
        self.handle.close()
        if self.fs.exists(self.path):
            self.fs.rm(self.path)
        self.fs.mv(self.tmp, self.path)


def _scored(chunk: Chunk, source: str, classifier, output: _Output, recorder: CaptureWriter | None) -> pd.DataFrame:
    """One chunk's output rows, in file order: its rows with their predictions, and those with a problem."""
    text = output.text_column
    usable = [row for row in chunk.rows if row.problem is None]
    rows = pd.DataFrame({"source": source, "row": pd.Series([row.number for row in usable], dtype="Int64")})
    if usable:
        output.carry(chunk.columns)
        assert output.carried is not None, "carry() fixed the columns"
        rows[text] = [_as_text(row.record.get(text)) for row in usable]
        for column, name in output.carried.items():
            rows[name] = [_as_text(row.record.get(column)) for row in usable]
        texts = [row.record.get(text) for row in usable]
        predicted = classifier.predict(texts)
        if recorder is not None:
            recorder.submit(frame_answers(texts, predicted))
        rows = pd.concat([rows, predicted.reset_index(drop=True)], axis=1)
    reasons: list[tuple[int | None, str]] = [(row.number, row.problem) for row in chunk.rows
                                              if row.problem is not None]
    reasons += [(None, chunk.problem)] if chunk.problem else []  # the file, or the rest of it: no row
    problems = pd.DataFrame({"source": source, "row": pd.Series([n for n, _ in reasons], dtype="Int64"),
                             "reason": [reason for _, reason in reasons]})
    frame = pd.concat([rows, problems], ignore_index=True) if len(problems) else rows
    return frame.sort_values("row", kind="stable", na_position="last").assign(model_version=classifier.version)


def score(ws: Workspace, source: str, out: str, progress: Progress | None = None, classifier=None,
          capture: bool = True) -> ScoreResult:
    """Score `source` (a CSV, JSON Lines, Parquet or text file, compressed or not, a folder of them, or an fsspec
    URL of either) with the champion (or `classifier`) into `out`: a Parquet or CSV file, as its ending says (a
    path or an fsspec URL). With `capture` (and capture.enabled) the labelled rows are recorded as the served
    model's answers are, source "score"."""
    import fsspec

    from kaizen.tasks.serving.champion import load_champion

    began = time.perf_counter()
    try:
        fs, root, files = input_files(source)
    except FileNotFoundError as exc:
        raise ScoringError(str(exc)) from exc
    if not files:
        raise ScoringError(f"{source}: an empty folder, nothing to score")
    if PurePosixPath(out).suffix.lower() not in WRITTEN:
        raise ScoringError(f"{out}: scores are written to a .parquet or a .csv file")
    classifier = classifier or load_champion(ws)
    out_fs, out_path = fsspec.core.url_to_fs(out)
    output = _Output(out_fs, out_path, ws.settings.data.text_column, list(classifier.labels))  # the model's own
    problems: list[str] = []
    recorder = writer(ws, "score", classifier.version) if capture else None
    try:
        rows, labelled = _score_files(ws, fs, root, files, classifier, output, recorder, problems, progress)
    finally:
        captured = recorder.close().written if recorder is not None else 0
    output.close()
    return ScoreResult(out, classifier.version, len(files), rows, labelled, rows - labelled,
                       round(time.perf_counter() - began, 3), problems, captured)


def _score_files(ws: Workspace, fs, root: str, files: list[str], classifier, output: _Output,
                 recorder: CaptureWriter | None, problems: list[str], progress: Progress | None) -> tuple[int, int]:
    """Score each file into `output`, chunk by chunk; (output rows, labelled rows). File-level problems are added
    to `problems`."""
    sizes = [max(fs.size(path) or 0, 1) for path in files]
    rows = labelled = 0
    for index, path in enumerate(files):
        name = str(PurePosixPath(path).relative_to(PurePosixPath(root))) if path != root else PurePosixPath(path).name
        for chunk in read_leniently(fs, path, ws.settings.data.text_column, ws.settings.serving.chunk_rows,
                                    ws.settings.limits):
            frame = _scored(chunk, name, classifier, output, recorder)
            output.write(frame)
            rows += len(frame)
            labelled += int(frame["prediction"].notna().sum()) if "prediction" in frame else 0
            problems += [f"{name}: {chunk.problem}"] if chunk.problem else []
            if progress:
                assert chunk.done is not None, "read_leniently sets every chunk's done"
                progress((sum(sizes[:index]) + chunk.done * sizes[index]) / sum(sizes), rows)
    return rows, labelled
