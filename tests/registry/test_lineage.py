"""Avalanche's forgetting and backward transfer, stepped through a hand-made accuracy matrix with the running
best and first accuracies the loop keeps."""

from __future__ import annotations

import pytest

from kaizen.tasks.registry.lineage import forgetting_and_bwt

MATRIX = [{"b1": 0.80}, {"b1": 0.85, "b2": 0.70}, {"b1": 0.75, "b2": 0.72, "b3": 0.90}]


def step_through(matrix: list[dict[str, float]]) -> list[tuple[dict[str, float], float | None]]:
    best, first, out = {}, {}, []
    for now in matrix:
        out.append(forgetting_and_bwt(now, best, first))
        best = {b: max(v, best.get(b, v)) for b, v in now.items()}
        first = {b: first.get(b, v) for b, v in now.items()}
    return out


def test_forgetting_is_the_drop_from_the_best_accuracy_so_far() -> None:
    forgetting, bwt = step_through(MATRIX)[-1]
    assert forgetting == pytest.approx({"b1": 0.10, "b2": -0.02})  # b1's best was 0.85 at step 2
    # now minus just-after-learning: b1 0.75 - 0.80, b2 0.72 - 0.70
    assert bwt == pytest.approx((-0.05 + 0.02) / 2)


def test_one_step_has_nothing_to_forget() -> None:
    assert step_through(MATRIX[:1]) == [({}, None)]
    assert forgetting_and_bwt({}, {}, {}) == ({}, None)


def test_the_heatmap_draws_the_last_batches_only(tmp_path) -> None:
    """Drawing grows with the columns: past HEATMAP_BATCHES the picture keeps the latest batches (matrix.json,
    logged beside it, keeps them all), so a long history neither slows the check nor makes it unreadable."""
    import pandas as pd
    from PIL import Image

    from kaizen.tasks.registry.lineage import HEATMAP_BATCHES, heatmap

    def width(n: int) -> int:
        rows = [{"model": m, "batch": f"batch-{i:04d}", "accuracy": 0.5 + i / 200} for m in ("champion", "challenger")
                for i in range(1, n + 1)]
        return Image.open(heatmap(pd.DataFrame(rows), "accuracy", tmp_path / f"{n}.png")).size[0]

    assert width(3) < width(HEATMAP_BATCHES)
    assert width(HEATMAP_BATCHES + 30) == width(HEATMAP_BATCHES)
