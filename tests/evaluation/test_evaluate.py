"""The lookup of kept predictions: one merge for every split must give what a lookup per split gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from kaizen.tasks.evaluation.predictions import _look_up

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
