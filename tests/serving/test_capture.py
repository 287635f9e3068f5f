"""tasks/serving/capture.py on its own: what the writer is handed is what `read_captures` gives back, sampled,
hashed-only when texts may not be kept, pruned past retention, in a folder or an object store; and a store that
fails or lags never reaches the caller, yet is logged and counted. (The served model's and `kaizen score`'s own
captures: tests/serving/test_serving.py, test_scoring.py.)"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kaizen.tasks.serving import capture
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.settings import load_settings
from tests.support.workspaces import REPO

NOW = datetime.now(UTC)


def workspace(root: Path, **overrides) -> Workspace:
    """A workspace's settings and folder, nothing else (capture needs no git, DVC or MLflow)."""
    return Workspace(root=root, settings=load_settings(REPO / "params.yaml").with_overrides(overrides))


def answers(texts: list) -> list[dict]:
    """The served model's answers: a label and both probabilities for a text, a reason for anything else."""
    out = []
    for i, text in enumerate(texts):
        if isinstance(text, str) and text:
            p = (i + 1) / (len(texts) + 1)
            out.append({"prediction": "positive" if p > 0.5 else "negative", "p_negative": 1 - p, "p_positive": p,
                        "reason": None})
        else:
            out.append({"prediction": None, "p_negative": None, "p_positive": None, "reason": "empty text"})
    return out


def written(ws: Workspace, batches: list[tuple[datetime, list]], source: str = "serve") -> capture.CaptureStats:
    recorder = capture.CaptureWriter(ws, source, "7")
    for at, texts in batches:
        recorder.submit(lambda texts=texts: (texts, answers(texts)), at=at.timestamp())
    return recorder.close()


