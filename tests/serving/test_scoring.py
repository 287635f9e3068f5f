"""Batch scoring with the champion (`kaizen score`): a folder of CSV, JSON Lines, Parquet and text files, read in
chunks, every row back with its label and every class's probability, or with a reason; files that cannot be read
are named; fsspec URLs in and out; a compressed file scores as its plain self, and `kaizen predict FILE` is the
same scorer writing CSV."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.tasks.serving import champion, scoring
from kaizen.tasks.serving.capture import read_captures
from tests.support.files import sample

BAD_BYTES = b"\xff\xfe not UTF-8"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, domains) -> tuple[Path, list[str]]:
    """Input files with good rows and every kind of bad one; returns the folder and its good texts in order."""
    root = tmp_path_factory.mktemp("score-input")
    texts = sample(domains["amazon"], 24, seed=8)["text"].tolist()
    reviews = pd.DataFrame({"id": range(1, 11), "text": texts[:10], "source": "web"})
    reviews.loc[3, "text"] = "   "  # empty once normalised
    csv = reviews.to_csv(index=False).splitlines()
    csv.insert(6, "99,too,many,fields")  # line 7 of the file
    (root / "clients.csv").write_text("\n".join(csv) + "\n", encoding="utf-8")
    (root / "nested").mkdir()
    lines = [json.dumps({"text": texts[10], "id": 11}), json.dumps({"text": 5}), "{not json", "",
             json.dumps({"text": None}), json.dumps(["a list"])]
    (root / "nested" / "more.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + BAD_BYTES + b"\n"
                                                 + json.dumps({"text": texts[11]}).encode() + b"\n")
    pd.DataFrame({"text": [*texts[12:20], None]}).to_parquet(root / "table.parquet")
    (root / "plain.txt").write_text(f"{texts[20]}\n\n{texts[21]}\n", encoding="utf-8")
    (root / "notes.bin").write_bytes(b"\x00\x01")
    (root / "empty.csv").write_text("", encoding="utf-8")
    (root / ".hidden.csv").write_text("text\nnever read\n", encoding="utf-8")
    good = [*texts[:3], *texts[4:10], texts[10], texts[11], texts[20], texts[21], *texts[12:20]]  # files by name
    return root, good


def test_a_folder_is_scored_row_by_row_with_reasons(champion_ws, folder, tmp_path: Path) -> None:
    root, good = folder
    out = tmp_path / "scored" / "all.parquet"
    result = CliRunner().invoke(app, ["score", str(root), "--out", str(out), "-w", str(champion_ws.root)])
    assert result.exit_code == 0, result.output
    assert "labelled" in result.output and "notes.bin" in result.output
    scored = pd.read_parquet(out)
    assert list(scored.columns) == ["source", "row", "text", "id", "input_source", "prediction", "p_negative",
                                    "p_positive", "reason", "model_version"]
    assert set(scored["model_version"]) == {"1"}
    by_source = scored.groupby("source")["row"].apply(lambda r: [None if pd.isna(x) else int(x) for x in r])
    assert by_source.to_dict() == {
        "empty.csv": [None], "nested/more.jsonl": [1, 2, 3, 5, 6, 7, 8], "notes.bin": [None],
        "plain.txt": [1, 3], "clients.csv": [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        "table.parquet": list(range(1, 10))}
    reasons = dict(zip(zip(scored["source"], scored["row"].astype("float"), strict=True), scored["reason"], strict=True))
    assert reasons[("clients.csv", 5.0)] == "empty text"
    assert reasons[("clients.csv", 7.0)] == "line 7: 4 fields where the header has 3"
    assert reasons[("nested/more.jsonl", 2.0)] == "the text is a int, not a string"
    assert reasons[("nested/more.jsonl", 3.0)].startswith("line 3: Expecting property name")
    assert reasons[("nested/more.jsonl", 5.0)] == "no text (missing value)"
    assert reasons[("nested/more.jsonl", 6.0)] == "line 6: the line is a JSON list, not an object"
    assert reasons[("nested/more.jsonl", 7.0)].startswith("line 7: 'utf-8' codec can't decode")
    assert reasons[("table.parquet", 9.0)] == "no text (missing value)"
    assert "not a CSV, JSON Lines, Parquet or text file" in scored.loc[scored["source"] == "notes.bin", "reason"].item()
    assert "no header" in scored.loc[scored["source"] == "empty.csv", "reason"].item()

    labelled = scored[scored["reason"].isna()]
    assert list(labelled["text"]) == good  # every good row, in file order, none twice
    expected = champion.load_champion(champion_ws).predict(good)
    assert list(labelled["prediction"]) == list(expected["prediction"])
    assert (labelled["p_positive"].to_numpy() - expected["p_positive"].astype(float).to_numpy()).max() < 1e-4
    assert ((labelled["p_negative"] + labelled["p_positive"]) - 1).abs().max() < 1e-5
    assert scored[scored["reason"].notna()]["prediction"].isna().all()
    assert list(labelled.loc[labelled["source"] == "clients.csv", "id"]) == ["1", "2", "3", "5", "6", "7", "8",
                                                                              "9", "10"]
    assert set(labelled.loc[labelled["source"] == "clients.csv", "input_source"]) == {"web"}  # renamed, not lost


def test_fsspec_urls_in_and_out_and_progress(champion_ws, domains) -> None:
    import fsspec

    texts = sample(domains["finefood"], 20, seed=4)["text"].tolist()
    with fsspec.open("memory://inbox/reviews.jsonl", "w") as handle:
        handle.write("".join(json.dumps({"text": t}) + "\n" for t in texts))
    seen: list[tuple[float, int]] = []
    result = scoring.score(champion_ws, "memory://inbox", "memory://outbox/scored.parquet",
                           progress=lambda done, rows: seen.append((done, rows)))
    assert (result.files, result.rows, result.labelled, result.with_reason) == (1, 20, 20, 0)
    assert [rows for _, rows in seen] == [7, 14, 20]  # chunks of champion.chunk_rows (7)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen) and seen[-1][0] == 1.0
    with fsspec.open("memory://outbox/scored.parquet", "rb") as handle:
        assert list(pd.read_parquet(handle)["text"]) == texts
    assert not fsspec.filesystem("memory").exists("/outbox/scored.parquet.part")


def test_what_cannot_be_scored_says_why(champion_ws, make_workspace, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["score", str(tmp_path / "missing"), "--out", str(tmp_path / "o.parquet"), "-w",
                                 str(champion_ws.root)])
    assert result.exit_code == 2 and "no such file or folder" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["score", str(tmp_path / "empty"), "--out", str(tmp_path / "o.parquet"), "-w",
                                 str(champion_ws.root)])
    assert result.exit_code == 2 and "nothing to score" in result.output
    (tmp_path / "t.txt").write_text("fine\n")
    result = runner.invoke(app, ["score", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o.parquet"), "-w",
                                 str(make_workspace("no-champion").root)])
    assert result.exit_code == 2 and "no champion yet" in result.output
    assert not (tmp_path / "o.parquet").exists()


def test_a_compressed_file_scores_as_its_plain_self_and_predict_is_the_same_scorer(champion_ws, domains,
                                                                                    tmp_path: Path) -> None:
    """...and the texts `kaizen score` labels are recorded in the captures, as served ones are; `kaizen predict`'s,
    a person's tries, are not."""
    began = datetime.now(UTC)
    texts = sample(domains["amazon"], 10, seed=12)["text"].tolist()
    data = pd.DataFrame({"text": texts, "id": range(10)}).to_csv(index=False).encode("utf-8")
    (tmp_path / "reviews.csv").write_bytes(data)
    (tmp_path / "reviews.csv.gz").write_bytes(gzip.compress(data))
    result = scoring.score(champion_ws, str(tmp_path / "reviews.csv.gz"), str(tmp_path / "gz.parquet"))
    assert (result.files, result.rows, result.labelled, result.problems, result.captured) == (1, 10, 10, [], 10)
    scoring.score(champion_ws, str(tmp_path / "reviews.csv"), str(tmp_path / "plain.parquet"))
    scored, plain = pd.read_parquet(tmp_path / "gz.parquet"), pd.read_parquet(tmp_path / "plain.parquet")
    assert list(scored["source"]) == ["reviews.csv.gz"] * 10 and list(scored["row"]) == list(range(2, 12))
    pd.testing.assert_frame_equal(scored.drop(columns="source"), plain.drop(columns="source"))
    assert list(scored["text"]) == texts and scored["reason"].isna().all()

    result = CliRunner().invoke(app, ["predict", str(tmp_path / "reviews.csv.gz"), "-w", str(champion_ws.root)])
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "reviews.predictions.csv", dtype={"id": str, "model_version": str})
    assert list(predicted.columns) == list(scored.columns)
    assert list(predicted["text"]) == texts and list(predicted["id"]) == list(scored["id"])
    assert list(predicted["prediction"]) == list(scored["prediction"])
    assert (predicted["p_positive"] - scored["p_positive"]).abs().max() < 1e-6

    captured = read_captures(champion_ws, since=began)
    assert list(captured["text"]) == texts * 2 and set(captured["source"]) == {"score"}  # two scorings, no predict
    assert set(captured["model_version"]) == {"1"} and list(captured["prediction"]) == list(scored["prediction"]) * 2
    assert [p[1] for p in captured["probabilities"][:10]] == pytest.approx(list(scored["p_positive"]), abs=1e-12)


