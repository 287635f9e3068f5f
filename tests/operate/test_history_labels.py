"""A label set that grows, through the loop: a 2-label champion, `neutral` appended to data.labels the way the demo
does it, and the next iteration trains a 3-label challenger from that champion. The new version serves, predicts
and scores with 3 labels, the old one still with its own 2, and `kaizen history` shows where the set grew."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.flows.loop import iteration
from kaizen.tasks.operate import demo
from kaizen.tasks.operate.history import history
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG, Decision
from kaizen.tasks.serving import champion
from kaizen.tasks.serving.scoring import score
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.settings import load_settings
from tests.support.files import land, sample
from tests.support.workspaces import FAST, OPEN_GATE, new_workspace, write_params

GROWN = ["negative", "positive", "neutral"]


def test_the_demo_grows_the_labels_only_when_asked_and_only_for_the_airline_batch(copy_workspace) -> None:
    ws = copy_workspace({})
    assert demo.grow_labels(ws, Path("04-airline.csv")) == []  # off by default: neutral tweets are quarantined
    write_params(ws.root, {"demo.grow_labels": True})
    assert demo.grow_labels(ws, Path("03-finefood.parquet")) == []
    assert demo.grow_labels(ws, Path("04-airline.csv")) == ["neutral"]
    assert list(load_settings(ws.params_file).data.labels) == GROWN
    assert demo.grow_labels(ws, Path("04-airline.csv")) == []  # once


@pytest.fixture(scope="module")
def grown_loop(tmp_path_factory, tiny_backbone, domains, prefect_server) -> tuple[Workspace, list[dict]]:
    root = tmp_path_factory.mktemp("grown") / "ws"
    new_workspace(root)
    write_params(root, {**FAST, **OPEN_GATE, "model.backbone": str(tiny_backbone), "train.epochs": 1})
    ws = Workspace.open(root)
    land(ws, "movies.csv", sample(domains["movies"], 120, seed=1))
    summaries = [iteration(str(root))]
    write_params(root, {"demo.grow_labels": True})
    demo.grow_labels(ws, Path("04-airline.csv"))
    land(ws, "airline.csv", sample(domains["airline"], 150, seed=2))  # 50 rows of each of the three labels
    summaries.append(iteration(str(root)))
    return Workspace.open(root), summaries


def signature_outputs(ws: Workspace, version: str) -> list[str]:
    mlmodel = yaml.safe_load((champion.version_dir(ws, version) / "MLmodel").read_text())
    return [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])]


def test_the_challenger_grows_from_the_champion_and_serves_its_labels(grown_loop, tmp_path: Path) -> None:
    ws, summaries = grown_loop
    # Whether the tiny model's challenger is promoted is not the point here: that it has 3 labels is.
    assert summaries[0]["decision"] == Decision.PROMOTED and summaries[1]["challenger_version"] == "2", summaries
    assert summaries[1]["rows_quarantined"] == 0  # neutral tweets accepted, not quarantined
    client = tracking.connect(ws)
    run = client.get_run(summaries[1]["run_id"])
    assert run.data.tags[TAG["start"]] == f"{ws.settings.model.registered_name}/1"  # from the champion, not afresh
    assert len(list((ws.runs_dir / "batch-0002").glob("grown-*/config.json"))) == 1
    # A grown head's fine-tune weighs its labels equally, as a first one does (balance_classes: bootstrap), not
    # as a later fine-tune: `neutral`, the rarest label of the batch plus its replay of 2-label rows, weighs most
    weights = {label: run.data.metrics.get(f"train.class_weight.{label}") for label in GROWN}
    assert None not in weights.values() and weights["neutral"] == max(weights.values()) > 1 > min(weights.values())

    assert signature_outputs(ws, "2") == ["prediction", "p_negative", "p_positive", "p_neutral", "reason"]
    assert signature_outputs(ws, "1") == ["prediction", "p_negative", "p_positive", "reason"]
    new, old = champion.load_version(ws, "2"), champion.load_version(ws, "1")
    assert new.labels == tuple(GROWN) and old.labels == ("negative", "positive")
    assert [c for c in old.predict(["a fine film"]) if c.startswith("p_")] == ["p_negative", "p_positive"]
    assert [c for c in new.predict(["a fine film"]) if c.startswith("p_")] == [f"p_{label}" for label in GROWN]

    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["on time, thanks", "lost my bag"]}).to_csv(texts, index=False)
    score(ws, str(texts), str(tmp_path / "old.parquet"), classifier=old)  # the settings have 3 labels now
    scored = pd.read_parquet(tmp_path / "old.parquet").columns
    assert [c for c in map(str, scored) if c.startswith("p_")] == ["p_negative", "p_positive"]
    now = champion.load_champion(ws)  # v2 if the gate promoted it, else v1: `kaizen predict` shows its labels
    said = CliRunner().invoke(app, ["predict", "on time, thanks", "-w", str(ws.root)])
    assert said.exit_code == 0 and f"champion v{now.version}" in said.output, said.output
    assert re.findall(r"(\w+) [01]\.\d{3}", said.output) == list(now.labels), said.output


def test_history_shows_where_the_label_set_grew(grown_loop) -> None:
    ws, _ = grown_loop
    lines = [(s.batch, s.decision, s.reasons) for s in history(ws)]
    assert [line[:2] for line in lines[:2]] == [("batch-0001", Decision.PROMOTED), ("batch-0002", Decision.LABELS)]
    assert [line[0] for line in lines] == ["batch-0001", "batch-0002", "batch-0002"]
    assert lines[1][2] == ["labels: negative, positive -> negative, positive, neutral"]
    shown = CliRunner().invoke(app, ["history", "-w", str(ws.root)])  # the table shows the change, wrapped in its cell
    assert shown.exit_code == 0 and "labels:" in shown.output and "neutral" in shown.output, shown.output
    as_json = CliRunner().invoke(app, ["history", "-w", str(ws.root), "--json"])
    assert json.loads(as_json.output.splitlines()[1])["reasons"] == lines[1][2]
