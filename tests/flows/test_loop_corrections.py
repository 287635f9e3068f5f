"""End to end: a correction file fixes labels of an earlier batch, on a real Prefect server, real DVC and MLflow.

A bootstrap on movie reviews, then one iteration that collects a new batch and a correction file flipping ten
labels of the first batch. Asserted: the new data version splits the first batch with the corrected labels (only
that batch's split and the new one are reproduced), `kaizen reproduce` restores them, the accepted batch stays as
ingested, and `kaizen history` and the iteration's MLflow run show the corrections.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.flows.loop import iteration
from kaizen.tasks.data import data_version
from kaizen.tasks.data.data_version import read_data_version
from kaizen.tasks.formats.text import normalize_text, text_key
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import land, sample
from tests.support.workspaces import FAST, OPEN_GATE, write_params

FLIP = {"negative": "positive", "positive": "negative"}


@pytest.fixture(scope="module")
def corrected(tmp_path_factory, tiny_backbone, domains, prefect_server):
    """The bootstrap, then the iteration with the correction; what each left."""
    from tests.support.workspaces import new_workspace

    root = tmp_path_factory.mktemp("corrections") / "ws"
    new_workspace(root)
    write_params(root, {**FAST, "model.backbone": str(tiny_backbone), **OPEN_GATE})
    ws = Workspace.open(root)
    movies = sample(domains["movies"], 160, seed=1)
    movies = movies[~movies["text"].map(text_key).duplicated()].reset_index(drop=True)
    land(ws, "movies.csv", movies)
    first = iteration(str(root))
    before = ws.dvc_lock.read_text()

    fixed = movies.iloc[:10].assign(label=lambda f: f["label"].map(FLIP))
    land(Path(ws.corrections_landing), "fix.csv", fixed)
    land(ws, "amazon.jsonl", sample(domains["amazon"], 160, seed=2))
    calls: list[tuple[str, ...]] = []
    real_dvc = data_version.run_dvc
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_version, "run_dvc", lambda w, *args: calls.append(args) or real_dvc(w, *args))
        second = iteration(str(root))
    return ws, movies, fixed, first, second, before, calls


def labels_of(folder: Path, batch: str) -> dict[str, str]:
    splits = [pd.read_parquet(folder / batch / f"{split}.parquet") for split in ("train", "val", "test")]
    frame = pd.concat(splits)
    return dict(zip(frame["text"], frame["label"], strict=True))


def test_the_next_data_version_splits_the_earlier_batch_as_corrected(corrected, tmp_path) -> None:
    from kaizen.tasks.operate.operations import reproduce

    ws, movies, fixed, first, second, before, calls = corrected
    assert (first["batch"], second["batch"]) == ("batch-0001", "batch-0002")
    after = ws.dvc_lock.read_text()
    old, new = read_data_version(before), read_data_version(after)
    assert new.outs["data/prepared/batch-0001"] != old.outs["data/prepared/batch-0001"]
    assert [c for c in calls if c[0] == "repro"] == [
        ("repro", "--single-item", "split@batch-0002", "split@batch-0001", "replay")]  # not every earlier split
    corrected_labels = {normalize_text(t): label for t, label in zip(fixed["text"], fixed["label"], strict=True)}
    expected = {normalize_text(t): corrected_labels.get(normalize_text(t), label)
                for t, label in zip(movies["text"], movies["label"], strict=True)}
    assert labels_of(ws.prepared_dir, "batch-0001") == expected
    assert pd.read_parquet(ws.batch_file("batch-0001"))["label"].tolist() == movies["label"].tolist()
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    assert tracking.model_version(client, name, "2").tags[TAG["data_version"]] == new.prepared_md5
    data, version = reproduce(ws, "2", tmp_path / "v2")  # from the DVC remote, every md5 checked
    assert version == new.prepared_md5 and labels_of(data / "prepared", "batch-0001") == expected
    # A fresh worker writes the same corrections from the ledger: the same version, no split made again.
    stamps = {p: p.stat().st_mtime_ns for p in ws.prepared_dir.rglob("*.parquet")}
    for path in ws.corrections_dir.iterdir():
        path.unlink()
    assert data_version.build_data_version(ws, "batch-0002").prepared_md5 == new.prepared_md5
    assert {p: p.stat().st_mtime_ns for p in ws.prepared_dir.rglob("*.parquet")} == stamps


def test_history_and_the_run_show_the_corrections(corrected) -> None:
    ws, _, fixed, _, second, _, _ = corrected
    result = CliRunner().invoke(app, ["history", "--json", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["batch"], r["decision"]) for r in rows] == [
        ("batch-0001", "promoted"), ("batch-0001", "corrected"), ("batch-0002", "promoted")]
    assert (rows[1]["rows_accepted"], rows[1]["rows_quarantined"]) == (10, 0)
    assert rows[1]["reasons"][0].startswith("corrections/fix.csv (sha256 ")
    assert "10 labels corrected (batch-0001: 10)" in rows[1]["reasons"][0]
    assert "the iteration on batch-0002" in rows[1]["reasons"][0]

    client = tracking.connect(ws)
    run = client.get_run(second["run_id"])
    assert run.data.tags[TAG["corrections"]] == "10"
    assert run.data.tags[TAG["correction_files"]].startswith("corrections/fix.csv (")
    record = json.loads(Path(client.download_artifacts(second["run_id"], "data/corrections.json")).read_text())
    assert record["corrections"] == 10 and list(record["batches"]) == ["batch-0001"]
    assert [(r["text"], r["old_label"], r["new_label"]) for r in record["batches"]["batch-0001"]] == [
        (t, FLIP[label], label) for t, label in zip(fixed["text"], fixed["label"], strict=True)]
    version = tracking.model_version(client, ws.settings.model.registered_name, second["challenger_version"])
    assert version.tags[TAG["corrections"]] == "10"  # the model's lineage names them too
