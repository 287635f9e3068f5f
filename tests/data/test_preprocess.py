"""The preprocess stage's pure functions on real labeled rows: normalisation, stratified splits, cross-batch
deduplication, per-batch seeds and the replay sample."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kaizen.tasks.data.preprocess import (
    apportion,
    batch_seed,
    draw_replay,
    prepare,
    split_batch,
    split_one,
    write_prepared,
)
from kaizen.tasks.formats.text import normalize_text, text_key
from kaizen.tasks.workspace.settings import PreprocessSettings, ReplaySettings
from tests.support.files import sample


def pre_settings(**changes) -> PreprocessSettings:
    values = {"seed": 13, "val_fraction": 0.1, "test_fraction": 0.2, "max_test_rows": 300, "lowercase": False}
    return PreprocessSettings(**{**values, **changes})


def replay_settings(ratio: float = 0.5, max_rows: int = 1000) -> ReplaySettings:
    return ReplaySettings(ratio=ratio, max_rows=max_rows)


def distinct(frame: pd.DataFrame) -> pd.DataFrame:
    """Real rows with distinct dedup keys, so each row can be followed by its text."""
    keys = frame["text"].map(text_key)
    return frame.loc[~keys.duplicated(), ["text", "label"]].reset_index(drop=True)


@pytest.fixture(scope="module")
def airline(domains: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """1,000 real tweets with three imbalanced labels (about 63 % negative)."""
    return distinct(domains["airline"].sample(n=1100, random_state=3)).head(1000)


@pytest.fixture(scope="module")
def batches(domains: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Four real batches, one per domain, of different sizes and (real, unequal) label balances."""
    sizes = {"movies": 400, "amazon": 300, "finefood": 500, "airline": 360}
    return {f"batch-{i:04d}": distinct(domains[name].sample(n=n, random_state=i))
            for i, (name, n) in enumerate(sizes.items(), start=1)}


# --- normalisation and identity --------------------------------------------------------------------------


def test_batch_seed_is_stable_and_distinct_per_batch() -> None:
    assert batch_seed(13, "batch-0001") == batch_seed(13, "batch-0001")
    assert len({batch_seed(13, f"batch-{i:04d}") for i in range(1, 50)}) == 49
    assert batch_seed(13, "batch-0001") != batch_seed(14, "batch-0001")


# --- split_batch ----------------------------------------------------------------------------------------


def test_split_batch_is_a_stratified_partition(airline: pd.DataFrame) -> None:
    splits = split_batch(airline, pre_settings(), seed=5)
    texts = [t for name in ("train", "val", "test") for t in splits[name]["text"]]
    assert sorted(texts) == sorted(airline["text"])  # every row exactly once
    assert list(splits["train"].columns) == ["text", "label"]

    counts = airline["label"].value_counts()
    assert counts.size == 3
    for name, fraction in (("test", 0.2), ("val", 0.1), ("train", 0.7)):
        split_counts = splits[name]["label"].value_counts()
        for label, n in counts.items():  # each label's share of the split is the batch's, to a row or two
            assert abs(split_counts.get(label, 0) - fraction * n) <= 1.5, (name, label)
        assert abs(len(splits[name]) - fraction * len(airline)) <= 2


def test_split_batch_is_deterministic_for_a_seed(airline: pd.DataFrame) -> None:
    first, again = split_batch(airline, pre_settings(), 5), split_batch(airline, pre_settings(), 5)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(first[name], again[name])
    other = split_batch(airline, pre_settings(), 6)
    assert set(other["test"]["text"]) != set(first["test"]["text"])


def test_split_batch_respects_other_fractions(airline: pd.DataFrame) -> None:
    splits = split_batch(airline, pre_settings(val_fraction=0.0, test_fraction=0.4, max_test_rows=1000), seed=1)
    assert len(splits["val"]) == 0
    assert abs(len(splits["test"]) - 400) <= 2
    assert len(splits["train"]) + len(splits["test"]) == len(airline)


def test_max_test_rows_caps_the_test_split_and_keeps_its_balance(airline: pd.DataFrame) -> None:
    uncapped = split_batch(airline, pre_settings(), seed=5)
    capped = split_batch(airline, pre_settings(max_test_rows=50), seed=5)
    assert len(capped["test"]) == 50
    assert set(capped["test"]["text"]) <= set(uncapped["test"]["text"])
    pd.testing.assert_frame_equal(capped["val"], uncapped["val"])
    cut = set(uncapped["test"]["text"]) - set(capped["test"]["text"])  # rows cut from the test split are learned from
    assert set(capped["train"]["text"]) == set(uncapped["train"]["text"]) | cut
    assert sum(len(capped[n]) for n in ("train", "val", "test")) == len(airline)
    counts = airline["label"].value_counts(normalize=True)
    test_counts = capped["test"]["label"].value_counts()
    for label, share in counts.items():
        assert abs(test_counts.get(label, 0) - 50 * share) <= 1, label


