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

from kaizen.tasks.evaluation.promote import PairedPredictions
from kaizen.tasks.evaluation.reports import DriftResult, drift_check, quality_check
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.model.predict import pick_device, predict, scores
from kaizen.tasks.registry.record import DRIFT_SHARE, Iteration, batches_seen, score_metric
from kaizen.tasks.workspace.faults import kill_point
from kaizen.tasks.workspace.files import parquet_bytes, write_atomically
from kaizen.tasks.workspace.layout import Workspace

METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_./ -]")  # MLflow refuses other characters in metric names


def predictions_on(ws: Workspace, model_dir: Path, model, batch: str, split: str,
                   logged: bool = True) -> pd.DataFrame:
    """`row` (the row of the split), `label`, `predicted` and each class's probability (`p_<label>`) of a model on
    one split of a batch."""
    return predictions_on_each(ws, model_dir, model, [batch], split, logged)[batch]


def predictions_on_each(ws: Workspace, model_dir: Path, model, batches: list[str], split: str,
                        logged: bool = True, rows: dict[str, np.ndarray] | None = None) -> dict[str, pd.DataFrame]:
    """A model's predictions on one split of each of `batches` (see `predictions_on_splits`), on the `rows` given
    for a batch or on all of them."""
    found = predictions_on_splits(ws, model_dir, model, [(b, split) for b in batches], logged,
                                  {(b, split): r for b, r in (rows or {}).items()})
    return {b: found[b, split] for b in batches}


def predictions_on_splits(ws: Workspace, model_dir: Path, model, splits: list[tuple[str, str]], logged: bool = True,
                          rows: dict[tuple[str, str], np.ndarray] | None = None
                          ) -> dict[tuple[str, str], pd.DataFrame]:
    """A model's predictions on each (batch, split) of `splits` (see `predictions_on`), on the `rows` given for
    one (row numbers of the split, in order) or on all of them. A registered version's (`model`, a
    tracking.ModelRef) are kept per row, keyed by the split's md5, in one file per version under the workspace
    and as an artifact of the version's run (logged by `check_quality`), so that no machine computes them twice;
    `logged` False: the run has none yet (the challenger being checked), do not look. Rows not kept are scored in
    one pass: one model load and one length-sorted batching, however many batches the history holds. One file,
    not one per split, because reading and writing a file per earlier batch made evaluation grow with the
    history."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Each split file is read once: its md5 names it, its footer counts its rows, and its texts are read from the
    # same bytes when they must be scored.
    data = {key: pa.py_buffer(ws.split_file(*key).read_bytes()) for key in splits}
    names = {(b, s): f"{b}-{s}-{hashlib.md5(data[b, s]).hexdigest()}" for b, s in splits}
    wanted = {key: np.asarray(rows[key]) if rows and key in rows else
              np.arange(pq.read_metadata(pa.BufferReader(data[key])).num_rows) for key in splits}
    kept = _kept(ws, model, logged, [names[k] for k in splits]) if model is not None else _EMPTY
    looked_up = _look_up(kept, {names[k]: wanted[k] for k in splits})
    found = {k: looked_up[names[k]] for k in splits if names[k] in looked_up}
    todo = {k: pq.read_table(pa.BufferReader(data[k]), columns=["text", "label"]).take(wanted[k])
            for k in splits if k not in found}
    if todo:
        texts = [text for table in todo.values() for text in table.column("text").to_pylist()]
        labels, probs = predict(model_dir, texts, max_length=ws.settings.model.max_length,
                                device=pick_device(ws.settings.train.device))
        start, scored = 0, []
        for key, table in todo.items():
            end = start + len(table)
            out = pd.DataFrame({"row": wanted[key], "label": table.column("label").to_numpy(zero_copy_only=False),
                                "predicted": labels[start:end]})
            for i, label in enumerate(ws.settings.data.labels):
                out[f"p_{label}"] = probs[start:end, i]
            found[key], start = out.reset_index(drop=True), end
            scored.append(out.assign(split=names[key]))
        if model is not None:  # with the rows kept before, so the file only ever grows
            new = pd.concat(scored, ignore_index=True)
            if len(kept):
                old = kept[~kept.set_index(["split", "row"]).index.isin(new.set_index(["split", "row"]).index)]
                new = pd.concat([old, new], ignore_index=True)
            write_atomically(prediction_file(ws, model.version), parquet_bytes(new))
    return {k: found[k] for k in splits}


_EMPTY = pd.DataFrame({"split": pd.Series(dtype=str), "row": pd.Series(dtype="int64")})


def _look_up(kept: pd.DataFrame, wanted: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
    """Per split name, the kept predictions on its wanted rows, in their order, for the splits whose wanted rows
    are all kept. One merge for every split: a lookup per split cost a millisecond per earlier batch."""
    if not len(kept):
        return {}
    want = pd.DataFrame({"split": np.repeat(list(wanted), [len(r) for r in wanted.values()]),
                         "row": np.concatenate([np.asarray(r, dtype="int64") for r in wanted.values()])})
    hits = want.merge(kept, on=["split", "row"], how="left", sort=False)  # a left merge keeps want's order
    complete = hits["label"].notna().groupby(hits["split"], sort=False).all()
    hits = hits[hits["split"].isin(complete.index[complete])]
    return {str(name): frame.drop(columns="split").reset_index(drop=True)
            for name, frame in hits.groupby("split", sort=False)}


def prediction_dir(ws: Workspace, version: str) -> Path:
    return ws.runs_dir / "predictions" / f"v{version}"


def prediction_file(ws: Workspace, version: str) -> Path:
    """A version's kept predictions: `split` (<batch>-<split>-<md5 of the split file>), `row` and the rest."""
    return prediction_dir(ws, version) / PREDICTIONS


