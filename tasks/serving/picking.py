"""picking: which N texts of a pool of doubtful ones go to the labelers, in pure numpy on the champion's unit
embeddings (tasks/serving/selection.py reads the captures, embeds them and writes the queue).

- `typical` (select.method's default): weighted k-means (cosine; Zhdanov 2019, "diverse mini-batch active
  learning"), each text weighing its uncertainty, and per cluster the text nearest its centre: N doubts that each
  stand for many like them. Optionally per label the champion predicted, each label its quota of N.
- `farthest`: greedy k-center from a sample of the training data: the first picks where that data is thinnest.
Both are bounded by a Deadline (select.max_seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd


class SelectionError(RuntimeError):
    """Texts could not be chosen as asked; the message says why."""


@dataclass(frozen=True)
class Deadline:
    """When a selection must have ended (time.monotonic()), select.max_seconds after it started."""

    at: float
    seconds: float

    def check(self, doing: str) -> None:
        if time.monotonic() > self.at:
            raise SelectionError(f"choosing texts to label ran past select.max_seconds ({self.seconds:g} s) while "
                                 f"{doing}: raise it, or ask for fewer (--budget, select.pool_factor)")


def quotas(counts: pd.Series, k: int) -> dict:
    """`k` shared out in proportion to `counts` (largest remainders, ties to the first): each label's quota."""
    exact = counts.astype(float) / float(counts.sum()) * k
    base = exact.floordiv(1).astype(int)
    for label in (exact - base).sort_values(ascending=False, kind="stable").index[: k - int(base.sum())]:
        base[label] += 1
    return {label: int(n) for label, n in base.items()}


@dataclass(frozen=True)
class Picks:
    """Rows of the pool chosen, in queue order, with per pick: its cosine distance from the training sample
    (coverage, NaN without one), from the picks before it (spread: `farthest` only, else NaN) and how many pool
    texts its cluster holds (`typical` only, else 0)."""

    order: list[int]
    coverage: np.ndarray
    spread: np.ndarray
    stands_for: np.ndarray


def choose(points: np.ndarray, uncertainty: np.ndarray, centres: np.ndarray | None, k: int, method: str,
           seed: int, deadline: Deadline | None = None,
           groups: list[tuple[np.ndarray, int]] | None = None) -> Picks:
    """`k` rows of the pool (unit embeddings `points`, each text's `uncertainty`) by select.method; with `groups`
    (rows, quota) each group's quota of them from its own rows (`typical` only), the rest of `k` from any row."""
    coverage = distance_to(points, centres)
    if method == "farthest":
        order, spread = farthest_first(points, coverage, k, deadline)
        return Picks(order, coverage[order], spread, np.zeros(len(order), dtype=int))
    if groups is None:
        order, sizes = typical_doubt(points, uncertainty, k, seed, deadline)
    else:
        picked: list[tuple[int, int]] = []
        for rows, quota in groups:
            inner, inner_sizes = typical_doubt(points[rows], uncertainty[rows], quota, seed, deadline)
            picked += [(int(rows[i]), int(n)) for i, n in zip(inner, inner_sizes, strict=True)]
        picked.sort(key=lambda pick: -pick[1])  # the biggest clusters first, whatever their label
        order, sizes = spend_the_rest([i for i, _ in picked], [n for _, n in picked], uncertainty, k)
    return Picks(order, coverage[order], np.full(len(order), np.nan), sizes)


