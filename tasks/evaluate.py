"""check: drift of the new batch against the champion's training data, and champion vs challenger on the test
split of the new batch and of every trusted earlier batch. Every score is computed one way, from the models'
predictions (`predict.scores`); Evidently draws the reports, which go with the numbers to the iteration's run.

A registered version's predictions on a split are computed once and kept (a version never changes, and the
split is named by its content), so the champion is not scored again at each step or iteration.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.check import DriftResult, drift_check, quality_check
from kaizen.tasks.faults import kill_point
from kaizen.tasks.files import parquet_bytes, write_atomically
from kaizen.tasks.ledger import Ledger
from kaizen.tasks.predict import pick_device, predict, scores
from kaizen.tasks.promote import PairedPredictions
from kaizen.tasks.record import DRIFT_SHARE, batches_seen, score_metric

METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_./ -]")  # MLflow refuses other characters in metric names


def predictions_on(ws, model_dir: Path, model, batch: str, split: str, logged: bool = True) -> pd.DataFrame:
    """`row` (the row of the split), `label`, `predicted` and each class's probability (`p_<label>`) of a model on
    one split of a batch."""
    return predictions_on_each(ws, model_dir, model, [batch], split, logged)[batch]


def predictions_on_each(ws, model_dir: Path, model, batches: list[str], split: str, logged: bool = True,
                        rows: dict[str, np.ndarray] | None = None) -> dict[str, pd.DataFrame]:
    """A model's predictions on one split of each of `batches` (see `predictions_on_splits`), on the `rows` given
    for a batch or on all of them."""
    found = predictions_on_splits(ws, model_dir, model, [(b, split) for b in batches], logged,
                                  {(b, split): r for b, r in (rows or {}).items()})
    return {b: found[b, split] for b in batches}


def predictions_on_splits(ws, model_dir: Path, model, splits: list[tuple[str, str]], logged: bool = True,
                          rows: dict[tuple[str, str], np.ndarray] | None = None) -> dict[tuple[str, str], pd.DataFrame]:
    """A model's predictions on each (batch, split) of `splits` (see `predictions_on`), on the `rows` given for
    one (row numbers of the split, in order) or on all of them. A registered version's (`model`, a
    registry.ModelRef) are kept per row, named by the split's md5, under the workspace and as an artifact of the
    version's run (logged by `check_quality`), so that no machine computes them twice; `logged` False: the run has
    none yet (the challenger being checked), do not look. Rows not cached are scored in one pass: one model load
    and one length-sorted batching, however many batches the history holds."""
    import pyarrow.parquet as pq

    paths = {key: ws.split_file(*key) for key in splits}
    names = {(b, s): f"{b}-{s}-{hashlib.md5(p.read_bytes()).hexdigest()}.parquet" for (b, s), p in paths.items()}
    wanted = {key: np.asarray(rows[key]) if rows and key in rows else np.arange(pq.read_metadata(paths[key]).num_rows)
              for key in splits}
    folder = prediction_dir(ws, model.version) if model is not None else None
    cached: dict[tuple[str, str], pd.DataFrame] = {}
    if folder is not None:
        if logged:
            _fetch_logged(ws, model.run_id, [names[k] for k in splits if not (folder / names[k]).exists()], folder)
        cached = {k: _with_rows(pd.read_parquet(folder / names[k])) for k in splits if (folder / names[k]).exists()}
    found = {k: frame.set_index("row").loc[wanted[k]].reset_index() for k, frame in cached.items()
             if np.isin(wanted[k], frame["row"]).all()}
    todo = {k: pd.read_parquet(paths[k]).iloc[wanted[k]] for k in splits if k not in found}
    if todo:
        texts = [text for frame in todo.values() for text in frame["text"]]
        labels, probs = predict(model_dir, texts, max_length=ws.settings.model.max_length,
                                device=pick_device(ws.settings.train.device))
        start = 0
        for key, frame in todo.items():
            end = start + len(frame)
            out = pd.DataFrame({"row": wanted[key], "label": frame["label"].to_numpy(),
                                "predicted": labels[start:end]})
            for i, label in enumerate(ws.settings.data.labels):
                out[f"p_{label}"] = probs[start:end, i]
            if folder is not None:  # with the rows cached before, so the file only ever grows
                kept = cached.get(key, out.iloc[:0])
                merged = pd.concat([kept[~kept["row"].isin(out["row"])], out]).sort_values("row")
                write_atomically(folder / names[key], parquet_bytes(merged.reset_index(drop=True)))
            found[key], start = out.reset_index(drop=True), end
    return {k: found[k] for k in splits}


def _with_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """A cached file from before predictions were kept per row held every row of its split, in order."""
    return frame if "row" in frame else frame.assign(row=np.arange(len(frame)))


def earlier_rows(ws, batches: list[str], new_batch: str) -> dict[str, np.ndarray]:
    """The rows of each earlier batch's test split that the challenger is judged on: all of them while the earlier
    splits hold `gate.max_earlier_rows` rows or fewer together, so that evaluation stops growing with the history
    beyond that; then an equal share of each. A share is the first rows of a permutation fixed per batch, so a
    later, smaller share is part of an earlier one, and the champion's predictions from when it was the
    challenger still cover it."""
    import pyarrow.parquet as pq

    from kaizen.tasks.preprocess import batch_seed

    cap, earlier = ws.settings.gate.max_earlier_rows, [b for b in batches if b != new_batch]
    sizes = {b: pq.read_metadata(ws.split_file(b, "test")).num_rows for b in earlier}
    if cap == 0 or sum(sizes.values()) <= cap:
        return {}
    share = max(1, cap // len(earlier))
    return {b: np.sort(np.random.default_rng(batch_seed(ws.settings.preprocess.seed, f"judge:{b}")).permutation(n)[
        :share]) for b, n in sizes.items()}


def prediction_dir(ws, version: str) -> Path:
    return ws.runs_dir / "predictions" / f"v{version}"


def _fetch_logged(ws, run_id: str, names: list[str], folder: Path) -> None:
    """Copy those of a version's logged predictions that its run has into the local cache (one listing)."""
    from kaizen.tasks import registry

    if not names:
        return
    client = registry.connect(ws)
    logged = {a.path for a in client.list_artifacts(run_id, "predictions")}
    for name in names:
        if f"predictions/{name}" in logged:
            write_atomically(folder / name, Path(client.download_artifacts(run_id, f"predictions/{name}")).read_bytes())


