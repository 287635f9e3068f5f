"""labeling: the ledger's record of the captured texts sent out to be labeled, and where labeled rows came from.

`kaizen select` (tasks/serving/selection.py) records each text it queues: its capture id, the queue, the model
version whose answer (and doubt) asked for it, and the text's dedup key. So no text is queued twice, and a labeled
row that comes back through the landing zone with its capture id (validate.py keeps it with the accepted row, in
the batch, its splits and the ledger's row keys) is traced to its queue and model (tasks/registry/lineage.py).

Kept in the ledger, not derived from the queue files: those are for a labeling tool, and are moved or deleted once
imported, while the ledger is the loop's one truth, which every machine of a shared loop reads. The table is this
module's (tasks/ingest/ledger.py creates it with the others).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kaizen.tasks.ingest.ledger import Ledger, now

CHUNK = 500  # values per IN (...) query: far below SQLite's and PostgreSQL's limits on parameters


@dataclass(frozen=True)
class Queued:
    """A captured text sent to be labeled."""

    capture_id: str
    queue: str  # the queue's name (`queue-<time>`): its files under Workspace.labeling
    model_version: str | None  # the version that answered the text when it was captured
    text_key: str  # tasks/formats/text.py's text_key: collect's identity of the text


def record_queued(ledger: Ledger, rows: Iterable[Queued]) -> None:
    """A queue's texts, all in one commit."""
    with ledger.transaction() as db:
        db.executemany("INSERT INTO labeling_queue (capture_id, queue, model_version, text_key, queued_at) "
                       "VALUES (?,?,?,?,?)",
                       [(q.capture_id, q.queue, q.model_version, q.text_key, now()) for q in rows])


def queued_keys(ledger: Ledger, keys: list[str]) -> set[str]:
    """The text keys among `keys` that an earlier queue holds (under any capture of the same text)."""
    found: set[str] = set()
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        found.update(key for (key,) in ledger.read(
            f"SELECT text_key FROM labeling_queue WHERE text_key IN ({','.join('?' * len(chunk))})", tuple(chunk)))
    return found


def queues_of(ledger: Ledger, capture_ids: list[str]) -> dict[str, Queued]:
    """The queue record of each of `capture_ids` that a queue of this loop holds (others are left out)."""
    found: dict[str, Queued] = {}
    for start in range(0, len(capture_ids), CHUNK):
        chunk = capture_ids[start : start + CHUNK]
        rows = ledger.read("SELECT capture_id, queue, model_version, text_key FROM labeling_queue "
                           f"WHERE capture_id IN ({','.join('?' * len(chunk))})", tuple(chunk))
        found.update((row[0], Queued(*row)) for row in rows)
    return found
