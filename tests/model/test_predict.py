"""predict.scores against scikit-learn, the reference it replaced: the same accuracy and macro F1 on any labels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from kaizen.tasks.model.predict import scores

LABELS = st.sampled_from(["negative", "positive", "neutral", "mixed"])


@given(st.lists(st.tuples(LABELS, LABELS), min_size=1, max_size=60))
def test_scores_are_scikit_learns(pairs: list[tuple[str, str]]) -> None:
    y_true, y_pred = (np.array(side) for side in zip(*pairs, strict=True))
    got = scores(y_true, y_pred)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)


def test_scores_of_class_ids_and_a_clear_error_for_mismatched_rows() -> None:
    assert scores(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == pytest.approx({"accuracy": 0.75, "f1": 0.7333333})
    with pytest.raises(ValueError, match="as many predictions as labels"):
        scores(np.array(["a", "b"]), np.array(["a"]))
    with pytest.raises(ValueError, match="at least one"):
        scores(np.array([]), np.array([]))
