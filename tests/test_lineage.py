"""Avalanche's forgetting and backward transfer, on a hand-made accuracy matrix."""

from __future__ import annotations

import pytest

from kaizen.tasks.lineage import forgetting_and_bwt

ORDER = ["b1", "b2", "b3"]


def test_forgetting_is_the_drop_from_the_best_accuracy_so_far() -> None:
    matrix = {1: {"b1": 0.80}, 2: {"b1": 0.85, "b2": 0.70}, 3: {"b1": 0.75, "b2": 0.72, "b3": 0.90}}
    forgetting, bwt = forgetting_and_bwt(matrix, ORDER)
    assert forgetting == pytest.approx({"b1": 0.10, "b2": -0.02})
    # now minus just-after-learning: b1 0.75 - 0.80, b2 0.72 - 0.70
    assert bwt == pytest.approx((-0.05 + 0.02) / 2)


def test_one_step_has_nothing_to_forget() -> None:
    assert forgetting_and_bwt({1: {"b1": 0.8}}, ORDER) == ({}, None)
    assert forgetting_and_bwt({}, ORDER) == ({}, None)
