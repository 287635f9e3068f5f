"""Helpers shared by the tests (fixtures live in conftest.py): fast settings for the tiny model, writing
params.yaml, label-balanced samples of the real data, landing files, and where the repository is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kaizen.tasks.workspace.files import frame_bytes
from kaizen.tasks.workspace.settings import write_overrides

REPO = Path(__file__).resolve().parent.parent  # the kaizen checkout the tests run from

# Settings that let the tiny model learn something in seconds and keep every test small. It has to learn
# enough not to answer one label for every row: a constant predictor is never promoted.
FAST = {
    "train.learning_rate": 5e-3, "train.epochs": 3, "train.bootstrap_epochs": 6, "train.batch_size": 8,
    "model.max_length": 32, "drift.max_reference_rows": 400, "data.min_batch_rows": 20, "data.settle_seconds": 0,
    "gate.min_test_rows": 5,  # the small batches of the tests still get judged
}

# The gate and the label check wide open, for tests of the loop's mechanics rather than its verdicts.
OPEN_GATE = {"gate.min_score": 0.0, "gate.min_improvement": -1.0, "gate.max_regression": 1.0,
             "gate.improvement_alpha": 1.0, "trust.min_kappa": -1.0, "trust.max_confident_issues": 1.0}


def write_params(root: Path, overrides: dict) -> None:
    write_overrides(root / "params.yaml", overrides)


def sample(domain: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """A label-balanced sample of a real domain."""
    per_label = n // domain["label"].nunique()
    return (domain.groupby("label", group_keys=False)
            .apply(lambda g: g.sample(n=min(per_label, len(g)), random_state=seed))
            .sample(frac=1.0, random_state=seed).reset_index(drop=True)[["text", "label"]])


def land(ws, name: str, frame: pd.DataFrame) -> Path:
    """Drop `frame` into the workspace's landing zone as `name` (its ending picks the format)."""
    landing = Path(ws.landing)
    landing.mkdir(parents=True, exist_ok=True)
    path = landing / name
    path.write_bytes(frame_bytes(frame, name))
    return path


def clear_tracking_retries(monkeypatch, ws) -> None:
    """The MLflow retry settings that connect puts in os.environ (tasks/registry/tracking.py), cleared for this test and
    restored after it, so that they neither come from an earlier test nor leak into a later one."""
    from kaizen.tasks.registry import tracking

    for key in (*tracking.tracking_retry_env(ws), tracking.SET_BY_KAIZEN):
        monkeypatch.delenv(key, raising=False)
