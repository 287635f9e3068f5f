"""tasks/serving/selection.py on real captures: the champion's answers on real texts, recorded by capture.py's own
writer, chosen from with the champion's own embeddings, queued in files a labeling tool imports, and remembered in
the ledger. (What becomes of the labeled rows: tests/flows/test_labeling_loop.py.)"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.tasks.serving import capture
from kaizen.tasks.serving.champion import load_champion
from kaizen.tasks.serving.picking import SelectionError, choose, quotas, typical_doubt
from kaizen.tasks.serving.selection import (
    doubt,
    doubtful_pool,
    group_quotas,
    parse_since,
    select_for_labeling,
)
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import sample
from tests.support.workspaces import write_params

HASH_ONLY = 6  # captures kept without their text (capture.keep_text: false)


def margins(frame: pd.DataFrame) -> pd.Series:
    """Top minus second probability of each captured answer: how sure the model was."""
    return frame["probabilities"].map(lambda p: float(np.diff(np.sort(p)[-2:])[0]))


@pytest.fixture(scope="module")
def captured_template(champion_ws: Workspace, domains, tmp_path_factory) -> Path:
    """A copy of the champion's workspace (the session's is shared) whose captures are the champion's answers to
    120 real Amazon texts, one of them answered twice, an empty text, and HASH_ONLY texts kept as hashes only."""
    root = tmp_path_factory.mktemp("selection") / "ws"
    shutil.copytree(champion_ws.root, root, symlinks=True)
    for leftover in ("captures", "labeling"):  # what other tests of this session made the champion answer
        shutil.rmtree(root / "data" / leftover, ignore_errors=True)
    ws = Workspace.open(root)
    classifier = load_champion(ws)
    texts = sample(domains["amazon"], 120, seed=5)["text"].tolist()
    for kept, batch in ((ws, texts + [texts[0], ""]),
                        (Workspace(root, ws.settings.with_overrides({"capture.keep_text": False})),
                         sample(domains["finefood"], HASH_ONLY, seed=5)["text"].tolist())):
        writer = capture.CaptureWriter(kept, "score", classifier.version)
        writer.submit(capture.frame_answers(batch, classifier.predict(batch)))
        assert writer.close().written == len(batch)
    return root


@pytest.fixture
def captured(captured_template: Path, tmp_path: Path) -> tuple[Workspace, pd.DataFrame]:
    """A fresh copy of the captured workspace (nothing queued yet) and its captures."""
    root = tmp_path / "ws"
    shutil.copytree(captured_template, root, symlinks=True)
    ws = Workspace.open(root)
    return ws, capture.read_captures(ws)


def said(output: str) -> str:
    """A command's output as one line: the console wraps long lines where it likes."""
    return " ".join(output.split())


def test_the_queue_holds_exactly_the_budget_of_the_most_uncertain_distinct_texts(captured) -> None:
    ws, captures = captured
    write_params(ws.root, {"select.pool_factor": 3})  # a pool smaller than the candidates, and than each label's
    ws = Workspace.open(ws.root)
    queue = select_for_labeling(ws, 12)
    assert queue.rows == 12 and queue.read == len(captures) == 120 + 2 + HASH_ONLY
    assert (queue.left.without_text, queue.left.unanswered, queue.left.duplicates) == (HASH_ONLY, 1, 1)
    factor = ws.settings.select.pool_factor
    assert queue.candidates == 120 and queue.pool == factor * 12 and queue.versions == {"1": 12}
    sheet = pd.read_csv(queue.files[0], keep_default_na=False)
    assert list(sheet.columns) == ["capture_id", "text", "model_version", "prediction", "confidence", "why", "label"]
    assert sheet["capture_id"].is_unique and sheet["text"].is_unique and (sheet["label"] == "").all()
    by_id = captures.set_index("capture_id")
    assert sheet["text"].tolist() == by_id.loc[sheet["capture_id"], "text"].tolist()  # each row its capture's text
    answered = captures[captures["probabilities"].notna()].drop_duplicates("text", keep="last")
    candidates = margins(answered)
    picked = by_id.loc[sheet["capture_id"]].reset_index()
    chosen = margins(picked)
    assert chosen.mean() < candidates.mean()  # doubtful texts, against the same rows taken at random
    # The 12 shared among the labels the champion predicted as often as it predicted each; every pick among the
    # pool_factor x quota most doubtful answers of its label.
    share = quotas(answered["prediction"].value_counts(sort=False), 12)
    assert picked["prediction"].value_counts().to_dict() == {label: k for label, k in share.items() if k}
    for label, k in share.items():
        of_label = margins(answered[answered["prediction"] == label])
        assert (chosen[picked["prediction"] == label] <= np.sort(of_label)[min(factor * k, len(of_label)) - 1]).all()
    assert sheet["why"].str.startswith("margin ").all()


