"""check: drift of the new batch against the champion's training data, and champion vs challenger on the test
split of the new batch and of every trusted earlier batch. Every score is computed one way, from the models'
predictions (`predict.scores`); Evidently draws the reports, which go with the numbers to the iteration's run.
The models' predictions come from tasks/evaluation/predictions.py, which keeps each registered version's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.evaluation import grown
from kaizen.tasks.evaluation.best import with_best_models
from kaizen.tasks.evaluation.paired import PairedPredictions
from kaizen.tasks.evaluation.predictions import prediction_dir, predictions_on_each
from kaizen.tasks.evaluation.reports import DriftResult, drift_check, quality_check
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.model.predict import scores
from kaizen.tasks.registry.record import DRIFT_SHARE, Iteration, batches_seen, score_metric
from kaizen.tasks.workspace.faults import kill_point
from kaizen.tasks.workspace.layout import Workspace

METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_./ -]")  # MLflow refuses other characters in metric names


def judged_batches(ws: Workspace, batches: list[str], new_batch: str) -> list[str]:
    """The batches a challenger is judged on: `new_batch` and every earlier one; past `gate.max_earlier_batches`
    earlier ones, that many of them drawn at random, seeded by the new batch (a rerun judges the same ones, the
    next batch others), so that a judgement's cost stops growing with the number of batches (a metric, a column and
    a lookup each) while every batch keeps being judged from time to time, also against its best model."""
    from kaizen.tasks.data.preprocess import batch_seed

    cap, earlier = ws.settings.gate.max_earlier_batches, [b for b in batches if b != new_batch]
    if cap == 0 or len(earlier) <= cap:
        return list(batches)
    drawn = set(np.random.default_rng(batch_seed(ws.settings.preprocess.seed, f"judge-batches:{new_batch}")).choice(
        len(earlier), cap, replace=False).tolist())
    return [b for i, b in enumerate(earlier) if i in drawn] + [b for b in batches if b == new_batch]


def earlier_rows(ws: Workspace, batches: list[str], new_batch: str) -> dict[str, np.ndarray]:
    """The rows of each earlier batch's test split that the challenger is judged on: all of them while the earlier
    splits hold `gate.max_earlier_rows` rows or fewer together, so that evaluation stops growing with the history
    beyond that; then an equal share of each. A share is the first rows of a permutation fixed per batch, so a
    later, smaller share is part of an earlier one, and the champion's predictions from when it was the
    challenger still cover it."""
    import pyarrow.parquet as pq

    from kaizen.tasks.data.preprocess import batch_seed

    cap, earlier = ws.settings.gate.max_earlier_rows, [b for b in batches if b != new_batch]
    sizes = {b: pq.read_metadata(ws.split_file(b, "test")).num_rows for b in earlier}
    if cap == 0 or sum(sizes.values()) <= cap:
        return {}
    share = max(1, cap // len(earlier))
    return {b: np.sort(np.random.default_rng(batch_seed(ws.settings.preprocess.seed, f"judge:{b}")).permutation(n)[
        :share]) for b, n in sizes.items()}


def trusted_batches(ws: Workspace, batches: tuple[str, ...]) -> list[str]:
    """The batches among `batches` whose labels are trusted: the only yardsticks of a challenger."""
    with Ledger(ws.ledger_db) as ledger:
        suspect = set(ledger.suspect_batches())
    return [b for b in batches if b not in suspect]


@dataclass(frozen=True)
class Evaluation:
    drift: DriftResult | None  # None at bootstrap: there is no champion's data to compare with
    paired: dict[str, PairedPredictions]  # batch id -> both models' labels on its test split
    report_dir: Path

    def scores(self, model: str, metric: str) -> dict[str, float] | None:
        """Per batch, the `metric` of `model` ("champion" or "challenger"); None when there is no champion."""
        if any(getattr(rows, model) is None for rows in self.paired.values()):
            return None
        return {batch: scores(np.asarray(rows.labels), np.asarray(getattr(rows, model)))[metric]
                for batch, rows in self.paired.items()}


def champion_reference(ws: Workspace, seen: list[str]) -> pd.DataFrame:
    """A seeded sample of the train splits the champion has seen: the reference for drift."""
    frames = [pd.read_parquet(ws.split_file(b, "train")) for b in seen if ws.split_file(b, "train").exists()]
    reference = pd.concat(frames, ignore_index=True)
    limit = ws.settings.drift.max_reference_rows
    return reference.sample(n=limit, random_state=ws.settings.preprocess.seed) if len(reference) > limit else reference


def new_batch_rows(ws: Workspace, batch_id: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(ws.split_file(batch_id, s)) for s in ("train", "val", "test")],
                     ignore_index=True)


def report_dir(ws: Workspace, it: Iteration) -> Path:
    return ws.runs_dir / it.batch_id / "reports"


def check_drift(ws: Workspace, it: Iteration) -> DriftResult | None:
    """Drift of the new batch against a sample of the champion's training data (None at bootstrap)."""
    from kaizen.tasks.registry import tracking

    if it.champion is None:
        return None
    drift = drift_check(champion_reference(ws, batches_seen(it.champion)), new_batch_rows(ws, it.batch_id),
                        text_column="text", label_column="label", text_method=ws.settings.drift.text_method,
                        threshold=ws.settings.drift.threshold, html_path=report_dir(ws, it) / "drift.html")
    client = tracking.connect(ws)
    metrics = {DRIFT_SHARE: drift.share, "drift.detected": float(drift.drifted)}
    metrics.update({"drift." + METRIC_UNSAFE.sub("_", column): score for column, score in drift.columns.items()})
    tracking.log_metrics(client, it.run_id, metrics)
    client.log_artifact(it.run_id, str(drift.html), "reports")
    return drift


