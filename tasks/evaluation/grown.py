"""grown: judging models across a label set that grew (labels appended to `data.labels`, tasks/training/head.py).

A model is judged on the labels it could have learned: a batch from before the set grew holds no row of a new
label, so a challenger's prediction there is the most probable of the champion's labels, and a champion cannot
be asked about a label it never had. Each model's own predictions (and its kept ones) stay over all its labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.model.predict import model_labels


def among_labels(predictions: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """`predictions` (predictions.predictions_on: `label`, `predicted`, `p_<label>`...) with `predicted` the most
    probable of `labels` alone, ties to the first as in predict.predict."""
    probs = predictions[[f"p_{label}" for label in labels]].to_numpy(dtype=float)
    return predictions.assign(predicted=np.asarray(labels, dtype=object)[probs.argmax(axis=1)])


def on_champion_labels(news: dict[str, pd.DataFrame], new_batch: str, challenger_dir: Path,
                       champion_dir: Path) -> dict[str, pd.DataFrame]:
    """The challenger's predictions per batch as the gate compares them with the champion's: when labels were
    appended since the champion, on each earlier batch among the champion's labels only (a new label predicted
    there must not count against it); on the new batch among all of them."""
    old = model_labels(champion_dir)
    if model_labels(challenger_dir) == old:
        return news
    return {b: frame if b == new_batch else among_labels(frame, old) for b, frame in news.items()}


def rows_it_knows(predictions: pd.DataFrame, model_dir: Path) -> pd.DataFrame:
    """The rows of a model's `predictions` whose label is one of the model's own: those it can be said to agree
    or disagree with (the champion judging a batch that carries labels appended since it was trained)."""
    return predictions[predictions["label"].isin(model_labels(model_dir))].reset_index(drop=True)
