"""best: the best model each batch has had, so that losses within the margin cannot compound unseen.

The gate compares the challenger with the champion, and a loss within `gate.max_regression` passes. Were that
all, a chain of champions each a little worse than the last on an earlier batch would pass every gate (a
ratchet): 1.5 points lost at each step, 4.5 after three, never once shown. So the ledger keeps, per trusted
batch, the registered version that scored highest on the batch's judged test rows among the champions the
batch has had, written when a challenger is promoted (`record_promotion`); `check_quality` adds that version's
kept predictions on the same rows (`with_best_models`), and the gate tests the challenger against it too
(promote._loss_checks). In the ledger, not the workspace folder: the folder is a cache, and a fresh worker must
judge alike. The table is this module's (tasks/ingest/ledger.py creates it with the others).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from kaizen.tasks.evaluation.paired import PairedPredictions
from kaizen.tasks.evaluation.predictions import predictions_of
from kaizen.tasks.ingest.ledger import Ledger, now
from kaizen.tasks.workspace.layout import Workspace


@dataclass(frozen=True)
class BestModel:
    """The version that scored highest on a batch's judged test rows (`accuracy`, on `rows` rows)."""

    batch_id: str
    version: str
    accuracy: float
    rows: int


def best_models(ledger: Ledger) -> dict[str, BestModel]:
    """Per batch, its best model as recorded."""
    rows = ledger.read("SELECT batch_id, version, accuracy, rows FROM best_models")
    return {row[0]: BestModel(*row) for row in rows}


def record_best_models(ledger: Ledger, best: Iterable[BestModel]) -> None:
    """Each of `best` replaces what its batch had recorded, all in one commit."""
    with ledger.transaction() as db:
        db.executemany(
            "INSERT INTO best_models (batch_id, version, accuracy, rows, recorded_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT (batch_id) DO UPDATE SET version=excluded.version, accuracy=excluded.accuracy, "
            "rows=excluded.rows, recorded_at=excluded.recorded_at",
            [(b.batch_id, b.version, b.accuracy, b.rows, now()) for b in best])


def _accuracy(rows: PairedPredictions, model: str) -> float:
    return float(rows.correct(model).mean())


def _rival(rows: PairedPredictions, held: BestModel | None, champion: str | None) -> tuple[str, float] | None:
    """The model the challenger must beat on a batch, and its accuracy: on the same rows where its predictions
    on them are at hand, else as recorded (rows judged before, when the best's were not fetched this time)."""
    if held is None or held.version == champion:  # no record yet: the champion is the best the batch has had
        return None if rows.champion is None or champion is None else (champion, _accuracy(rows, "champion"))
    if rows.best is not None and rows.best_version == held.version:
        return held.version, _accuracy(rows, "best")
    return held.version, held.accuracy


def improved(challenger: str, champion: str | None, paired: dict[str, PairedPredictions],
             recorded: dict[str, BestModel]) -> list[BestModel]:
    """The records that change when `challenger` is promoted over `champion` (None at bootstrap), from the
    promoting evaluation's `paired` predictions: the challenger, on each batch where it scored higher than the
    best so far (a tie keeps the older); the champion, on a batch it holds no record of yet but beat it on."""
    changed = []
    for batch, rows in paired.items():
        score, held = _accuracy(rows, "challenger"), recorded.get(batch)
        rival = _rival(rows, held, champion)
        if rival is None or score > rival[1]:
            changed.append(BestModel(batch, challenger, score, len(rows.labels)))
        elif held is None:
            changed.append(BestModel(batch, rival[0], rival[1], len(rows.labels)))
    return changed


def record_promotion(ws: Workspace, challenger: str, champion: str | None,
                     paired: dict[str, PairedPredictions]) -> None:
    """After the alias moved to `challenger`: each judged batch's best model, where it changed."""
    with Ledger(ws.ledger_db) as ledger:
        record_best_models(ledger, improved(challenger, champion, paired, best_models(ledger)))


def with_best_models(ws: Workspace, champion: str, paired: dict[str, PairedPredictions],
                     judged: dict[str, np.ndarray], new_batch: str) -> dict[str, PairedPredictions]:
    """`paired`, with the predictions of each earlier batch's best model on its `judged` rows (row numbers of its
    test split) where that model is not the champion: of at most `gate.max_best_models` models (0: all), those
    whose recorded score leads the champion's on these rows by the most, on any batch they hold. Each model
    consulted costs a read of its kept predictions, and over a long history most batches hold a different one:
    unbounded, evaluation grew with the history. The bound also keeps the gate's Holm family to the checks where
    a ratchet is likeliest: where the champion trails a batch's best by little or not at all, the check against
    the champion tells the same."""
    with Ledger(ws.ledger_db) as ledger:
        recorded = best_models(ledger)
    wanted: dict[str, dict[str, np.ndarray]] = {}  # version -> batch -> rows
    lead: dict[str, float] = {}  # version -> its largest lead over the champion on a batch it is the best of
    for batch in paired:
        held = recorded.get(batch)
        if batch != new_batch and held is not None and held.version != champion:
            wanted.setdefault(held.version, {})[batch] = judged[batch]
            behind = _accuracy(paired[batch], "champion") if paired[batch].champion is not None else 0.0
            lead[held.version] = max(lead.get(held.version, -1.0), held.accuracy - behind)
    limit = ws.settings.gate.max_best_models
    if limit and len(wanted) > limit:  # the largest leads; among equal ones, the newer versions
        kept = sorted(wanted, key=lambda v: (lead[v], int(v)), reverse=True)[:limit]
        wanted = {v: wanted[v] for v in kept}
    out = dict(paired)
    for version, rows in wanted.items():
        for batch, frame in predictions_of(ws, version, rows).items():
            out[batch] = replace(paired[batch], best=tuple(frame["predicted"]), best_version=version)
    return out