def test_label_studio_imports_the_tasks_with_their_config(captured) -> None:
    """Label Studio's import format (labelstud.io/guide/tasks, guide/predictions): a JSON list of tasks, each a
    `data` object whose keys the config's `$variables` name, and `predictions`, each with `model_version`, a `score`
    and a `result` list whose items carry a unique `id`, the control's `from_name`, the object's `to_name`, the
    control's `type` and its `value` (`choices` from the config's Choice values)."""
    ws, _ = captured
    queue = select_for_labeling(ws, 5)
    tasks = json.loads(Path(queue.files[1]).read_text(encoding="utf-8"))
    config = ET.fromstring(Path(queue.files[2]).read_text(encoding="utf-8"))
    text, choices = config.find("Text"), config.find("Choices")
    assert text is not None and choices is not None
    allowed = {c.get("value") for c in choices.findall("Choice")}
    assert allowed == set(ws.settings.data.labels)
    assert isinstance(tasks, list) and len(tasks) == 5
    ids = []
    for task in tasks:
        assert set(task) == {"data", "predictions"}
        assert isinstance(task["data"][text.get("value", "").removeprefix("$")], str)
        assert task["data"]["capture_id"] in pd.read_csv(queue.files[0])["capture_id"].tolist()
        (prediction,) = task["predictions"]
        assert isinstance(prediction["model_version"], str) and 0.0 <= prediction["score"] <= 1.0
        for result in prediction["result"]:
            assert (result["from_name"], result["to_name"], result["type"]) == (choices.get("name"),
                                                                                 choices.get("toName"), "choices")
            assert result["to_name"] == text.get("name") and set(result["value"]["choices"]) <= allowed
            ids.append(result["id"])
    assert len(set(ids)) == len(ids)
    # Its CSV export names the text and label columns as the config does: collect reads them there.
    assert (text.get("name"), choices.get("name")) == (ws.settings.data.text_column, ws.settings.data.label_column)


def test_no_text_is_queued_twice_and_the_ledger_remembers(captured) -> None:
    ws, _ = captured
    first, second = select_for_labeling(ws, 20), select_for_labeling(ws, 20)
    ids = [set(pd.read_csv(q.files[0])["capture_id"]) for q in (first, second)]
    assert len(ids[0]) == len(ids[1]) == 20 and not ids[0] & ids[1]
    assert second.left.already_queued >= first.left.already_queued + 20
    later = select_for_labeling(ws, 5, since=datetime.now(UTC) + timedelta(hours=1))  # no capture answered since
    assert (later.name, later.files, later.read) == (None, (), 0) and "nothing queued" in later.describe()