def spend_the_rest(order: list[int], sizes: list[int], uncertainty: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """`order` (with its clusters' `sizes`) filled up to `k` rows with the most doubtful rows not in it (size 0):
    texts that embed alike can leave clusters empty, and the budget is still spent."""
    taken = set(order)
    rest = [int(i) for i in np.argsort(-np.asarray(uncertainty, dtype=float), kind="stable") if i not in taken]
    rest = rest[: max(0, k - len(order))]
    return (order + rest)[:k], np.asarray((sizes + [0] * len(rest))[:k], dtype=int)


def distance_to(points: np.ndarray, centres: np.ndarray | None) -> np.ndarray:
    """Each point's cosine distance from the nearest of `centres` (NaN without centres), 4,096 points at a time."""
    if centres is None or not len(centres):
        return np.full(len(points), np.nan)
    return np.concatenate([np.clip(1.0 - points[s : s + 4096] @ centres.T, 0.0, None).min(axis=1)
                           for s in range(0, len(points), 4096)])


def typical_doubt(points: np.ndarray, uncertainty: np.ndarray, k: int, seed: int, deadline: Deadline | None = None,
                  rounds: int = 30) -> tuple[list[int], np.ndarray]:
    """Weighted k-means on unit vectors (cosine; Zhdanov 2019, "diverse mini-batch active learning"): `k` clusters
    of the pool, each text weighing its uncertainty (plus a floor, so a sure text still counts), seeded by
    k-means++ from `seed`; each cluster gives its member nearest the centre. The rows, heaviest cluster first, and
    each cluster's size."""
    n, k = len(points), min(k, len(points))
    if k == 0:
        return [], np.zeros(0, dtype=int)
    weight = np.clip(np.asarray(uncertainty, dtype=float), 0.0, None) + 1e-3
    rng = np.random.default_rng(seed)
    first = int(rng.choice(n, p=weight / weight.sum()))
    seeds, nearest = [first], np.clip(1.0 - points @ points[first], 0.0, None)
    for _ in range(1, k):  # k-means++: the next seed drawn by weight x distance from the seeds so far
        if deadline is not None:
            deadline.check("seeding the clusters")
        pull = weight * nearest
        pull[seeds] = 0.0
        nxt = int(rng.choice(n, p=pull / pull.sum())) if pull.sum() > 0 else \
            int(np.setdiff1d(np.arange(n), seeds)[0])  # the rest coincide with seeds: any unseeded text
        seeds.append(nxt)
        nearest = np.minimum(nearest, np.clip(1.0 - points @ points[nxt], 0.0, None))
    centre = points[seeds].copy()
    member = np.full(n, -1)
    for _ in range(rounds):
        if deadline is not None:
            deadline.check("clustering them")
        assigned = np.argmax(points @ centre.T, axis=1)
        if np.array_equal(assigned, member):
            break
        member = assigned
        total = np.zeros_like(centre)
        np.add.at(total, member, weight[:, None] * points)
        norm = np.linalg.norm(total, axis=1)
        held = norm > 1e-12  # an emptied cluster keeps its centre
        centre[held] = total[held] / norm[held, None]
    similarity = points @ centre.T
    mass = np.bincount(member, weights=weight, minlength=k)
    order, sizes = [], []
    for c in np.argsort(-mass, kind="stable"):
        inside = np.flatnonzero(member == c)
        if len(inside):
            order.append(int(inside[np.argmax(similarity[inside, c])]))
            sizes.append(len(inside))
    return spend_the_rest(order, sizes, weight, k)


def farthest_first(points: np.ndarray, coverage: np.ndarray, k: int, deadline: Deadline | None = None
                   ) -> tuple[list[int], np.ndarray]:
    """Greedy k-center on unit vectors (cosine distance): `k` rows of `points`, each the farthest from the centres
    (`coverage`: each point's distance from them, `distance_to`; NaN without centres) and from the rows picked
    before it (ties to the lowest row). Also each pick's distance from everything before it when picked (its
    spread; NaN for a first pick without centres)."""
    nearest = np.where(np.isnan(coverage), np.inf, coverage)
    order: list[int] = []
    spread = []
    for _ in range(min(k, len(points))):
        if deadline is not None:
            deadline.check("picking them apart")
        pick = int(np.argmax(nearest))
        order.append(pick)
        spread.append(nearest[pick] if np.isfinite(nearest[pick]) else np.nan)
        nearest = np.minimum(nearest, np.clip(1.0 - points @ points[pick], 0.0, None))
        nearest[order] = -np.inf  # never picked twice, even where texts embed alike
    return order, np.asarray(spread, dtype=float)
