"""The paired statistics the gate and the label check decide with, against independent references (scipy,
scikit-learn) and against what they promise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from kaizen.tasks.evaluation.stats import (
    cohen_kappa,
    holm,
    label_agreement,
    mcnemar_exact,
    paired_difference,
    regression_p_value,
    resolution,
)


@given(wins=st.integers(0, 60), losses=st.integers(0, 60))
def test_mcnemar_exact_is_the_one_sided_binomial_test_of_the_discordant_rows(wins: int, losses: int) -> None:
    expected = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    assert mcnemar_exact(wins, losses) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def outcomes(both: int, wins: int, losses: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-level correctness of (champion, challenger) with the given counts, shuffled."""
    champion = np.array([1] * both + [0] * wins + [1] * losses + [0] * neither, dtype=bool)
    challenger = np.array([1] * both + [1] * wins + [0] * losses + [0] * neither, dtype=bool)
    order = np.random.default_rng(0).permutation(len(champion))
    return champion[order], challenger[order]


def test_the_paired_difference_counts_the_discordant_rows_and_brackets_its_estimate() -> None:
    diff, draws = paired_difference(*outcomes(120, 5, 11, 24), resamples=3000)
    assert (diff.rows, diff.wins, diff.losses) == (160, 5, 11)
    assert diff.estimate == pytest.approx((5 - 11) / 160)
    assert diff.low < diff.estimate < diff.high and diff.high - diff.low < 0.1
    assert len(draws) == 3000 and draws.mean() == pytest.approx(diff.estimate, abs=0.005)
    assert "-0.037" in diff.describe() and "5 won, 11 lost" in diff.describe()


def test_six_rows_lost_of_160_is_no_evidence_of_a_loss_beyond_two_points() -> None:
    # The issue's numbers: the challengers lost 6 net rows of 160 on the movie batch (McNemar p 0.1 to 0.35).
    _, draws = paired_difference(*outcomes(120, 5, 11, 24))
    assert regression_p_value(draws, margin=0.02) > 0.2


def test_a_large_loss_is_shown_and_a_wider_margin_forgives_it() -> None:
    _, draws = paired_difference(*outcomes(200, 4, 46, 50))
    assert regression_p_value(draws, margin=0.02) < 0.001
    assert regression_p_value(draws, margin=0.25) > 0.5


def test_unequal_or_empty_rows_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_difference(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_difference(np.ones(0, bool), np.ones(0, bool))


@settings(max_examples=200)
@given(ps=st.lists(st.floats(0, 1), min_size=1, max_size=8), alpha=st.sampled_from([0.01, 0.05, 0.1]))
def test_holm_rejects_a_prefix_of_the_sorted_p_values_and_never_more_than_bonferroni_allows(ps, alpha) -> None:
    rejected = holm({f"h{i}": p for i, p in enumerate(ps)}, alpha)
    ranked = sorted(range(len(ps)), key=lambda i: ps[i])
    flags = [rejected[f"h{i}"] for i in ranked]
    assert flags == sorted(flags, reverse=True)  # rejections come first in p order, then none
    for i, p in enumerate(ps):
        if p <= alpha / len(ps):
            assert rejected[f"h{i}"]  # Holm is never less powerful than Bonferroni
        if p > alpha:
            assert not rejected[f"h{i}"]


def test_holm_steps_down() -> None:
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}, 0.05) == {"a": True, "b": False, "c": False}
    assert holm({"a": 0.01, "b": 0.02, "c": 0.04}, 0.05) == {"a": True, "b": True, "c": True}


@pytest.mark.filterwarnings("ignore:A single label was found", "ignore:`y1`, `y2` and `labels` have only one")
@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from("ab")), min_size=2, max_size=60))
def test_cohen_kappa_matches_scikit_learn(pairs) -> None:
    y, p = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    expected = cohen_kappa_score(y, p)
    if np.isnan(expected):  # one label on both sides: no agreement beyond chance to measure
        assert cohen_kappa(y, p) == 0.0
    else:
        assert cohen_kappa(y, p) == pytest.approx(expected, abs=1e-9)


def test_flipped_labels_agree_less_than_chance_and_random_ones_about_as_much() -> None:
    rng = np.random.default_rng(1)
    truth = rng.choice(["negative", "positive"], 300)
    model = np.where(rng.random(300) < 0.85, truth, np.where(truth == "negative", "positive", "negative"))
    confident = np.full(300, 0.95)
    good = label_agreement(list(truth), list(model), np.where(model == truth, 0.95, 0.05), confident=0.9)
    flipped_labels = np.where(truth == "negative", "positive", "negative")
    flipped = label_agreement(list(flipped_labels), list(model), np.where(model == flipped_labels, 0.95, 0.05),
                              confident=0.9)
    noise = rng.choice(["negative", "positive"], 300)
    random = label_agreement(list(noise), list(model), confident, confident=0.9)
    assert good.kappa > 0.6 and good.confident_issues < 0.2
    assert flipped.kappa < -0.6 and flipped.kappa_high < 0 and flipped.confident_issues > 0.8
    assert abs(random.kappa) < 0.15 and random.kappa_high < 0.2
    assert good.kappa_high > good.kappa


def test_a_bigger_test_split_resolves_smaller_losses() -> None:
    sizes = [50, 160, 300, 1000, 5000]
    seen = [resolution(n) for n in sizes]
    assert seen == sorted(seen, reverse=True)
    assert 0.07 < resolution(160) < 0.08 and resolution(5000) < 0.015


@pytest.mark.parametrize("domain", ["amazon", "airline"])
def test_real_and_flipped_labels_follow_the_texts_and_random_ones_do_not(domains, domain: str) -> None:
    """What tells random labels from a domain the champion does not know: 240 real rows of each domain."""
    from kaizen.tasks.evaluation.stats import learnability

    rows = domains[domain]
    rows = rows[rows["label"].isin(["negative", "positive"])].sample(n=240, random_state=1)
    texts, real = rows["text"].tolist(), rows["label"].to_numpy()
    flipped = np.where(real == "positive", "negative", "positive")
    noise = np.random.default_rng(0).choice(["negative", "positive"], size=len(real))
    found = {kind: learnability(texts, list(y)) for kind, y in (("real", real), ("flipped", flipped),
                                                                ("random", noise))}
    assert found["real"].learnable and found["flipped"].learnable and not found["random"].learnable, found
    assert found["real"].kappa == pytest.approx(found["flipped"].kappa)  # flipped throughout: as consistent
    assert all(f.kappa_low <= f.kappa for f in found.values())
    with pytest.raises(ValueError, match="every label needs 2 rows"):
        learnability(texts[:3], ["positive", "positive", "negative"])