def test_the_reader_reads_back_exactly_what_was_written(tmp_path: Path) -> None:
    ws = workspace(tmp_path, **{"capture.flush_rows": 1})  # a file per batch: the reader's stop is tested too
    early, late = NOW - timedelta(days=3), NOW - timedelta(hours=1)
    batches: list[tuple[datetime, list]] = [(early, ["a dull film", ""]), (late, ["a fine film", 7, "x\ud800y"])]
    stats = written(ws, batches)
    assert (stats.texts, stats.written, stats.files, stats.failures) == (5, 5, 2, 0)
    read = capture.read_captures(ws)
    assert list(read.columns) == capture.schema().names
    expected = [(at, text, answer) for at, texts in batches for text, answer in zip(texts, answers(texts), strict=True)]
    assert len(read) == len(expected) and read["capture_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert read["capture_id"].is_unique
    for row, (at, text, answer) in zip(read.itertuples(), expected, strict=True):
        kept = text.encode("utf-8", "backslashreplace").decode() if isinstance(text, str) else None
        assert (row.time.to_pydatetime(), row.source, row.model_version, row.text) == (at, "serve", "7", kept)
        assert row.text_sha256 == (hashlib.sha256(kept.encode()).hexdigest() if kept is not None else None)
        assert (row.prediction, row.reason, list(row.labels)) == (answer["prediction"], answer["reason"],
                                                                  ["negative", "positive"])
        probabilities = None if row.probabilities is None else list(row.probabilities)
        assert probabilities == (None if answer["reason"] else [answer["p_negative"], answer["p_positive"]])
    assert read["text"].tolist()[-1] == "x\\ud800y"  # a lone surrogate, escaped: the file was still written

    assert read.equals(capture.read_captures(ws, since=early, until=late + timedelta(seconds=1)))
    assert capture.read_captures(ws, since=early + timedelta(seconds=1))["time"].tolist() == [late] * 3
    assert capture.read_captures(ws, until=late)["time"].tolist() == [early] * 2
    assert capture.read_captures(ws, since=NOW).empty
    # The latest rows only, and the earlier file is never opened: a broken one there goes unnoticed.
    broken = tmp_path / "data" / "captures" / f"day={early.date() - timedelta(days=1)}"
    broken.mkdir()
    (broken / f"{early - timedelta(days=1):{capture.NAME_TIME}}-0.parquet").write_bytes(b"not parquet")
    assert capture.read_captures(ws, limit_rows=3)["text"].tolist() == ["a fine film", None, "x\\ud800y"]
    with pytest.raises(Exception, match="Parquet"):
        capture.read_captures(ws, limit_rows=6)  # past the five rows before it: it is read
    with pytest.raises(ValueError, match="timezone-aware"):
        capture.read_captures(ws, since=datetime.now())
    (tmp_path / "data" / "captures" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt: not a day of captures"):
        capture.read_captures(ws)


def test_sampling_zero_captures_nothing_and_one_everything(tmp_path: Path) -> None:
    texts = [f"text {i}" for i in range(200)]
    stats = written(workspace(tmp_path / "none", **{"capture.sample_rate": 0.0}), [(NOW, texts)])
    assert (stats.texts, stats.written, stats.files) == (200, 0, 0)
    assert capture.read_captures(workspace(tmp_path / "none")).empty
    assert written(workspace(tmp_path / "half", **{"capture.sample_rate": 0.5}), [(NOW, texts)]).written in range(
        60, 141)  # 200 draws at 0.5: outside this, one run in 10^8
    assert capture.writer(workspace(tmp_path, **{"capture.enabled": False}), "serve", "1") is None


def test_without_keep_text_only_the_sha256_is_kept(tmp_path: Path) -> None:
    ws = workspace(tmp_path, **{"capture.keep_text": False})
    written(ws, [(NOW, ["a private review", ""])], source="score")
    read = capture.read_captures(ws)
    assert read["text"].isna().all() and list(read["source"]) == ["score", "score"]
    assert list(read["text_sha256"]) == [hashlib.sha256(b"a private review").hexdigest(), hashlib.sha256(b"").hexdigest()]
    stored = b"".join(path.read_bytes() for path in (tmp_path / "data" / "captures").rglob("*.parquet"))
    assert b"private" not in stored


def test_retention_prunes_old_days_and_the_writer_prunes_once_a_day(tmp_path: Path) -> None:
    ws = workspace(tmp_path, **{"capture.retention_days": 2})
    days = [NOW - timedelta(days=n) for n in (5, 3, 2, 0.5)]
    written(ws, [(day, [f"day {n}"]) for n, day in enumerate(days)])  # its own prune ran before these were there
    assert len(capture.read_captures(ws)) == 4
    assert capture.prune(ws, NOW) == [days[0].date(), days[1].date()]  # wholly older than 2 days before now
    assert capture.read_captures(ws)["text"].tolist() == ["day 2", "day 3"]
    written(ws, [(NOW - timedelta(days=9), ["old"])])
    written(ws, [(NOW, ["new"])])  # a writer prunes at its first write of each day
    assert capture.read_captures(ws)["text"].tolist() == ["day 2", "day 3", "new"]


def test_in_an_object_store_the_same_keys(tmp_path: Path) -> None:
    import fsspec

    ws = workspace(tmp_path, **{"storage.artifacts": "memory://kaizen-capture-test/mlartifacts"})
    assert ws.captures == "memory://kaizen-capture-test/mlartifacts/captures"
    written(ws, [(NOW, ["stored remotely"])])
    keys = fsspec.filesystem("memory").find("/kaizen-capture-test/mlartifacts/captures")
    assert [key.split("/captures/")[1].split("/")[0] for key in keys] == [f"day={NOW.date()}"]
    assert capture.read_captures(ws)["text"].tolist() == ["stored remotely"]
    assert not (tmp_path / "data").exists()


def test_a_store_that_fails_or_lags_never_reaches_the_caller_and_is_counted(tmp_path: Path, caplog) -> None:
    (tmp_path / "a-file").write_text("")  # a folder cannot be made under it, for root too
    ws = workspace(tmp_path, **{"storage.artifacts": str(tmp_path / "a-file")})
    with caplog.at_level(logging.ERROR, logger=capture.__name__):
        stats = written(ws, [(NOW, ["lost", "too"])])
        assert (stats.written, stats.lost) == (0, 2) and stats.failures >= 1
        assert "2 record(s) could not be written" in caplog.text

        with pytest.raises(ValueError, match="source is one of"):
            capture.CaptureWriter(ws, "nonsense", "1")

        held = threading.Event()
        recorder = capture.CaptureWriter(workspace(tmp_path / "ok"), "serve", "1", pending=1)
        recorder.submit(lambda: held.wait(30) and ([], []))  # the thread is stuck decoding this one
        began = time.perf_counter()
        for _ in range(5):
            recorder.submit(lambda: (["x"], answers(["x"])))
        assert time.perf_counter() - began < 0.5  # never waits for the writer
        held.set()
        stats = recorder.close()
        assert stats.dropped >= 3 and "answer(s) dropped so far" in caplog.text

        recorder = capture.CaptureWriter(workspace(tmp_path / "ok"), "serve", "1")
        recorder.submit(lambda: (["a", "b"], answers(["a"])))  # answers that do not match their texts
        assert recorder.close().failures == 1 and "could not be read" in caplog.text


def test_a_workspace_from_before_capture_loads_and_captures(tmp_path: Path) -> None:
    import yaml

    from kaizen.tasks.workspace.settings import CaptureSettings

    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert raw.pop("capture") == CaptureSettings().model_dump()  # the shipped file says what the defaults say
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert load_settings(tmp_path / "params.yaml").capture == CaptureSettings()