def test_a_long_field_scores_and_a_field_past_the_limit_stops_the_file_with_a_reason(champion_ws, domains,
                                                                                      tmp_path: Path) -> None:
    """A field over csv's default 128 KiB is a text like any other; one past limits.max_text_bytes (the same reader
    as collect's, the same limits) stops its file with a reason after the rows before it, never silently."""
    from kaizen.tasks.workspace.layout import Workspace

    texts = sample(domains["amazon"], 6, seed=3)["text"].tolist()
    rows = [texts[0], "long " * 40_000, texts[1], texts[2], "longer " * 60_000, texts[3], texts[4]]  # 200, 420 KB
    (tmp_path / "long.csv").write_text(pd.DataFrame({"text": rows}).to_csv(index=False), encoding="utf-8")
    small = Workspace(root=champion_ws.root, settings=champion_ws.settings.with_overrides(
        {"limits.max_text_bytes": 256 * 1024}))
    result = scoring.score(small, str(tmp_path / "long.csv"), str(tmp_path / "scored.parquet"))
    scored = pd.read_parquet(tmp_path / "scored.parquet")
    assert list(scored["row"].astype("float").fillna(0)) == [2, 3, 4, 5, 0]  # every row read, then the reason
    assert scored["prediction"].notna().sum() == 4 == result.labelled
    reason = "cannot read on from here: unreadable csv file: line 6 is longer than limits.max_text_bytes = 262144"
    assert scored["reason"].iloc[-1] == reason and result.problems == [f"long.csv: {reason}"]
    result = scoring.score(champion_ws, str(tmp_path / "long.csv"), str(tmp_path / "all.parquet"))
    assert (result.rows, result.labelled, result.problems) == (7, 7, [])  # within the default limits: every row
