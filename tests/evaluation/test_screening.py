"""screening on real data, through the real loop: a batch with flipped labels is held back as suspect (never
trained on, never replayed, no yardstick), the good batch after it is learned from and promoted, and an
operator can overrule the loop. Degenerate batches say why they cannot be trained on."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.flows.loop import iteration
from kaizen.tasks.data.preprocess import prepare, write_prepared
from kaizen.tasks.evaluation.screening import unusable_reason
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.notify.alerts import SUSPECT as SUSPECT_EVENT
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import land, sample
from tests.support.workspaces import FAST, OPEN_GATE, new_workspace, write_params

FLIP = {"positive": "negative", "negative": "positive"}


@pytest.fixture(scope="module")
def flipped_then_good(tmp_path_factory, tiny_backbone, domains, prefect_server):
    """Bootstrap on movie reviews, then a batch of movie reviews with every label flipped, then a good batch.
    The gate is wide open: what is judged here is the labels, with the label check's own defaults."""
    root = tmp_path_factory.mktemp("screening") / "ws"
    new_workspace(root)
    open_gate = {k: v for k, v in OPEN_GATE.items() if not k.startswith("trust.")}
    write_params(root, {**FAST, **open_gate, "model.backbone": str(tiny_backbone), "train.bootstrap_epochs": 6})
    ws = Workspace.open(root)
    movies = sample(domains["movies"], 600, seed=41)
    land(ws, "movies.csv", movies.iloc[:300])
    bootstrap = iteration(str(root))
    flipped = movies.iloc[300:450].assign(label=lambda f: f["label"].map(FLIP))
    land(ws, "movies-flipped.csv", flipped)
    suspect = iteration(str(root))
    land(ws, "movies-more.csv", movies.iloc[450:])
    good = iteration(str(root))
    return ws, bootstrap, suspect, good, flipped


def test_the_flipped_batch_is_suspect_and_never_trained_on(flipped_then_good) -> None:
    ws, bootstrap, suspect, _, _ = flipped_then_good
    assert bootstrap["decision"] == "promoted"
    assert suspect["decision"] == "suspect" and suspect["challenger_version"] is None
    assert "labels suspect" in suspect["reasons"][0] and "kappa" in suspect["reasons"][0]
    with Ledger(ws.ledger_db) as ledger:
        record = {b.batch_id: b for b in ledger.batches()}["batch-0002"]
    assert (record.status, record.decision, record.trust, record.trust_by) == ("done", "suspect", "suspect", "loop")
    client = tracking.connect(ws)
    metrics = client.get_run(suspect["run_id"]).data.metrics
    assert metrics["labels.kappa"] < 0 and metrics["labels.kappa_high"] < ws.settings.trust.min_kappa
    name = ws.settings.model.registered_name
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 2 and {v.tags.get(TAG["batch"]) for v in versions} == {"batch-0001", "batch-0003"}


def test_the_good_batch_after_it_is_promoted_without_a_flipped_row(flipped_then_good) -> None:
    ws, _, _, good, flipped = flipped_then_good
    assert good["batch"] == "batch-0003" and good["decision"] == "promoted", good["reasons"]
    assert json.loads((ws.replay_dir / "target.json").read_text()) == {"batch": "batch-0003"}
    replay = pd.read_parquet(ws.replay_dir / "replay.parquet")
    assert len(replay) > 0 and set(replay["batch"]) == {"batch-0001"}
    assert not set(replay["text"]) & set(flipped["text"])
    client = tracking.connect(ws)
    run = client.get_run(good["run_id"])
    assert "challenger.batch-0001.accuracy" in run.data.metrics
    assert not [k for k in run.data.metrics if "batch-0002" in k]  # no yardstick, no merge candidate scored on it
    assert not any("batch-0002" in r for r in good["reasons"])
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert reports == {"reports/drift.html", "reports/quality-batch-0003.html", "reports/quality-earlier.html"}
    assert run.data.metrics["replay.batch-0001.rows"] == len(replay) and "replay.batch-0002.rows" not in \
        run.data.metrics
    assert TAG["merge_alpha"] in run.data.tags
    version = tracking.model_version(client, ws.settings.model.registered_name, good["challenger_version"])
    description = client.get_model_version(ws.settings.model.registered_name, version.version).description
    assert description.startswith("promoted: accuracy on the new batch batch-0003")


