"""tasks.evaluation.reports against real Evidently reports on small review-like frames built here."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from kaizen.tasks.evaluation.reports import (
    LENGTH_COLUMN,
    WORDS_COLUMN,
    DriftResult,
    QualityResult,
    drift_check,
    quality_check,
)

MOVIE = {
    "subject": ["the movie", "this film", "the sequel", "the plot", "the cast", "the soundtrack", "the director",
                "the ending", "the script", "the lead actor", "the villain", "the cinematography"],
    "positive": ["was brilliant", "felt moving", "kept me hooked", "made me laugh", "was beautifully shot",
                 "deserves every award", "was a delight"],
    "negative": ["was boring", "dragged on forever", "felt predictable", "was badly acted", "made no sense",
                 "was a waste of time", "put me to sleep"],
    "tail": ["", "", "honestly", "from start to finish", "in the second half", "compared to the trailer",
             "for a sunday evening"],
}
GADGET = {
    "subject": ["the charger", "this laptop", "the battery", "the keyboard", "the router", "the headphones",
                "the phone case", "the printer", "the usb cable", "the monitor", "the speaker", "the mouse"],
    "positive": ["works perfectly", "arrived quickly", "charges fast", "feels sturdy"],
    "negative": ["stopped working", "overheats constantly", "arrived broken", "disconnects every hour",
                 "needed a refund", "drains in minutes", "has a cracked screen", "lost its warranty"],
    "tail": ["after two days", "out of the box", "says the seller", "despite the firmware update",
             "according to support", "within the first week of daily use at the office"],
}
LABELS = ["negative", "positive"]


def reviews(vocabulary: dict[str, list[str]], n: int, positive_share: float, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = "positive" if rng.random() < positive_share else "negative"
        words = [rng.choice(vocabulary["subject"]), rng.choice(vocabulary[label]), rng.choice(vocabulary["tail"])]
        rows.append({"text": " ".join(w for w in words if w).capitalize() + ".", "label": label, "id": len(rows)})
    return pd.DataFrame(rows)


def run_drift(reference: pd.DataFrame, current: pd.DataFrame, html: Path) -> DriftResult:
    return drift_check(reference, current, text_column="text", label_column="label",
                       text_method="abs_text_content_drift", threshold=0.5, html_path=html)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return reviews(MOVIE, 500, 0.5, seed=1)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reports")


def test_importing_the_module_does_not_import_evidently() -> None:
    code = "import sys, kaizen.tasks.evaluation.reports; sys.exit('evidently' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_same_distribution_is_not_drifted(reference: pd.DataFrame, reports: Path) -> None:
    result = run_drift(reference, reviews(MOVIE, 500, 0.5, seed=2), reports / "same" / "drift.html")
    assert set(result.columns) == {"text", LENGTH_COLUMN, WORDS_COLUMN, "label"}
    assert result.share < 0.5 and not result.drifted
    assert result.share == len(result.drifted_columns) / 4
    assert "text" not in result.drifted_columns and result.columns["text"] < 0.55
    assert result.html.is_file() and result.html.stat().st_size > 0


def test_new_vocabulary_and_flipped_labels_drift(reference: pd.DataFrame, reports: Path) -> None:
    result = run_drift(reference, reviews(GADGET, 500, 0.1, seed=3), reports / "drifted" / "drift.html")
    assert result.drifted and result.share >= 0.5
    # text content drift scores a domain classifier's ROC AUC: wholly new words separate perfectly.
    assert "text" in result.drifted_columns and result.columns["text"] > 0.9
    assert "label" in result.drifted_columns and result.columns["label"] < 0.05  # a p-value
    assert result.share == len(result.drifted_columns) / 4
    assert result.html.is_file() and result.html.stat().st_size > 0


def test_drift_rejects_empty_frames_and_missing_columns(reference: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="current data is empty"):
        run_drift(reference, reference.iloc[:0], tmp_path / "x.html")
    with pytest.raises(ValueError, match="reference data lacks column"):
        run_drift(reference.drop(columns="label"), reference, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def predictions(truth: list[str], labels: list[str], accuracy: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [t if rng.random() < accuracy else rng.choice([x for x in labels if x != t]) for t in truth]


def assert_matches_sklearn(result: QualityResult, truth: list[str], challenger: list[str],
                           champion: list[str] | None) -> None:
    assert result.challenger.accuracy == pytest.approx(accuracy_score(truth, challenger))
    assert result.challenger.f1 == pytest.approx(f1_score(truth, challenger, average="macro", zero_division=0))
    if champion is None:
        assert result.champion is None
    else:
        assert result.champion is not None
        assert result.champion.accuracy == pytest.approx(accuracy_score(truth, champion))
        assert result.champion.f1 == pytest.approx(f1_score(truth, champion, average="macro", zero_division=0))
    assert result.html.is_file() and result.html.stat().st_size > 0


@pytest.mark.parametrize("labels", [LABELS, ["sports", "politics", "science", "arts"]])
def test_quality_matches_sklearn_for_both_models(labels: list[str], tmp_path: Path) -> None:
    rng = random.Random(7)
    truth = [rng.choice(labels) for _ in range(300)]
    challenger, champion = predictions(truth, labels, 0.85, seed=8), predictions(truth, labels, 0.6, seed=9)
    result = quality_check(truth, challenger, champion, labels=labels, html_path=tmp_path / "q" / "quality.html")
    assert_matches_sklearn(result, truth, challenger, champion)
    assert result.challenger.accuracy > result.champion.accuracy  # current and reference not swapped


def test_quality_without_champion(tmp_path: Path) -> None:
    truth = ["positive", "negative", "negative", "positive", "positive"]
    challenger = ["positive", "negative", "positive", "positive", "negative"]
    result = quality_check(truth, challenger, None, labels=LABELS, html_path=tmp_path / "quality.html")
    assert_matches_sklearn(result, truth, challenger, None)


@pytest.mark.parametrize(("labels", "truth", "challenger", "champion"), [
    # one label seen by the challenger's dataset, two by the champion's
    (LABELS, ["positive"] * 4, ["positive"] * 4, ["positive", "negative", "positive", "positive"]),
    # a label only ever predicted (F1 0), and three-class data where one dataset sees only two labels
    (LABELS, ["positive"] * 3, ["negative", "positive", "positive"], ["positive"] * 3),
    (["a", "b", "c"], list("aabb"), list("abab"), list("abcb")),
    (["a", "b", "c"], list("aabc"), list("aabc"), list("aaba")),
])
def test_quality_on_small_one_sided_batches(labels: list[str], truth: list[str], challenger: list[str],
                                            champion: list[str], tmp_path: Path) -> None:
    result = quality_check(truth, challenger, champion, labels=labels, html_path=tmp_path / "quality.html")
    assert_matches_sklearn(result, truth, challenger, champion)


def test_quality_rejects_bad_input(tmp_path: Path) -> None:
    html = tmp_path / "quality.html"
    with pytest.raises(ValueError, match="2 challenger predictions for 3 rows"):
        quality_check(["positive"] * 3, ["positive"] * 2, None, labels=LABELS, html_path=html)
    with pytest.raises(ValueError, match="4 champion predictions for 3 rows"):
        quality_check(["positive"] * 3, ["positive"] * 3, ["positive"] * 4, labels=LABELS, html_path=html)
    with pytest.raises(ValueError, match=r"champion has values \['neutral'\]"):
        quality_check(["positive"] * 2, ["positive"] * 2, ["neutral", "positive"], labels=LABELS, html_path=html)
    with pytest.raises(ValueError, match="true labels has values"):
        quality_check(["meh", "positive"], ["positive"] * 2, None, labels=LABELS, html_path=html)
    with pytest.raises(ValueError, match="no rows"):
        quality_check([], [], None, labels=LABELS, html_path=html)
    assert not html.exists()
