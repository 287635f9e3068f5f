"""The checks of one iteration, each a real Evidently report saved as HTML beside the numbers read from it.

`drift_check`: has the new batch drifted from the champion's training data (text content, text length, word
count, label balance)? `drift_report` is that report on any columns: the watch on captured traffic uses it too.
`quality_check`: accuracy and macro F1 of the challenger, and of the champion on the same rows. Evidently is
imported inside the functions: importing it costs about 5 s, which the CLI must not pay for `--help`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

# Descriptor columns computed from the text; they are checked for drift like any numeric column.
LENGTH_COLUMN = "text_length"
WORDS_COLUMN = "word_count"


@dataclass(frozen=True)
class DriftResult:
    share: float  # share of the checked columns that drifted (Evidently's DriftedColumnsCount share)
    drifted: bool  # share >= threshold
    # Per checked column, the score of its test. Its meaning differs by test: text content drift gives a ROC
    # AUC (drifted above 0.55); Evidently picks the others by size: p-values (drifted below 0.05) for a
    # reference of up to 1,000 rows, distances (drifted above 0.1) beyond. Read `drifted_columns` for verdicts.
    columns: dict[str, float]
    html: Path
    drifted_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scores:
    accuracy: float
    f1: float  # macro F1


@dataclass(frozen=True)
class QualityResult:
    champion: Scores | None  # None when there is no champion (bootstrap)
    challenger: Scores
    html: Path


def drift_check(reference: pd.DataFrame, current: pd.DataFrame, *, text_column: str, label_column: str,
                text_method: str, threshold: float, html_path: Path) -> DriftResult:
    """Compare `current` (the new batch) with `reference` (the champion's training data)."""
    if text_column == label_column:
        raise ValueError("drift check: text and label columns must differ")
    return drift_report(reference, current, text=text_column, categorical=(label_column,), text_method=text_method,
                        threshold=threshold, html_path=html_path)


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, *, text: str | None = None,
                 categorical: Sequence[str] = (), numerical: Sequence[str] = (), text_method: str, threshold: float,
                 html_path: Path) -> DriftResult:
    """Evidently's DataDriftPreset on the named columns of `current` against `reference`: a `text` column (its
    content, and its length and word count as descriptors), categorical and numerical columns. The loop's drift
    check (drift_check) and the watch on captured traffic (tasks/serving/watch.py) are both this report."""
    named = ([text] if text else []) + list(categorical) + list(numerical)
    if not named or len(set(named)) != len(named) or set(named) & {LENGTH_COLUMN, WORDS_COLUMN}:
        raise ValueError(f"drift check: the columns {named} must be distinct, at least one, and not named "
                         f"{LENGTH_COLUMN}/{WORDS_COLUMN}")
    for name, frame in (("reference", reference), ("current", current)):
        if frame.empty:
            raise ValueError(f"drift check: the {name} data is empty")
        missing = [c for c in named if c not in frame.columns]
        if missing:
            raise ValueError(f"drift check: the {name} data lacks column(s) {missing}; has {list(frame.columns)}")

    from evidently import DataDefinition, Dataset, Report
    from evidently.descriptors import TextLength, WordCount
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(text_columns=[text] if text else [], categorical_columns=list(categorical),
                                numerical_columns=list(numerical))
    descriptors = [TextLength(text, alias=LENGTH_COLUMN), WordCount(text, alias=WORDS_COLUMN)] if text else []

    def dataset(frame: pd.DataFrame) -> Any:
        # Only the checked columns: anything else in the frame would be inferred and checked too.
        data = pd.DataFrame({c: frame[c].astype(str).to_numpy() for c in [*([text] if text else []), *categorical]})
        for c in numerical:
            data[c] = frame[c].astype(float).to_numpy()
        return Dataset.from_pandas(data, data_definition=definition, descriptors=descriptors)

    checked = ([text, LENGTH_COLUMN, WORDS_COLUMN] if text else []) + list(categorical) + list(numerical)
    # include_tests: the per-column pass/fail verdicts only exist as tests, and the HTML shows them.
    report = Report([DataDriftPreset(columns=checked, text_method=text_method, drift_share=threshold)],
                    include_tests=True)
    try:
        snapshot = report.run(current_data=dataset(current), reference_data=dataset(reference))
    except ValueError as exc:
        # Text drift fits TF-IDF with max_df=0.5 and English stop words: a tiny or stop-word-only
        # vocabulary leaves no terms, and sklearn's message would not say which check failed.
        if "no terms remain" in str(exc):
            raise ValueError(f"drift check: the texts of column {text!r} have too few distinct "
                             "non-stop-words for text content drift") from exc
        raise
    share, columns, drifted = _drift_values(snapshot.dict())
    if share is None or set(columns) != set(checked):
        raise RuntimeError(f"drift check: unexpected Evidently result, columns {sorted(columns)}, share {share}")

    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))  # save_html silently writes nothing when given a Path
    return DriftResult(share=share, drifted=share >= threshold, columns=columns, html=html_path,
                       drifted_columns=drifted)


def _drift_values(result: dict) -> tuple[float | None, dict[str, float], tuple[str, ...]]:
    """The drifted share, each column's score and the columns whose test failed, of a DataDriftPreset snapshot."""
    share: float | None = None
    columns: dict[str, float] = {}
    for metric in result["metrics"]:
        kind = metric["config"]["type"]
        if kind.endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif kind.endswith(":ValueDrift"):
            columns[metric["config"]["column"]] = float(metric["value"])
    drifted = tuple(
        test["metric_config"]["params"]["column"]
        for test in result["tests"]
        if test["metric_config"]["params"]["type"].endswith(":ValueDrift") and test["status"] == "FAIL"
    )
    return share, columns, drifted