def test_the_command_says_where_the_queue_went_and_a_slow_selection_stops(captured) -> None:
    ws, _ = captured
    result = CliRunner().invoke(app, ["select", "--budget", "3", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in Path(ws.labeling).iterdir())
    # a long path is cut mid-name at the console's width: the lines joined as they are, not with spaces
    assert len(written) == 3 and all(result.output.replace("\n", "").count(name) == 1 for name in written)
    assert "3 texts queued as queue-" in said(result.output)
    slow = Workspace(ws.root, ws.settings.with_overrides({"select.max_seconds": 1e-6}))
    with pytest.raises(SelectionError, match=r"select\.max_seconds"):
        select_for_labeling(slow, 3)
    refused = CliRunner().invoke(app, ["select", "--budget", "3", "--since", "last week", "-w", str(ws.root)])
    assert refused.exit_code == 2 and "give an age (90m, 12h, 7d)" in said(refused.output)


def test_farthest_first_starts_where_the_training_data_is_thinnest() -> None:
    angles = np.array([0.0, 0.05, 0.1, 1.5, 1.55, 3.0])  # unit vectors on a circle; the centres sit near 0
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    centres = points[:1] * 1.0
    picks = choose(points, np.ones(6), centres, 3, "farthest", seed=0)
    assert picks.order == [5, 3, 2] and picks.coverage[0] == picks.coverage.max()
    assert np.isfinite(picks.spread).all() and len(set(picks.order)) == 3
    alike = choose(np.tile(points[:1], (4, 1)), np.ones(4), None, 4, "farthest", seed=0)  # identical texts
    assert alike.order == [0, 1, 2, 3] and np.isnan(alike.spread[0]) and np.isnan(alike.coverage).all()


def test_typical_doubt_takes_the_centre_of_each_doubtful_cloud_not_its_outliers() -> None:
    """Three clouds of texts on the unit sphere, each with one outlier far off its side: one pick per cloud, each
    the text nearest the cloud's centre; the most doubtful cloud first; the same picks from the same seed."""
    rng = np.random.default_rng(3)
    axes, clouds, doubts = np.eye(3), [], []
    for i, doubt_level in enumerate((0.9, 0.2, 0.5)):
        cloud = axes[i] + 0.08 * rng.standard_normal((30, 3))
        cloud[0] = axes[i] + 0.5 * axes[(i + 1) % 3]  # the outlier
        clouds.append(cloud / np.linalg.norm(cloud, axis=1, keepdims=True))
        doubts.append(np.full(30, doubt_level))
    points, uncertainty = np.concatenate(clouds), np.concatenate(doubts)
    order, sizes = typical_doubt(points, uncertainty, 3, seed=7)
    assert [i // 30 for i in order] == [0, 2, 1] and list(sizes) == [30, 30, 30]
    for i in order:
        cloud = points[(i // 30) * 30 : (i // 30 + 1) * 30]
        centre = cloud.mean(axis=0) / np.linalg.norm(cloud.mean(axis=0))
        assert i % 30 != 0 and points[i] @ centre == max(cloud @ centre)
    assert typical_doubt(points, uncertainty, 3, seed=7)[0] == order
    assert len(set(typical_doubt(points, uncertainty, 90, seed=1)[0])) == 90  # as many as asked, none twice
    alike, sizes = typical_doubt(np.tile(points[:1], (4, 1)), np.array([0.1, 0.2, 0.3, 0.4]), 3, seed=0)
    assert len(set(alike)) == 3 and sizes[0] == 4 and list(sizes[1:]) == [0, 0]  # the budget spent all the same


def test_the_budget_is_shared_among_the_predicted_labels_as_the_traffic_is() -> None:
    """A pool of doubts alone leans to the label the champion doubts most; shared by prediction, the budget follows
    how often the champion predicted each label, and each label's pool holds its most doubtful texts."""
    assert quotas(pd.Series({"negative": 650, "positive": 350}), 10) == {"negative": 7, "positive": 3}
    assert quotas(pd.Series({"a": 1, "b": 1, "c": 1}), 2) == {"a": 1, "b": 1, "c": 0}  # ties to the first
    assert sum(quotas(pd.Series({"a": 5, "b": 3, "c": 2}), 7).values()) == 7
    rng = np.random.default_rng(0)
    candidates = pd.DataFrame({"prediction": ["positive"] * 80 + ["negative"] * 20,
                               "uncertainty": np.r_[rng.uniform(0.0, 0.5, 80), rng.uniform(0.5, 1.0, 20)]})
    leaning = doubtful_pool(candidates, 10, 2, by_prediction=False)
    assert (leaning["prediction"] == "negative").all()  # the 20 most doubtful are all one label
    shared = doubtful_pool(candidates, 10, 2, by_prediction=True)
    assert shared["prediction"].value_counts().to_dict() == {"positive": 16, "negative": 4}
    assert shared.groupby("prediction")["quota"].first().to_dict() == {"positive": 8, "negative": 2}
    top = candidates[candidates["prediction"] == "positive"].nlargest(16, "uncertainty")
    assert set(shared.index[shared["prediction"] == "positive"]) == set(top.index)
    points = rng.standard_normal((len(shared), 4))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    picks = choose(points, shared["uncertainty"].to_numpy(), None, 10, "typical", 0, groups=group_quotas(shared))
    assert len(set(picks.order)) == 10
    assert shared.iloc[picks.order]["prediction"].value_counts().to_dict() == {"positive": 8, "negative": 2}


def test_doubt_is_the_margin_or_the_entropy_over_any_number_of_classes() -> None:
    answers = [[0.5, 0.5], [0.9, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]]
    confidence, margin, uncertainty = doubt(answers, "margin")
    assert np.allclose(confidence, [0.5, 0.9, 1 / 3, 1.0]) and np.allclose(margin, [0.0, 0.8, 0.0, 1.0])
    assert np.allclose(uncertainty, 1 - margin)
    _, _, entropy = doubt(answers, "entropy")
    assert np.allclose(entropy, [1.0, -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2), 1.0, 0.0])


def test_since_is_an_age_or_a_time() -> None:
    now = pd.Timestamp("2026-03-01T12:00:00Z").to_pydatetime()
    assert parse_since("36h", now) == pd.Timestamp("2026-02-28T00:00:00Z").to_pydatetime()
    assert parse_since("2026-02-01", now) == pd.Timestamp("2026-02-01T00:00:00Z").to_pydatetime()
    assert parse_since(None, now) is None
    with pytest.raises(ValueError, match="an age"):
        parse_since("yesterday", now)