def test_the_suspect_batch_was_announced(flipped_then_good) -> None:
    from prefect.client.orchestration import get_client

    ws, _, suspect, _, _ = flipped_then_good
    with get_client(sync_client=True) as client:
        found = client.request("POST", "/events/filter", json={
            "filter": {"event": {"name": [SUSPECT_EVENT]}}, "limit": 50}).json()["events"]
    mine = [e for e in found if e["payload"].get("mlflow_run_id") == suspect["run_id"]]
    assert len(mine) == 1 and mine[0]["payload"]["batch"] == "batch-0002"
    assert mine[0]["resource"]["prefect.resource.id"] == f"kaizen.workspace.{ws.workspace_id}"


def test_status_shows_the_suspect_batch_and_an_operator_can_overrule(flipped_then_good) -> None:
    ws, *_ = flipped_then_good
    runner = CliRunner()
    state = json.loads(runner.invoke(app, ["status", "--json", "-w", str(ws.root)]).output)
    suspect = {b["batch"]: b for b in state["batches"]}["batch-0002"]
    assert suspect["trust"] == "suspect" and "kappa" in suspect["trust_reason"]

    refused = runner.invoke(app, ["batch", "trust", "batch-0099", "--reason", "x", "-w", str(ws.root)])
    assert refused.exit_code == 1 and "no batch 'batch-0099'" in refused.output
    done = runner.invoke(app, ["batch", "trust", "batch-0002", "--reason", "the source fixed its export",
                               "-w", str(ws.root)])
    assert done.exit_code == 0 and "pending again" in done.output, done.output
    with Ledger(ws.ledger_db) as ledger:
        record = {b.batch_id: b for b in ledger.batches()}["batch-0002"]
    assert (record.status, record.trust) == ("pending", "trusted") and record.trust_by.startswith("operator ")
    relearned = iteration(str(ws.root))  # the operator's word stands over the label check
    assert relearned["batch"] == "batch-0002" and relearned["decision"] in ("promoted", "rejected")

    undone = runner.invoke(app, ["batch", "distrust", "batch-0002", "--reason", "no, it was wrong",
                                 "-w", str(ws.root)])
    assert undone.exit_code == 0 and "rollback" in undone.output
    with Ledger(ws.ledger_db) as ledger:
        assert ledger.suspect_batches() == ["batch-0002"]


@pytest.mark.parametrize(("labels", "expected"), [
    (["positive"] * 100, "holds only 'positive' rows (100)"),
    (["positive", "negative"] * 9, "test split holds 4 rows, fewer than gate.min_test_rows 5"),
])
def test_a_batch_no_challenger_can_be_judged_on_says_why(make_workspace, domains, labels, expected) -> None:
    ws = make_workspace()
    texts = domains["movies"]["text"].head(len(labels)).tolist()
    batch = pd.DataFrame({"text": texts, "label": labels})
    write_prepared(prepare({"batch-0001": batch}, ws.settings.preprocess, ws.settings.replay), ws.prepared_dir)
    assert expected in unusable_reason(ws, "batch-0001")


def _agreement(kappa: float, high: float, issues: float = 0.0):
    from kaizen.tasks.evaluation.stats import Agreement

    return Agreement(rows=200, agreement=0.5 + kappa / 2, kappa=kappa, kappa_high=high, confident_issues=issues)


@pytest.mark.parametrize(("kappa", "high", "learnable_low", "issues", "trusted", "says"), [
    (-0.5, -0.3, None, 0.0, False, "below chance (flipped labels?)"),
    (0.05, 0.15, -0.04, 0.0, False, "do not predict the labels either (random labels?)"),
    (0.05, 0.15, None, 0.0, False, "random labels?"),  # nothing to tell them apart: held back
    (0.05, 0.15, 0.25, 0.0, True, "a domain it does not know yet"),  # the fine food after an airline champion
    (0.60, 0.70, None, 0.0, True, "labels trusted"),
    (0.60, 0.70, None, 0.6, False, "confident issues"),
])
def test_the_label_verdict_tells_flipped_and_random_labels_from_a_new_domain(kappa, high, learnable_low, issues,
                                                                              trusted, says) -> None:
    from kaizen.tasks.evaluation.screening import label_verdict
    from kaizen.tasks.evaluation.stats import Learnability
    from kaizen.tasks.workspace.settings import TrustSettings

    trust = TrustSettings(min_kappa=0.2, confident=0.9, max_confident_issues=0.5)
    learnable = None if learnable_low is None else Learnability(rows=800, kappa=learnable_low + 0.1,
                                                                kappa_low=learnable_low)
    verdict = label_verdict(_agreement(kappa, high, issues), learnable, trust, "3")
    assert verdict.trusted is trusted and says in verdict.reason, verdict.reason
    assert "champion v3" in verdict.reason
    assert ("predicted from the batch's own texts" in verdict.reason) is (learnable is not None)