def test_max_test_rows_is_never_exceeded(domains: dict[str, pd.DataFrame]) -> None:
    batch = distinct(sample(domains["amazon"], 30, seed=2))
    uncapped = len(split_batch(batch, pre_settings(), seed=9)["test"])
    for cap in range(1, uncapped + 2):
        test = split_batch(batch, pre_settings(max_test_rows=cap), seed=9)["test"]
        assert len(test) == min(cap, uncapped), cap
        if cap >= 2:  # both labels keep a place
            assert test["label"].nunique() == 2, cap


def test_tiny_labels_still_split(domains: dict[str, pd.DataFrame]) -> None:
    movies = domains["movies"]
    batch = distinct(pd.concat([
        movies[movies["label"] == "negative"].head(60),
        movies[movies["label"] == "positive"].head(3),  # three rows: one in each split
        domains["airline"].query("label == 'neutral'").head(2),  # two rows: too few to hold out, both train
    ]))
    splits = split_batch(batch, pre_settings(), seed=4)
    for name in ("train", "val", "test"):
        assert (splits[name]["label"] == "positive").sum() == 1, name
    assert (splits["train"]["label"] == "neutral").sum() == 2
    assert sum(len(s) for s in splits.values()) == len(batch)


def test_split_batch_of_an_empty_batch() -> None:
    splits = split_batch(pd.DataFrame({"text": [], "label": []}, dtype=str), pre_settings(), seed=1)
    assert all(len(splits[name]) == 0 for name in ("train", "val", "test"))


def test_apportion_is_exact_proportional_and_capped() -> None:
    assert apportion(10, [1.0, 1.0, 1.0], [100, 100, 100]) == [4, 3, 3]
    assert apportion(100, [1.0, 1.0], [20, 300]) == [20, 80]  # a small part gives all it has
    assert apportion(1000, [1.0, 1.0], [20, 300]) == [20, 300]
    assert apportion(7, [30.0, 10.0], [30, 10]) == [5, 2]
    assert apportion(0, [1.0], [5]) == [0]


# --- prepare: dedup, stability, replay -----------------------------------------------------------------


