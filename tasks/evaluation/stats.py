"""stats: the paired tests the gate and the label check decide with.

Champion and challenger are scored on the same rows, so their difference is judged row by row: what matters is
the rows one got right and the other got wrong. A test split of a few hundred rows resolves differences of a
few points at best (`resolution` says how many), so every verdict comes with its estimate and interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def mcnemar_exact(wins: int, losses: int) -> float:
    """One-sided exact McNemar test that the challenger is better: P(X >= wins) for X ~ Binomial(wins + losses,
    1/2), where wins are rows only the challenger got right and losses rows only the champion got right."""
    n = wins + losses
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n)


@dataclass(frozen=True)
class PairedDifference:
    """The challenger's score minus the champion's on the same rows."""

    rows: int
    wins: int  # rows only the challenger got right
    losses: int  # rows only the champion got right
    estimate: float  # challenger accuracy - champion accuracy
    low: float  # two-sided confidence interval of the estimate (paired bootstrap, percentile)
    high: float
    confidence: float

    def describe(self) -> str:
        return (f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}] ({self.rows} rows: {self.wins} won, "
                f"{self.losses} lost)")


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` bootstrap samples of `values` (rows drawn with replacement), in chunks so that memory
    stays small for large splits."""
    rng = np.random.default_rng(seed)
    n, out, done = len(values), np.empty(resamples), 0
    chunk = max(1, 2_000_000 // max(n, 1))
    while done < resamples:
        k = min(chunk, resamples - done)
        out[done:done + k] = values[rng.integers(0, n, size=(k, n))].mean(axis=1)
        done += k
    return out


def paired_difference(champion_correct: np.ndarray, challenger_correct: np.ndarray, *, confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> tuple[PairedDifference, np.ndarray]:
    """The paired difference in accuracy and its bootstrap distribution (for one-sided tests against a margin)."""
    old = np.asarray(champion_correct, dtype=bool)
    new = np.asarray(challenger_correct, dtype=bool)
    if old.shape != new.shape or old.ndim != 1 or len(old) == 0:
        raise ValueError(f"paired difference: need two equal, non-empty row vectors, got {old.shape} and {new.shape}")
    diff = new.astype(np.int8) - old.astype(np.int8)
    draws = _bootstrap_means(diff, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    result = PairedDifference(rows=len(diff), wins=int((diff == 1).sum()), losses=int((diff == -1).sum()),
                              estimate=float(diff.mean()), low=float(low), high=float(high), confidence=confidence)
    return result, draws


def regression_p_value(draws: np.ndarray, margin: float) -> float:
    """One-sided p-value of "the challenger lost more than `margin`" (H0: difference >= -margin), read off the
    bootstrap distribution of the difference: small when nearly every resample shows a loss beyond the margin."""
    return float((1 + np.count_nonzero(draws >= -margin)) / (len(draws) + 1))


def holm(p_values: dict[str, float], alpha: float) -> dict[str, bool]:
    """Holm's step-down procedure: which hypotheses are rejected with the family-wise error held at `alpha`."""
    rejected = dict.fromkeys(p_values, False)
    for rank, (key, p) in enumerate(sorted(p_values.items(), key=lambda item: item[1])):
        if p > alpha / (len(p_values) - rank):
            break
        rejected[key] = True
    return rejected


@dataclass(frozen=True)
class Agreement:
    """How far a batch's labels agree with a model's predictions beyond what chance gives."""

    rows: int
    agreement: float  # share of rows where prediction == label
    kappa: float  # Cohen's kappa
    kappa_high: float  # upper end of its one-sided bootstrap confidence bound
    confident_issues: float  # share of rows whose label the model rejects with high confidence


def cohen_kappa(labels: np.ndarray, predicted: np.ndarray) -> float:
    agree = float((labels == predicted).mean())
    classes = np.union1d(labels, predicted)
    chance = float(sum((labels == c).mean() * (predicted == c).mean() for c in classes))
    return 0.0 if chance >= 1.0 else (agree - chance) / (1 - chance)


def kappa_quantile(labels: np.ndarray, predicted: np.ndarray, q: float, resamples: int, seed: int) -> float:
    """The `q` quantile of Cohen's kappa over bootstrap resamples of the rows: one end of a confidence bound."""
    rng = np.random.default_rng(seed)
    kappas = [cohen_kappa(labels[idx], predicted[idx]) for idx in rng.integers(0, len(labels),
                                                                               size=(resamples, len(labels)))]
    return float(np.quantile(kappas, q))


def label_agreement(labels: list[str], predicted: list[str], confidence_of_label: np.ndarray, *,
                    confident: float, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Agreement:
    """Agreement of `labels` with `predicted`; `confidence_of_label` is the model's probability of each row's own
    label (a confident issue: the model gives the label less than 1 - `confident`)."""
    y, p = np.asarray(labels), np.asarray(predicted)
    if len(y) == 0 or len(y) != len(p) or len(p) != len(confidence_of_label):
        raise ValueError(f"label agreement: need equal, non-empty rows, got {len(y)}, {len(p)}, "
                         f"{len(confidence_of_label)}")
    return Agreement(rows=len(y), agreement=float((y == p).mean()), kappa=cohen_kappa(y, p),
                     kappa_high=kappa_quantile(y, p, confidence, resamples, seed),
                     confident_issues=float((np.asarray(confidence_of_label) < 1 - confident).mean()))


def resolution(rows: int, discordant: float = 0.15, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true loss beyond the margin that a one-sided paired test on `rows` rows detects with `power`,
    when a share `discordant` of the rows are won or lost (normal approximation): what a test split can see."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)
    return z * math.sqrt(discordant / rows)


@dataclass(frozen=True)
class Learnability:
    """How far a batch's labels can be predicted from its own texts: Cohen's kappa of out-of-fold predictions."""

    rows: int
    kappa: float
    kappa_low: float  # lower end of its one-sided bootstrap confidence bound

    @property
    def learnable(self) -> bool:
        return self.kappa_low > 0.0


def learnability(texts: list[str], labels: list[str], *, folds: int = 5, confidence: float = 0.95,
                 resamples: int = 1000, seed: int = 0) -> Learnability:
    """Out-of-fold predictions of a TF-IDF + logistic regression classifier (balanced class weights, so that a
    majority label is no free score) trained on the batch itself, against its labels. Real labels, even ones
    flipped throughout, follow the texts; random labels do not (kappa about 0). It needs no champion, so it
    tells random labels from a domain the champion does not know yet, where agreement with the champion is
    about chance either way."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    y = np.asarray(labels)
    smallest = min(np.unique(y, return_counts=True)[1]) if len(y) else 0
    if smallest < 2:
        raise ValueError(f"learnability: every label needs 2 rows or more, the rarest has {smallest}")
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          LogisticRegression(class_weight="balanced", max_iter=1000))
    split = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, list(texts), y, cv=split)
    return Learnability(rows=len(y), kappa=cohen_kappa(y, predicted),
                        kappa_low=kappa_quantile(y, predicted, 1 - confidence, resamples, seed))