PREDICTIONS = "predictions.parquet"


def kept_predictions(ws: Workspace, version: str, batch: str, split: str) -> pd.DataFrame:
    """The rows of one split that a version's predictions are kept for, as `predictions_on` gives them."""
    kept = pd.read_parquet(prediction_file(ws, version))
    return kept[kept["split"].str.startswith(f"{batch}-{split}-")].drop(columns="split").reset_index(drop=True)


def _kept(ws: Workspace, model, logged: bool, names: list[str]) -> pd.DataFrame:
    """What is kept of a version's predictions: its file, and any of `names` kept the way kaizen kept them
    before (a file per split, every row in order). What this machine lacks of `names` is looked for among the
    artifacts of the version's run (one listing), unless `logged` is False."""
    folder, file = prediction_dir(ws, model.version), prediction_file(ws, model.version)

    def read() -> pd.DataFrame:
        frames = [pd.read_parquet(file)] if file.exists() else []
        frames += [_with_rows(pd.read_parquet(folder / f"{n}.parquet")).assign(split=n)
                   for n in names if (folder / f"{n}.parquet").exists()]
        return pd.concat(frames, ignore_index=True).drop_duplicates(["split", "row"]) if frames else _EMPTY

    kept = read()
    missing = set(names) - set(kept["split"])
    if logged and missing:
        _fetch_logged(ws, model.run_id, ([] if file.exists() else [PREDICTIONS]) +
                      [f"{n}.parquet" for n in sorted(missing)], folder)
        kept = read()
    return kept


def _with_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """A cached file from before predictions were kept per row held every row of its split, in order."""
    return frame if "row" in frame else frame.assign(row=np.arange(len(frame)))


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


def _fetch_logged(ws: Workspace, run_id: str, names: list[str], folder: Path) -> None:
    """Copy those of a version's logged predictions that its run has into the local cache (one listing)."""
    from kaizen.tasks.registry import tracking

    if not names:
        return
    client = tracking.connect(ws)
    logged = {a.path for a in client.list_artifacts(run_id, "predictions")}
    for name in names:
        if f"predictions/{name}" in logged:
            write_atomically(folder / name, Path(client.download_artifacts(run_id, f"predictions/{name}")).read_bytes())


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
    trusted = trusted_batches(ws, it.batches)
    judged = earlier_rows(ws, trusted, it.batch_id)
    news = predictions_on_each(ws, challenger.model_dir, challenger.model, trusted, "test", logged=False, rows=judged)
    olds: dict[str, pd.DataFrame] = {}
    if it.champion:
        assert champion_dir is not None, "the flow fetches the champion's files whenever there is one"
        olds = predictions_on_each(ws, champion_dir, it.champion, trusted, "test", rows=judged)
    paired = {batch: PairedPredictions(tuple(new["label"]), tuple(new["predicted"]),
                                       tuple(olds[batch]["predicted"]) if batch in olds else None)
              for batch, new in news.items()}
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