def trusted_batches(ws, batches: tuple[str, ...]) -> list[str]:
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


def champion_reference(ws, seen: list[str]) -> pd.DataFrame:
    """A seeded sample of the train splits the champion has seen: the reference for drift."""
    frames = [pd.read_parquet(ws.split_file(b, "train")) for b in seen if ws.split_file(b, "train").exists()]
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


def check_quality(ws, it, challenger, champion_dir: Path | None, drift: DriftResult | None) -> Evaluation:
    """Champion vs challenger on the test split of the new batch and of every trusted earlier batch: paired
    predictions for the gate, metrics, the evaluation matrix, and two Evidently reports (the new batch, and every
    earlier batch pooled), so the cost grows with the rows scored, not with one report per batch. The champion's
    predictions come from its cache: only the challenger is scored."""
    from kaizen.tasks import lineage, registry

    reports = report_dir(ws, it)
    trusted = trusted_batches(ws, it.batches)
    judged = earlier_rows(ws, trusted, it.batch_id)
    news = predictions_on_each(ws, challenger.model_dir, challenger.model, trusted, "test", logged=False, rows=judged)
    olds = predictions_on_each(ws, champion_dir, it.champion, trusted, "test", rows=judged) if it.champion else {}
    paired = {batch: PairedPredictions(tuple(new["label"]), tuple(new["predicted"]),
                                       tuple(olds[batch]["predicted"]) if batch in olds else None)
              for batch, new in news.items()}
    earlier = [b for b in paired if b != it.batch_id]
    for title, batches in ((it.batch_id, [it.batch_id]), ("earlier", earlier)):
        if batches:
            rows = [paired[b] for b in batches]
            quality_check([y for r in rows for y in r.labels], [y for r in rows for y in r.challenger],
                          None if it.champion is None else [y for r in rows for y in r.champion],
                          labels=ws.settings.data.labels, html_path=reports / f"quality-{title}.html")
    evaluation = Evaluation(drift, paired, reports)
    client = registry.connect(ws)
    metrics = {score_metric(model, batch, metric): value for model in ("challenger", "champion")
               for metric in ("accuracy", "f1") for batch, value in (evaluation.scores(model, metric) or {}).items()}
    metrics["evaluation.earlier_rows"] = float(sum(len(paired[b].labels) for b in earlier))
    registry.log_metrics(client, it.run_id, metrics)
    lineage.log_evaluation_matrix(client, it.run_id, evaluation, reports)
    tests = {f"{it.batch_id}/test": pd.read_parquet(ws.split_file(it.batch_id, "test"))}
    if earlier:
        tests[f"{len(earlier)} earlier batch(es)/test"] = pd.concat(  # the rows judged (all, or each one's share)
            [pd.read_parquet(ws.split_file(b, "test")).iloc[judged.get(b, slice(None))] for b in earlier],
            ignore_index=True)
    lineage.log_datasets(client, it.run_id, tests, "evaluation", ws.prepared_dir)
    client.log_artifacts(it.run_id, str(reports), "reports")
    client.log_artifacts(it.run_id, str(prediction_dir(ws, challenger.model.version)), "predictions")
    kill_point("check:done")
    return evaluation
