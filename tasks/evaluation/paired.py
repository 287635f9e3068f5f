"""paired: one batch's test rows as the gate sees them, labelled by each model it compares.

Its own module because three others read it: evaluate.check_quality fills it, best.py records from it and
promote.promotion_gate judges it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedPredictions:
    """One batch's test split, labelled by the champion and by the challenger."""

    labels: tuple[str, ...]
    challenger: tuple[str, ...]
    champion: tuple[str, ...] | None  # None at bootstrap
    # The best model this earlier batch has had (tasks/evaluation/best.py), on the same rows; None when that is
    # the champion, or none is recorded, or gate.judge_against_best is off.
    best: tuple[str, ...] | None = None
    best_version: str | None = None

    def correct(self, model: str) -> np.ndarray:
        return np.asarray(getattr(self, model)) == np.asarray(self.labels)
