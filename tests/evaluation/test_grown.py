"""Evaluation across a label set that grew: each model's predictions carry its own labels' probabilities, and a
challenger is judged on an earlier batch among the champion's labels only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kaizen.tasks.evaluation.grown import among_labels, on_champion_labels, rows_it_knows
from kaizen.tasks.evaluation.predictions import predictions_on_splits
from kaizen.tasks.training.head import extend_head
from tests.support.training import LABELS, two_label_model

GROWN = [*LABELS, "neutral"]


@pytest.fixture(scope="module")
def models(tiny_backbone: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A 2-label model and the same with its head grown to 3 labels, the new class made the likeliest everywhere
    (as a challenger that overrates a new label would be)."""
    from safetensors.torch import load_file, save_file

    old = two_label_model(tiny_backbone, tmp_path_factory.mktemp("old"))
    new = extend_head(old, GROWN, tmp_path_factory.mktemp("new") / "model", seed=3)
    weights = load_file(str(new / "model.safetensors"))
    weights["classifier.bias"][2] = 50.0
    save_file(weights, str(new / "model.safetensors"), metadata={"format": "pt"})
    return old, new


@pytest.mark.parametrize("labels", [LABELS, GROWN], ids=["before", "after"])  # the settings, as the set grew
def test_each_version_has_its_own_probability_columns_whatever_the_settings_say(models, copy_workspace,
                                                                              labels) -> None:
    old, new = models
    ws = copy_workspace({"data.labels": list(labels), "model.max_length": 32})
    split = ws.split_file("batch-0001", "test")
    split.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": ["fine film", "awful", "on time"], "label": ["positive", "negative", "positive"]}
                 ).to_parquet(split)
    by_old = predictions_on_splits(ws, old, None, [("batch-0001", "test")])["batch-0001", "test"]
    by_new = predictions_on_splits(ws, new, None, [("batch-0001", "test")])["batch-0001", "test"]
    assert [c for c in by_old if c.startswith("p_")] == ["p_negative", "p_positive"]
    assert [c for c in by_new if c.startswith("p_")] == ["p_negative", "p_positive", "p_neutral"]
    np.testing.assert_allclose(by_old[["p_negative", "p_positive"]].sum(axis=1), 1.0, rtol=1e-5)
    assert set(by_new["predicted"]) == {"neutral"} and (by_new["p_neutral"] > 0.99).all()


def test_on_an_earlier_batch_the_challenger_is_judged_among_the_champions_labels(models) -> None:
    old, new = models
    frame = pd.DataFrame({"row": [0, 1, 2], "label": ["negative", "positive", "neutral"],
                          "predicted": ["neutral"] * 3, "p_negative": [0.2, 0.1, 0.3],
                          "p_positive": [0.1, 0.3, 0.3], "p_neutral": [0.7, 0.6, 0.4]})
    assert among_labels(frame, LABELS)["predicted"].tolist() == ["negative", "positive", "negative"]  # a tie: first
    judged = on_champion_labels({"batch-0001": frame, "batch-0002": frame}, "batch-0002", new, old)
    assert judged["batch-0001"]["predicted"].tolist() == ["negative", "positive", "negative"]
    assert judged["batch-0002"]["predicted"].tolist() == ["neutral"] * 3  # the new batch: among all its labels
    assert frame["predicted"].tolist() == ["neutral"] * 3  # the predictions themselves (and those kept) stay whole
    assert on_champion_labels({"batch-0001": frame}, "batch-0002", old, old)["batch-0001"] is frame
    assert rows_it_knows(frame, old)["label"].tolist() == ["negative", "positive"]  # the champion cannot judge neutral