def _champion_labels(rows: list[PairedPredictions]) -> list[str]:
    """The champion's labels on each of `rows`, pooled (with a champion, check_quality scores it on every batch)."""
    pooled: list[str] = []
    for r in rows:
        assert r.champion is not None, "with a champion, every judged batch has its labels"
        pooled += r.champion
    return pooled


def check_quality(ws: Workspace, it: Iteration, challenger, champion_dir: Path | None,
                  drift: DriftResult | None) -> Evaluation:
    """Champion vs challenger on the test split of the new batch and of every trusted earlier batch: paired
    predictions for the gate, metrics, the evaluation matrix, and two Evidently reports (the new batch, and every
    earlier batch pooled), so the cost grows with the rows scored, not with one report per batch. The champion's
    predictions come from its cache: only the challenger is scored."""
    from kaizen.tasks.registry import lineage, tracking

    reports = report_dir(ws, it)
    trusted = judged_batches(ws, trusted_batches(ws, it.batches), it.batch_id)
    judged = earlier_rows(ws, trusted, it.batch_id)
    news = predictions_on_each(ws, challenger.model_dir, challenger.model, trusted, "test", logged=False, rows=judged)
    olds: dict[str, pd.DataFrame] = {}
    if it.champion:
        assert champion_dir is not None, "the flow fetches the champion's files whenever there is one"
        olds = predictions_on_each(ws, champion_dir, it.champion, trusted, "test", rows=judged)
        news = grown.on_champion_labels(news, it.batch_id, challenger.model_dir, champion_dir)
    paired = {batch: PairedPredictions(tuple(new["label"]), tuple(new["predicted"]),
                                       tuple(olds[batch]["predicted"]) if batch in olds else None)
              for batch, new in news.items()}
    if it.champion and ws.settings.gate.judge_against_best:  # and the best model each earlier batch has had
        paired = with_best_models(ws, it.champion.version, paired,
                                  {b: new["row"].to_numpy() for b, new in news.items()}, it.batch_id)
    earlier = [b for b in paired if b != it.batch_id]
    for title, batches in ((it.batch_id, [it.batch_id]), ("earlier", earlier)):
        if batches:
            rows = [paired[b] for b in batches]
            quality_check([y for r in rows for y in r.labels], [y for r in rows for y in r.challenger],
                          None if it.champion is None else _champion_labels(rows),
                          labels=ws.settings.data.labels, html_path=reports / f"quality-{title}.html")
    evaluation = Evaluation(drift, paired, reports)
    client = tracking.connect(ws)
    metrics = {score_metric(model, batch, metric): value for model in ("challenger", "champion")
               for metric in ("accuracy", "f1") for batch, value in (evaluation.scores(model, metric) or {}).items()}
    metrics["evaluation.earlier_rows"] = float(sum(len(paired[b].labels) for b in earlier))
    tracking.log_metrics(client, it.run_id, metrics)
    lineage.log_evaluation_matrix(client, it.run_id, evaluation, reports)
    tests = {f"{it.batch_id}/test": pd.read_parquet(ws.split_file(it.batch_id, "test"))}
    if earlier:  # which rows of each earlier test split were judged (the data version holds their texts): reading
        # every earlier split again for its texts made this grow with the history
        tests[f"{len(earlier)} earlier batch(es)/test"] = pd.concat(
            [news[b][["row", "label"]].assign(batch=b) for b in earlier], ignore_index=True)
    lineage.log_datasets(client, it.run_id, tests, "evaluation", ws.prepared_dir)
    client.log_artifacts(it.run_id, str(reports), "reports")
    client.log_artifacts(it.run_id, str(prediction_dir(ws, challenger.model.version)), "predictions")
    kill_point("check:done")
    return evaluation
