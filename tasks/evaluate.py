"""check: drift of the new batch against the champion's training data, and champion vs challenger on the
test split of every batch so far. Evidently computes every number; its HTML reports and key numbers go to the
iteration's MLflow run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.check import DriftResult, QualityResult, drift_check, quality_check
from kaizen.tasks.faults import kill_point
from kaizen.tasks.predict import predict, scores
from kaizen.tasks.record import DRIFT_SHARE, TAG, batches_seen, score_metric

METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_./ -]")  # MLflow refuses other characters in metric names


@dataclass(frozen=True)
class Evaluation:
    drift: DriftResult | None  # None at bootstrap: there is no champion's data to compare with
    quality: dict[str, QualityResult]  # batch id -> champion and challenger scores on its test split
    report_dir: Path

    def scores(self, model: str, metric: str) -> dict[str, float] | None:
        """Per batch, the `metric` of `model` ("champion" or "challenger"); None when there is no champion."""
        out = {}
        for batch, q in self.quality.items():
            s = getattr(q, model)
            if s is None:
                return None
            out[batch] = getattr(s, metric)
        return out


def champion_reference(ws, batches_seen: list[str]) -> pd.DataFrame:
    """A seeded sample of the train splits the champion has seen: the reference for drift."""
    frames = [pd.read_parquet(ws.split_file(b, "train")) for b in batches_seen if ws.split_file(b, "train").exists()]
    reference = pd.concat(frames, ignore_index=True)
    limit = ws.settings.drift.max_reference_rows
    return reference.sample(n=limit, random_state=ws.settings.preprocess.seed) if len(reference) > limit else reference


def new_batch_rows(ws, batch_id: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(ws.split_file(batch_id, s)) for s in ("train", "val", "test")],
                     ignore_index=True)


def report_dir(ws, it) -> Path:
    return ws.runs_dir / it.batch_id / "reports"


def check_drift(ws, it) -> DriftResult | None:
    """Drift of the new batch against a sample of the champion's training data (None at bootstrap)."""
    from kaizen.tasks import registry

    if it.champion is None:
        return None
    drift = drift_check(champion_reference(ws, batches_seen(it.champion)), new_batch_rows(ws, it.batch_id),
                        text_column="text", label_column="label", text_method=ws.settings.drift.text_method,
                        threshold=ws.settings.drift.threshold, html_path=report_dir(ws, it) / "drift.html")
    client = registry.connect(ws)
    metrics = {DRIFT_SHARE: drift.share, "drift.detected": float(drift.drifted)}
    metrics.update({"drift." + METRIC_UNSAFE.sub("_", column): score for column, score in drift.columns.items()})
    registry.log_metrics(client, it.run_id, metrics)
    client.log_artifact(it.run_id, str(drift.html), "reports")
    return drift


@dataclass(frozen=True)
class TrainingNeed:
    train: bool
    reason: str
    champion_score: float | None  # the gate's metric of the champion on the new batch's test split


def worth_training(ws, it, champion_dir: Path | None, drift: DriftResult | None, force: bool) -> TrainingNeed:
    """Training pays unless the champion already scores above the threshold on the new batch and nothing drifted."""
    if it.champion is None or champion_dir is None:
        return TrainingNeed(True, "no champion yet: bootstrap", None)
    test = pd.read_parquet(ws.split_file(it.batch_id, "test"))
    predicted, _ = predict(champion_dir, test["text"].tolist(), max_length=ws.settings.model.max_length)
    score = scores(np.array(test["label"]), np.array(predicted))[ws.settings.gate.metric]
    threshold, metric = ws.settings.train.skip_if_champion_above, ws.settings.gate.metric
    drifted = drift is not None and drift.drifted
    if force:
        return TrainingNeed(True, "training forced", score)
    if score > threshold and not drifted:
        return TrainingNeed(False, f"champion {metric} {score:.4f} on {it.batch_id} is above "
                                   f"skip_if_champion_above {threshold:.4f} and no drift was detected", score)
    why = "drift detected" if drifted else f"champion {metric} {score:.4f} <= {threshold:.4f}"
    return TrainingNeed(True, why, score)


def check_quality(ws, it, challenger_dir: Path, champion_dir: Path | None, drift: DriftResult | None) -> Evaluation:
    """Champion vs challenger on every batch's test split: Evidently reports, metrics, the evaluation matrix."""
    from kaizen.tasks import lineage, registry

    reports = report_dir(ws, it)
    quality: dict[str, QualityResult] = {}
    tests = {batch: pd.read_parquet(ws.split_file(batch, "test")) for batch in it.batches}
    for batch, test in tests.items():
        texts = test["text"].tolist()
        new_pred, _ = predict(challenger_dir, texts, max_length=ws.settings.model.max_length)
        old_pred = predict(champion_dir, texts, max_length=ws.settings.model.max_length)[0] if champion_dir else None
        quality[batch] = quality_check(test["label"].tolist(), new_pred, old_pred, labels=ws.settings.data.labels,
                                       html_path=reports / f"quality-{batch}.html")

    evaluation = Evaluation(drift, quality, reports)
    client = registry.connect(ws)
    metrics: dict[str, float] = {}
    for batch, q in quality.items():
        for model in ("challenger", "champion"):
            s = getattr(q, model)
            if s is not None:
                metrics[score_metric(model, batch, "accuracy")] = s.accuracy
                metrics[score_metric(model, batch, "f1")] = s.f1
    registry.log_metrics(client, it.run_id, metrics)
    lineage.log_evaluation_matrix(client, it.run_id, evaluation, reports)
    lineage.log_datasets(client, it.run_id, {f"{b}/test": t for b, t in tests.items()}, "evaluation",
                         ws.prepared_dir)
    client.log_artifacts(it.run_id, str(reports), "reports")
    kill_point("check:done")
    return evaluation


def record_skip(ws, it, drift: DriftResult | None, need: TrainingNeed) -> None:
    """Record on the run that the champion already serves the new batch well: no training, no new version."""
    from kaizen.tasks import registry

    client = registry.connect(ws)
    registry.set_tags(client, it.run_id, {TAG["decision"]: "skipped", TAG["reasons"]: f"training skipped: {need.reason}",
                                          TAG["champion_version"]: it.champion.version})
    registry.log_metrics(client, it.run_id,
                         {score_metric("champion", it.batch_id, ws.settings.gate.metric): need.champion_score})
