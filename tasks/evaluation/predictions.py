"""predictions: a model's predictions on the loop's splits, and those of every registered version, kept.

A registered version's predictions on a split are computed once and kept (a version never changes, and the
split is named by its content), so the champion is not scored again at each step or iteration, nor the best model
an earlier batch has had (tasks/evaluation/best.py). Every `p_<label>` column is the model's own label's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.model.predict import model_labels, pick_device, predict
from kaizen.tasks.workspace.files import parquet_bytes, write_atomically
from kaizen.tasks.workspace.layout import Workspace


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
    `logged` False: the run has none yet (the challenger being checked), do not look. The `p_<label>` columns are
    the model's own labels (its config's), which need not be `data.labels` now. Rows not kept are scored in
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
        start, scored, own_labels = 0, [], model_labels(model_dir)
        for key, table in todo.items():
            end = start + len(table)
            out = pd.DataFrame({"row": wanted[key], "label": table.column("label").to_numpy(zero_copy_only=False),
                                "predicted": labels[start:end]})
            for i, label in enumerate(own_labels):
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


def predictions_of(ws: Workspace, version: str, rows: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
    """A registered version's predictions on the given rows of each batch's test split: its kept ones (this
    machine's, else its run's), and only the rows they lack scored, with its model fetched only then."""
    from types import SimpleNamespace

    from kaizen.tasks.registry import tracking

    names = {b: f"{b}-test-{hashlib.md5(ws.split_file(b, 'test').read_bytes()).hexdigest()}"  # as kept
             for b in rows}

    def look_up(model, logged: bool, batches) -> dict[str, pd.DataFrame]:
        looked_up = _look_up(_kept(ws, model, logged, [names[b] for b in batches]), {names[b]: rows[b] for b in batches})
        return {b: looked_up[names[b]] for b in batches if names[b] in looked_up}

    # This machine's file first: asking the registry for the version, once per earlier batch's best model and
    # iteration, made evaluation grow with the history.
    found = look_up(SimpleNamespace(version=version), False, list(rows))
    if missing := [b for b in rows if b not in found]:
        model = tracking.model_version(tracking.connect(ws), ws.settings.model.registered_name, version)
        found |= look_up(model, True, missing)
        if still := {b: rows[b] for b in missing if b not in found}:
            # kept for fewer rows (gate.max_earlier_rows raised since) or for an older split (labels corrected)
            found |= predictions_on_each(ws, tracking.local_model(ws, version), model, list(still), "test",
                                         rows=still)
    return found
