"""labeling_queue: the texts `kaizen select` chose, written in the forms a labeling tool imports.

Three files per queue under Workspace.labeling, named by the time it was chosen (`queue-<time>`):
- `.csv`: capture_id, the text, model_version, prediction, confidence, why (the scores that chose it) and an empty
  label column. Fill the labels in (a spreadsheet will do) and land the file: collect keeps each row's capture id.
- `.json`: the same texts as Label Studio tasks (its documented import format: a list of `{"data": ...,
  "predictions": [...]}`), the model's answer as a pre-annotation whose `score` is its confidence, so that Label
  Studio's Data Manager shows the least confident first. `data` carries the capture id.
- `.label-config.xml`: the labeling config those tasks fit: a `Choices` named after data.label_column over the text
  named after data.text_column, so Label Studio's CSV export has the text, the label and the capture id where
  collect reads them; land that export as it is.
Each file is written whole or not at all: atomically in a folder, in one PUT to an object store.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

from kaizen.tasks.workspace.files import frame_bytes, write_atomically
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.redact import redact

if TYPE_CHECKING:
    import pandas as pd

NAME_TIME = "%Y%m%dT%H%M%S%fZ"  # as the captures' files are named: two queues never share a name
# The chosen rows' columns, as selection.py hands them over.
CHOSEN = ("capture_id", "text", "model_version", "prediction", "confidence", "why")


@dataclass(frozen=True)
class LeftOut:
    """The captures read that were not candidates, by why."""

    without_text: int = 0  # captured as a hash only (capture.keep_text false): nothing to show a labeler
    unanswered: int = 0  # answered with a reason, not a label (empty text, not a string)
    too_long: int = 0  # longer than data.max_text_chars: collect would quarantine the labeled row
    duplicates: int = 0  # the same text captured again
    already_queued: int = 0  # in an earlier queue
    already_labeled: int = 0  # ingested already, labeled

    def describe(self) -> str:
        said = {"without text (hash only)": self.without_text, "answered with a reason": self.unanswered,
                "too long": self.too_long, "repeated": self.duplicates, "queued before": self.already_queued,
                "labeled already": self.already_labeled}
        return ", ".join(f"{n} {why}" for why, n in said.items() if n)


@dataclass(frozen=True)
class LabelingQueue:
    """What one selection read, left out and queued."""

    name: str | None  # None: nothing was worth queueing
    files: tuple[str, ...]  # the CSV, the Label Studio tasks and their labeling config (paths or URLs)
    rows: int
    versions: dict[str, int]  # model version -> texts queued from its answers: whose doubt asked for them
    read: int  # captures read
    left: LeftOut
    pool: int = 0  # the most uncertain candidates, among which the queue was spread out
    reference_rows: int = 0  # rows of the champion's training data embedded for coverage (0: none at hand)
    champion: str | None = None  # the version whose embeddings spread the queue
    seconds: float = 0.0

    @property
    def candidates(self) -> int:
        return self.read - sum(asdict(self.left).values())

    def describe(self) -> str:
        """The selection in one line."""
        asked = ", ".join(f"v{v}: {n}" for v, n in sorted(self.versions.items()))
        head = (f"{self.rows} texts queued as {self.name} (asked by {asked})" if self.name else
                "nothing queued: no captured text is left to label")
        skipped = self.left.describe()
        return (f"{head}; {self.read} captures read, {self.candidates} candidates"
                + (f" ({skipped} left out)" if skipped else "")
                + (f", the {self.pool} most uncertain spread out on champion v{self.champion}'s embeddings"
                   f" from {self.reference_rows} training rows" if self.name else "")
                + f"; {self.seconds:.1f} s")

    def as_dict(self) -> dict:
        return {**asdict(self), "candidates": self.candidates}


def queue_name(at: datetime) -> str:
    return f"queue-{at:{NAME_TIME}}"


def write_queue(ws: Workspace, name: str, chosen: pd.DataFrame) -> tuple[str, ...]:
    """The queue's three files, CSV first; where each went."""
    data = ws.settings.data
    sheet = chosen[list(CHOSEN)].rename(columns={"text": data.text_column}).assign(**{data.label_column: ""})
    return (_put(ws, f"{name}.csv", frame_bytes(sheet, f"{name}.csv")),
            _put(ws, f"{name}.json", json.dumps(label_studio_tasks(ws, chosen), ensure_ascii=False,
                                                 indent=1).encode("utf-8")),
            _put(ws, f"{name}.label-config.xml", label_config(ws).encode("utf-8")))


def label_studio_tasks(ws: Workspace, chosen: pd.DataFrame) -> list[dict]:
    """One Label Studio task per chosen text: the text, its capture id and why it was chosen as `data`, the model's
    answer as a prediction (a `choices` result; each result's id is its capture id, unique as Label Studio wants)."""
    data, model = ws.settings.data, ws.settings.model.registered_name
    return [{"data": {data.text_column: row["text"], "capture_id": row["capture_id"],
                      "model_version": row["model_version"], "why": row["why"]},
             "predictions": [{"model_version": f"{model} v{row['model_version']}", "score": float(row["confidence"]),
                              "result": [{"id": row["capture_id"], "from_name": data.label_column,
                                          "to_name": data.text_column, "type": "choices",
                                          "value": {"choices": [row["prediction"]]}}]}]}
            for row in chosen[list(CHOSEN)].to_dict("records")]


def label_config(ws: Workspace) -> str:
    """The Label Studio labeling config the tasks fit: one choice among data.labels for each text."""
    data = ws.settings.data
    choices = "".join(f"    <Choice value={quoteattr(label)}/>\n" for label in data.labels)
    return (f"<View>\n  <Text name={quoteattr(data.text_column)} value={quoteattr('$' + data.text_column)}/>\n"
            f"  <Choices name={quoteattr(data.label_column)} toName={quoteattr(data.text_column)} "
            f'choice="single" showInLine="true">\n{choices}  </Choices>\n</View>\n')


def _put(ws: Workspace, name: str, data: bytes) -> str:
    where = ws.labeling
    if "://" not in where:  # a folder: whole or absent for a reader, after a kill too
        path = Path(where) / name
        write_atomically(path, data)
        return str(path)
    import fsspec

    fs, root = fsspec.core.url_to_fs(where)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root.rstrip('/')}/{name}", data)  # one PUT: whole or absent
    return redact(f"{where.rstrip('/')}/{name}")
