"""The lookup of kept predictions: one merge for every split must give what a lookup per split gives. Which
earlier batches a challenger is judged on once they are many (gate.max_earlier_batches)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from kaizen.tasks.evaluation.evaluate import judged_batches
from kaizen.tasks.evaluation.predictions import _look_up
from kaizen.tasks.workspace.members import template
from kaizen.tasks.workspace.settings import load_settings

SPLITS = ("batch-0001-test-aa", "batch-0002-test-bb", "batch-0003-test-cc")


def one_by_one(kept: pd.DataFrame, wanted: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
    """Per split, its wanted rows in order when every one is kept (the lookup kaizen did per split before)."""
    out = {}
    for name, rows in wanted.items():
        mine = kept[kept["split"] == name]
        if np.isin(rows, mine["row"]).all():
            out[name] = mine.set_index("row").loc[rows].reset_index().drop(columns="split")
    return out


@st.composite
def kept_and_wanted(draw) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    kept_rows = {name: draw(st.sets(st.integers(0, 12), max_size=10)) for name in SPLITS}
    frame = pd.DataFrame([{"row": r, "label": draw(st.sampled_from(["negative", "positive"])),
                           "predicted": draw(st.sampled_from(["negative", "positive"])),
                           "p_negative": draw(st.floats(0, 1)), "split": name}
                          for name, rows in kept_rows.items() for r in sorted(rows, key=lambda _: draw(st.integers()))])
    frame = frame.astype({"row": "int64"}) if len(frame) else pd.DataFrame(
        {"row": pd.Series(dtype="int64"), "label": pd.Series(dtype=str), "predicted": pd.Series(dtype=str),
         "p_negative": pd.Series(dtype=float), "split": pd.Series(dtype=str)})
    wanted = {name: np.asarray(draw(st.lists(st.integers(0, 12), min_size=1, max_size=8, unique=True)), dtype="int64")
              for name in draw(st.lists(st.sampled_from(SPLITS), min_size=1, unique=True))}
    return frame, wanted


@given(kept_and_wanted())
def test_one_merge_finds_what_a_lookup_per_split_finds(case) -> None:
    kept, wanted = case
    merged, reference = _look_up(kept, wanted), one_by_one(kept, wanted) if len(kept) else {}
    assert merged.keys() == reference.keys()
    for name, frame in reference.items():
        pd.testing.assert_frame_equal(merged[name], frame.reset_index(drop=True))
        assert frame["row"].tolist() == wanted[name].tolist()  # in the order asked, not the order kept


def with_gate(**gate) -> SimpleNamespace:
    """What judged_batches reads of a workspace: its settings (the shipped ones, `gate` changed)."""
    settings = load_settings(template("params.yaml"))
    return SimpleNamespace(settings=settings.model_copy(update={"gate": settings.gate.model_copy(update=gate)}))


def test_past_max_earlier_batches_a_seeded_draw_of_them_is_judged_and_every_batch_in_turn() -> None:
    history = [f"batch-{i:04d}" for i in range(1, 61)]
    shipped = with_gate()
    assert shipped.settings.gate.max_earlier_batches == 50
    assert judged_batches(shipped, history[:51], "batch-0051") == history[:51]  # 50 earlier: every one
    assert judged_batches(with_gate(max_earlier_batches=0), history, "batch-0060") == history  # 0: every one
    bounded, drawn = with_gate(max_earlier_batches=5), []
    for k in range(40, 61):  # one iteration per new batch, each with the batches before it
        judged = judged_batches(bounded, history[:k], history[k - 1])
        assert len(judged) == 6 and judged[-1] == history[k - 1] and len(set(judged)) == 6
        assert judged[:-1] == sorted(judged[:-1]) and set(judged[:-1]) < set(history[: k - 1])
        assert judged == judged_batches(bounded, history[:k], history[k - 1])  # a rerun judges the same ones
        drawn.append(frozenset(judged[:-1]))
    assert len(set(drawn)) == len(drawn)  # each iteration its own draw
    # every earlier batch judged now and then: 21 draws of 5 from about 50 miss a given batch with p ~ 0.1
    assert len(set().union(*drawn)) >= 0.8 * 59