def quality_check(labels_true: Sequence[str], challenger_pred: Sequence[str], champion_pred: Sequence[str] | None,
                  *, labels: Sequence[str], html_path: Path) -> QualityResult:
    """Score the challenger (Evidently's current data) and the champion (its reference) on the same rows."""
    labels = [str(label) for label in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"quality check: labels must be at least two distinct values, got {labels}")
    if len(labels_true) == 0:
        raise ValueError("quality check: no rows to score")
    named = [("challenger", challenger_pred)] + ([("champion", champion_pred)] if champion_pred is not None else [])
    for name, values in [("true labels", labels_true), *named]:
        if len(values) != len(labels_true):
            raise ValueError(f"quality check: {len(values)} {name} predictions for {len(labels_true)} rows")
        unknown = sorted({str(v) for v in values} - set(labels))
        if unknown:
            raise ValueError(f"quality check: {name} has values {unknown} outside the labels {labels}")

    true = [str(v) for v in labels_true]
    frames = {name: pd.DataFrame({"target": true, "prediction": [str(v) for v in values]}) for name, values in named}
    observed = {name: set(frame["target"]) | set(frame["prediction"]) for name, frame in frames.items()}
    current = _definition(observed["challenger"], labels)
    reference = _definition(observed["champion"], labels) if "champion" in frames else None

    scores: dict[str, Scores] = {}
    if _compatible(current, reference):
        snapshot = _run(_dataset(frames["challenger"], current),
                        _dataset(frames["champion"], current) if "champion" in frames else None)
        scores["challenger"] = _scores(snapshot, observed["challenger"], reference=False)
        if "champion" in frames:
            scores["champion"] = _scores(snapshot, observed["champion"], reference=True)
    else:
        # No single task declaration suits both datasets (see _definition): score each alone; the HTML then
        # shows the challenger only.
        snapshot = _run(_dataset(frames["challenger"], current), None)
        scores["challenger"] = _scores(snapshot, observed["challenger"], reference=False)
        alone = _run(_dataset(frames["champion"], reference), None)
        scores["champion"] = _scores(alone, observed["champion"], reference=False)

    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    return QualityResult(champion=scores.get("champion"), challenger=scores["challenger"], html=html_path)


def _definition(observed: set[str], labels: list[str]) -> str | None:
    """The positive label to declare a binary task with, or None for a multiclass one.

    Evidently (0.7.23) decides binary versus multiclass from the labels *observed* in each dataset (target and
    prediction together), not from the declaration: with exactly two observed it needs a declared positive
    label among them (else KeyError), and with any other number in the current dataset it cannot compute the
    TPR a binary declaration asks for (ValueError). So small or one-sided batches need the declaration to follow the data.
    """
    if len(observed) != 2:
        return None
    return labels[-1] if labels[-1] in observed else max(observed, key=labels.index)


def _compatible(current: str | None, reference: str | None) -> bool:
    # The reference dataset may miss the TPR (Evidently tolerates that), but it needs the positive label
    # when it observed two labels, and that one declaration must also suit the current dataset.
    return reference is None or current == reference


def _run(current: Any, reference: Any) -> Any:
    from evidently import Report
    from evidently.presets import ClassificationPreset

    with warnings.catch_warnings():
        # Labels missing from a small batch make sklearn and Evidently warn about zero divisions (UserWarning,
        # RuntimeWarning); those per-label scores count as 0, as sklearn's own defaults do.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report([ClassificationPreset()]).run(current_data=current, reference_data=reference)


def _dataset(frame: pd.DataFrame, pos_label: str | None) -> Any:
    from evidently import BinaryClassification, DataDefinition, Dataset, MulticlassClassification

    task = (BinaryClassification(target="target", prediction_labels="prediction", pos_label=pos_label)
            if pos_label is not None else MulticlassClassification(target="target", prediction_labels="prediction"))
    definition = DataDefinition(classification=[task], categorical_columns=["target", "prediction"])
    return Dataset.from_pandas(frame, data_definition=definition)


def _scores(snapshot: Any, observed: set[str], *, reference: bool) -> Scores:
    """Accuracy and macro F1 of the current (or reference) dataset of a ClassificationPreset snapshot.

    snapshot.dict() holds the current values only; the reference ones come from the context by metric id.
    Evidently's F1Score is the positive label's F1 in binary tasks, so macro F1 is the mean of F1ByLabel over
    the observed labels, as sklearn's average="macro" takes it. F1ByLabel lists only labels present in the
    target: a label only ever predicted has no true positive, so its F1 is 0.
    """
    values: dict[str, Any] = {}
    for metric in snapshot.dict()["metrics"]:
        kind = metric["config"]["type"].rsplit(":", 1)[-1]
        if kind in ("Accuracy", "F1ByLabel"):
            values[kind] = (snapshot.context.get_reference_metric_result(metric["id"]).to_dict()["value"]
                            if reference else metric["value"])
    if set(values) != {"Accuracy", "F1ByLabel"}:
        raise RuntimeError(f"quality check: unexpected Evidently result, found {sorted(values)}")
    by_label = {str(label): float(f1) for label, f1 in values["F1ByLabel"].items()}
    f1 = sum(by_label.get(label, 0.0) for label in observed) / len(observed)
    return Scores(accuracy=float(values["Accuracy"]), f1=f1)