def test_earlier_batches_are_byte_identical_after_a_later_batch(
    batches: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    first_three = {b: batches[b] for b in ("batch-0001", "batch-0002", "batch-0003")}
    write_prepared(prepare(first_three, pre_settings(), replay_settings()), tmp_path / "v1")
    write_prepared(prepare(batches, pre_settings(), replay_settings()), tmp_path / "v2")
    for batch_id in first_three:
        names = sorted(p.name for p in (tmp_path / "v1" / batch_id).iterdir())
        assert names == ["summary.json", "test.parquet", "train.parquet", "val.parquet"]
        for name in names:
            old, new = tmp_path / "v1" / batch_id / name, tmp_path / "v2" / batch_id / name
            assert old.read_bytes() == new.read_bytes(), (batch_id, name)
    summary = json.loads((tmp_path / "v2" / "batch-0004" / "summary.json").read_text())
    assert sorted(summary) == ["test", "train", "val"] and summary["train"] > 0


def test_a_batch_is_split_on_its_own_and_loses_its_own_repeats(domains: dict[str, pd.DataFrame]) -> None:
    # Repeats across batches never reach the stage (collect refuses a text an earlier file brought, by the same
    # text_key); within a batch, the stage keeps the first of each text.
    fresh = distinct(sample(domains["amazon"], 100, seed=1))
    within = fresh.head(3).assign(text=lambda f: "  " + f["text"].str.upper().str.replace(" ", "   "))
    second = pd.concat([fresh, within], ignore_index=True)
    alone = split_one(second, "batch-0002", pre_settings())
    with_others = prepare({"batch-0001": distinct(sample(domains["movies"], 100, seed=1)), "batch-0002": second},
                          pre_settings(), replay_settings())["batch-0002"]
    later = pd.concat([alone[s] for s in ("train", "val", "test")])
    assert len(later) == len(fresh)
    assert set(later["text"].map(text_key)) == set(fresh["text"].map(text_key))
    for name in ("train", "val", "test"):  # the earlier batch changes nothing of this one's splits
        pd.testing.assert_frame_equal(alone[name], with_others[name])


def test_prepare_normalises_and_optionally_lowercases(domains: dict[str, pd.DataFrame]) -> None:
    batch = distinct(sample(domains["airline"], 60, seed=1))
    batch = batch.assign(text="  " + batch["text"] + "\t\t end ")
    for lowercase in (False, True):
        prepared = prepare({"batch-0001": batch}, pre_settings(lowercase=lowercase), replay_settings())
        texts = pd.concat([prepared["batch-0001"][s]["text"] for s in ("train", "val", "test")])
        assert sorted(texts) == sorted(normalize_text(t, lowercase) for t in batch["text"])


def test_replay_size_and_source(batches: dict[str, pd.DataFrame]) -> None:
    prepared = prepare(batches, pre_settings(), replay_settings(ratio=0.5, max_rows=1000))
    assert "replay" not in prepared["batch-0001"]
    for index, batch_id in enumerate(sorted(batches)[1:], start=1):
        replay, n_train = prepared[batch_id]["replay"], len(prepared[batch_id]["train"])
        assert len(replay) == min(1000, round(0.5 * n_train))
        assert list(replay.columns) == ["text", "label", "batch"]
        earlier = sorted(batches)[:index]
        assert set(replay["batch"]) == set(earlier)
        for source in earlier:  # drawn only from that batch's train split, never its val or test
            rows = replay[replay["batch"] == source]
            train = prepared[source]["train"]
            assert set(zip(rows["text"], rows["label"], strict=True)) <= set(
                zip(train["text"], train["label"], strict=True))
            held_out = pd.concat([prepared[source]["val"], prepared[source]["test"]])
            assert not set(rows["text"]) & set(held_out["text"])
        assert not replay["text"].duplicated().any()
        shares = replay["batch"].value_counts()
        assert shares.max() - shares.min() <= 1  # an equal share per earlier batch
        for source in earlier:  # label-proportional within each batch's share
            train_shares = prepared[source]["train"]["label"].value_counts(normalize=True)
            got = replay.loc[replay["batch"] == source, "label"].value_counts()
            for label, share in train_shares.items():
                assert abs(got.get(label, 0) - shares[source] * share) <= 1, (batch_id, source, label)


def test_a_suspect_batch_never_enters_replay(batches: dict[str, pd.DataFrame]) -> None:
    trusting = prepare(batches, pre_settings(), replay_settings(ratio=1.0, max_rows=1000))
    wary = prepare(batches, pre_settings(), replay_settings(ratio=1.0, max_rows=1000), suspect=frozenset({"batch-0002"}))
    last = sorted(batches)[-1]
    assert "batch-0002" in set(trusting[last]["replay"]["batch"])
    assert "batch-0002" not in set(wary[last]["replay"]["batch"]) and len(wary[last]["replay"]) > 0
    for batch_id in batches:  # the splits themselves do not depend on trust
        for name in ("train", "val", "test"):
            pd.testing.assert_frame_equal(wary[batch_id][name], trusting[batch_id][name])


def test_replay_is_bounded_by_max_rows_and_by_the_pool(batches: dict[str, pd.DataFrame]) -> None:
    capped = prepare(batches, pre_settings(), replay_settings(ratio=10.0, max_rows=150))
    assert all(len(capped[b]["replay"]) == 150 for b in sorted(batches)[1:])

    everything = prepare(batches, pre_settings(), replay_settings(ratio=100.0, max_rows=100_000))
    last = everything["batch-0004"]["replay"]
    pool = sum(len(everything[b]["train"]) for b in ("batch-0001", "batch-0002", "batch-0003"))
    assert len(last) == pool  # all the earlier train rows, once each
    assert not last["text"].duplicated().any()


def test_a_small_earlier_batch_gives_all_it_has_and_the_others_make_up_the_rest(
    domains: dict[str, pd.DataFrame],
) -> None:
    pool = {"batch-0001": distinct(sample(domains["movies"], 20, seed=1)),
            "batch-0002": distinct(sample(domains["amazon"], 300, seed=1))}
    replay = draw_replay(pool, 100, seed=3)
    assert len(replay) == 100
    assert replay["batch"].value_counts().to_dict() == {"batch-0001": 20, "batch-0002": 80}


def test_replay_is_deterministic_for_a_seed_and_differs_for_another(batches: dict[str, pd.DataFrame]) -> None:
    one = prepare(batches, pre_settings(seed=13), replay_settings())
    again = prepare(batches, pre_settings(seed=13), replay_settings())
    other = prepare(batches, pre_settings(seed=14), replay_settings())
    for batch_id in sorted(batches)[1:]:
        pd.testing.assert_frame_equal(one[batch_id]["replay"], again[batch_id]["replay"])
        assert set(one[batch_id]["replay"]["text"]) != set(other[batch_id]["replay"]["text"])
    pool = {b: one[b]["train"] for b in ("batch-0001", "batch-0002")}
    pd.testing.assert_frame_equal(draw_replay(pool, 120, seed=1), draw_replay(pool, 120, seed=1))
    assert set(draw_replay(pool, 120, seed=1)["text"]) != set(draw_replay(pool, 120, seed=2)["text"])


def test_ratio_zero_gives_an_empty_replay(batches: dict[str, pd.DataFrame]) -> None:
    prepared = prepare(batches, pre_settings(), replay_settings(ratio=0.0))
    for batch_id in sorted(batches)[1:]:
        assert len(prepared[batch_id]["replay"]) == 0
        assert list(prepared[batch_id]["replay"].columns) == ["text", "label", "batch"]
    assert draw_replay({}, 50, seed=1).empty
