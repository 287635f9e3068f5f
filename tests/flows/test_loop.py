"""End to end: the Prefect flow on a real Prefect server, real DVC, real MLflow and real Evidently reports.

Bootstrap on movie reviews, then an Amazon batch, then an iteration with nothing new, then a fine-food batch
that a strict gate refuses. Asserted: the registry (versions, aliases, lineage and decision tags), the recorded
data version against dvc.lock, the saved reports, the ledger and `kaizen status --json`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy.stats import binomtest
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.flows.loop import iteration
from kaizen.tasks.data.data_version import read_data_version
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import land, sample
from tests.support.workspaces import FAST, OPEN_GATE, write_params


@pytest.fixture(scope="module")
def loop_state(tmp_path_factory, tiny_backbone, domains, prefect_server):
    """Run the iterations once for the whole module; each test inspects what they left."""
    from kaizen.tasks.workspace.layout import Workspace
    from tests.support.workspaces import new_workspace

    root = tmp_path_factory.mktemp("loop") / "ws"
    new_workspace(root)
    write_params(root, {**FAST, "model.backbone": str(tiny_backbone), **OPEN_GATE})
    ws = Workspace.open(root)
    summaries, locks = [], []

    land(ws, "movies.csv", sample(domains["movies"], 160, seed=1))
    summaries.append(iteration(str(root)))
    locks.append(ws.dvc_lock.read_text())

    amazon = sample(domains["amazon"], 160, seed=2)
    amazon.loc[len(amazon)] = {"text": "   ", "label": "positive"}  # quarantined: empty text
    land(ws, "amazon.jsonl", amazon)
    summaries.append(iteration(str(root)))
    locks.append(ws.dvc_lock.read_text())

    summaries.append(iteration(str(root)))  # nothing new

    write_params(root, {"gate.require_improvement": True, "gate.min_improvement": 1.0})  # no model gains 1.0
    land(ws, "finefood.parquet", sample(domains["finefood"], 160, seed=3))
    summaries.append(iteration(str(root)))
    locks.append(ws.dvc_lock.read_text())

    # More movie reviews, and a champion that is good enough: training is skipped, the batch still joins.
    write_params(root, {"train.skip_if_champion_above": 0.0, "drift.threshold": 1.0})
    land(ws, "more-movies.csv", sample(domains["movies"], 160, seed=9))
    summaries.append(iteration(str(root)))
    ws = Workspace.open(root)
    return ws, summaries, locks


def test_bootstrap_then_promotion_then_nothing_then_refusal(loop_state) -> None:
    _, summaries, _ = loop_state
    assert [s["batch"] for s in summaries] == ["batch-0001", "batch-0002", None, "batch-0003", "batch-0004"]
    assert [s["decision"] for s in summaries] == ["promoted", "promoted", "no new data", "rejected", "skipped"]
    assert [s["champion_version"] for s in summaries] == ["1", "2", None, "2", "2"]
    assert "skip_if_champion_above" in summaries[4]["reasons"][0] and summaries[4]["challenger_version"] is None
    assert summaries[1]["rows_quarantined"] == 1 and summaries[1]["rows_accepted"] == 160
    assert summaries[0]["drift_share"] is None and 0.0 <= summaries[1]["drift_share"] <= 1.0
    assert any("min_improvement" in r for r in summaries[3]["reasons"])


def test_only_the_bootstrap_weighs_labels_by_their_rarity(loop_state) -> None:
    """train.balance_classes: bootstrap (the shipped default): the first fine-tune's loss weighs each label by
    n / (2 * its rows) of what it trained on; a continued fine-tune starts from a classifier and is unweighted."""
    ws, summaries, _ = loop_state
    client = tracking.connect(ws)
    first = client.get_run(summaries[0]["run_id"]).data.metrics
    counts = pd.read_parquet(ws.split_file("batch-0001", "train"))["label"].value_counts()
    for label in ("negative", "positive"):
        assert first[f"train.class_weight.{label}"] == pytest.approx(counts.sum() / (2 * counts[label]))
    assert not any(k.startswith("train.class_weight") for k in client.get_run(summaries[1]["run_id"]).data.metrics)


def test_registry_aliases_and_lineage(loop_state) -> None:
    ws, _, locks = loop_state
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    assert [str(mv.version) for mv in client.search_model_versions(f"name='{name}'", order_by=["version_number"])] \
        == ["1", "2", "3"]
    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == "2"
    assert tracking.model_by_alias(client, name, tracking.PREVIOUS).version == "1"
    assert tracking.model_by_alias(client, name, tracking.CHALLENGER).version == "3"

    for version, parent, batch, lock, decision in (("1", "", "batch-0001", locks[0], "promoted"),
                                                   ("2", "1", "batch-0002", locks[1], "promoted"),
                                                   ("3", "2", "batch-0003", locks[2], "rejected")):
        tags = tracking.model_version(client, name, version).tags
        assert tags[TAG["parent_version"]] == parent
        assert tags[TAG["batch"]] == batch
        assert tags[TAG["data_version"]] == read_data_version(lock).prepared_md5
        assert tags[TAG["decision"]] == decision
        assert tags[TAG["reasons"]]
        run_id = tracking.model_version(client, name, version).run_id
        # the whole text with the run, as MLflow cuts long tags (the version's model run is the iteration's)
        assert Path(client.download_artifacts(run_id, "gate/reasons.txt")).read_text() == tags[TAG["reasons"]] + "\n"
        assert len(tags[TAG["code_commit"]]) >= 7
        assert tags[TAG["flow_run_id"]]
    assert tracking.model_version(client, name, "2").tags[TAG["batches_seen"]] == "batch-0001,batch-0002"
    # The data version names a real DVC state: every batch's split stage and the replay stage of the batch
    # learned, in the dvc.lock of that time.
    stages = yaml.safe_load(locks[2])["stages"]
    assert {f"split@batch-000{i}" for i in (1, 2, 3)} <= set(stages)
    assert stages["replay"]["cmd"].endswith("replay batch-0003")


def test_runs_hold_reports_metrics_and_the_dvc_lock(loop_state) -> None:
    ws, summaries, locks = loop_state
    client = tracking.connect(ws)
    run = client.get_run(summaries[1]["run_id"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert artifacts == {"reports/drift.html", "reports/quality-batch-0002.html", "reports/quality-earlier.html"}
    for path in artifacts:
        local = Path(client.download_artifacts(run.info.run_id, path))
        assert local.stat().st_size > 10_000 and b"<html" in local.read_bytes()[:2000].lower()
    assert client.download_artifacts(run.info.run_id, "data/dvc.lock")
    assert Path(client.download_artifacts(run.info.run_id, "data/dvc.lock")).read_text() == locks[1]
    metrics = run.data.metrics
    for key in ("champion.batch-0001.accuracy", "challenger.batch-0002.f1", "drift.share", "train.rows"):
        assert key in metrics
    assert metrics["challenger.batch-0002.accuracy"] == pytest.approx(summaries[1]["challenger_score"])
    history = client.get_metric_history(run.info.run_id, "train.accuracy")
    assert [m.step for m in history] == list(range(1, FAST["train.epochs"] + 1))
    assert run.info.status == "FINISHED"


def test_ledger_and_status_json(loop_state) -> None:
    ws, _, _ = loop_state
    ledger = Ledger(ws.ledger_db)
    try:
        assert [(b.batch_id, b.status, b.decision) for b in ledger.batches()] == [
            ("batch-0001", "done", "promoted"), ("batch-0002", "done", "promoted"),
            ("batch-0003", "done", "rejected"), ("batch-0004", "done", "skipped")]
        # Rows in, as landed by the fixture (amazon has one blank text more), not as collect summed them.
        assert {f.name: f.rows_in for f in ledger.files()} == {
            "movies.csv": 160, "amazon.jsonl": 161, "finefood.parquet": 160, "more-movies.csv": 160}
    finally:
        ledger.close()

    result = CliRunner().invoke(app, ["status", "--json", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    state = json.loads(result.output)
    assert state["champion"]["version"] == "2" and state["champion"]["parent_version"] == "1"
    assert len(state["champion"]["data_version"]) == 32  # one md5 over every output of the DVC stages
    assert "batch-0002.accuracy" in state["champion"]["metrics"]
    assert state["previous_champion"]["version"] == "1"
    assert [b["batch"] for b in state["batches"]] == ["batch-0001", "batch-0002", "batch-0003", "batch-0004"]
    assert state["landing"] == [] and state["staged_rows"] == 0


def test_the_default_gate_decides_a_real_iteration(loop_state, domains, tmp_path, monkeypatch) -> None:
    """The other iterations here open the gate wide: this one runs the gate of params.yaml as shipped."""
    import shutil

    from kaizen.tasks.workspace.layout import Workspace
    from kaizen.tasks.workspace.members import template
    from kaizen.tasks.workspace.settings import load_settings

    ws, _, _ = loop_state
    root = tmp_path / "moved"
    shutil.copytree(ws.root, root, symlinks=True)  # a copy of the module's workspace, so its state stays as it was
    monkeypatch.setenv("KAIZEN_WORKSPACE_ID", ws.workspace_id)  # the same workspace, moved
    shipped = load_settings(template("params.yaml"))
    write_params(root, {**{f"gate.{k}": v for k, v in shipped.gate.model_dump().items()},
                        "train.skip_if_champion_above": shipped.train.skip_if_champion_above})
    moved = Workspace.open(root)
    land(moved, "amazon-2.csv", sample(domains["amazon"], 160, seed=8))

    summary = iteration(str(root))

    gate, new = shipped.gate, summary["batch"]
    reasons = summary["reasons"]
    assert any(f"min_score {gate.min_score:.4f}" in r for r in reasons)
    metrics = tracking.connect(moved).get_run(summary["run_id"]).data.metrics
    earlier = sorted({m.split(".")[1] for m in metrics if m.startswith("champion.batch-")} - {new})
    assert earlier and new not in earlier
    score = {m: {b: metrics[f"{m}.{b}.accuracy"] for b in [*earlier, new]} for m in ("champion", "challenger")}
    # Each paired check, re-derived from what it reports: the estimate is the difference of the two accuracies,
    # and the new batch's p-value is the one-sided binomial test of the rows won and lost (scipy's).
    checks = {}
    for reason in reasons:
        found = re.search(r"accuracy on (?:the new batch |earlier )?(batch-\d+): challenger minus champion "
                          r"([+-]\d\.\d+) \[.*?\] \((\d+) rows: (\d+) won, (\d+) lost\)", reason)
        if found:
            batch, estimate, rows, won, lost = found.group(1), float(found.group(2)), *map(int, found.group(3, 4, 5))
            assert estimate == pytest.approx(score["challenger"][batch] - score["champion"][batch], abs=0.0006)
            checks.setdefault(batch, []).append((reason, rows, won, lost))
    assert set(checks) == {*earlier, new}
    for batch in earlier:
        assert f"max_regression {gate.max_regression:g}" in checks[batch][0][0]
    (reason, rows, won, lost), = checks[new]  # one line: the improvement test or the loss test, as configured
    p = binomtest(won, won + lost, 0.5, alternative="greater").pvalue if won + lost else 1.0
    mcnemar = next(r for r in reasons if "McNemar" in r)
    assert f"p={p:.3f}" in mcnemar and f"{won} won, {lost} lost" in mcnemar
    if gate.require_improvement:
        assert f"improvement_alpha {gate.improvement_alpha:g}" in reason
        improved = round((won - lost) / rows, 9) >= gate.min_improvement and p <= gate.improvement_alpha
        assert ("improved" if improved else "no improvement shown") in reason
    else:  # as shipped: the new batch is judged like the earlier ones, for a loss beyond the margin
        assert "not required" in mcnemar and f"max_regression {gate.max_regression:g}" in reason
        improved = True
    passes = (score["challenger"][new] >= gate.min_score and improved
              and not any(" is shown " in r for r in reasons))
    assert summary["decision"] == ("promoted" if passes else "rejected"), (score, reasons)


def _copy_of(ws, tmp_path: Path, monkeypatch):
    """The module's workspace copied, as another machine would have it (the same MLflow store and ids)."""
    import shutil

    from kaizen.tasks.workspace.layout import Workspace

    shutil.copytree(ws.root, tmp_path / "moved", symlinks=True)
    monkeypatch.setenv("KAIZEN_WORKSPACE_ID", ws.workspace_id)
    return Workspace.open(tmp_path / "moved")


def test_a_version_is_scored_once_and_found_from_another_machine(loop_state, tmp_path, monkeypatch) -> None:
    """A version's predictions on each test split were kept when it was checked, locally and with its run: a
    machine without the local copy reads them from the run and never loads the model; and scoring several
    uncached splits in one pass gives what scoring each alone gives."""
    import hashlib
    import shutil

    import numpy as np

    from kaizen.tasks.evaluation.predictions import (
        kept_predictions,
        prediction_dir,
        predictions_on,
        predictions_on_each,
        predictions_on_splits,
    )

    ws, _, _ = loop_state
    moved = _copy_of(ws, tmp_path, monkeypatch)
    client = tracking.connect(moved)
    name = moved.settings.model.registered_name
    version = tracking.model_version(client, name, "2")  # checked as the challenger on batches 1 and 2
    batches = ["batch-0001", "batch-0002"]
    kept = {b: kept_predictions(ws, "2", b, "test") for b in batches}
    shutil.rmtree(prediction_dir(moved, "2"))

    fetched = predictions_on_each(moved, tmp_path / "no-such-model", version, batches, "test")

    for batch in batches:
        pd.testing.assert_frame_equal(fetched[batch], kept[batch])
    # Kept the way kaizen kept them before one file per version (a file per split, every row in order, no row
    # numbers): still read, and the model still not loaded.
    shutil.rmtree(prediction_dir(moved, "2"))
    prediction_dir(moved, "2").mkdir(parents=True)
    for batch in batches:
        md5 = hashlib.md5(moved.split_file(batch, "test").read_bytes()).hexdigest()
        kept[batch].drop(columns="row").to_parquet(prediction_dir(moved, "2") / f"{batch}-test-{md5}.parquet")
    legacy = predictions_on_each(moved, tmp_path / "no-such-model", version, batches, "test", logged=False)
    for batch in batches:
        pd.testing.assert_frame_equal(legacy[batch], kept[batch])
    model_dir = tracking.download_model(client, name, "2", tmp_path / "model")
    together = predictions_on_each(moved, model_dir, None, batches, "test")
    for batch in batches:
        alone = predictions_on(moved, model_dir, None, batch, "test")
        assert together[batch]["predicted"].tolist() == alone["predicted"].tolist() == kept[batch]["predicted"].tolist()
        np.testing.assert_allclose(together[batch].filter(like="p_"), alone.filter(like="p_"), atol=1e-5)
    # Two splits of one batch (screening's view of a new batch) in one pass, too.
    both = predictions_on_splits(moved, model_dir, None, [("batch-0001", "val"), ("batch-0001", "test")])
    assert both["batch-0001", "test"]["predicted"].tolist() == kept["batch-0001"]["predicted"].tolist()
    assert both["batch-0001", "val"]["predicted"].tolist() == predictions_on(
        moved, model_dir, None, "batch-0001", "val")["predicted"].tolist()


def test_past_max_earlier_rows_each_earlier_batch_is_judged_on_a_fixed_share(loop_state, tmp_path, monkeypatch) -> None:
    """gate.max_earlier_rows bounds the rows a challenger is scored on however long the history: an equal share
    of each earlier batch, the start of a permutation fixed per batch, so the smaller share of a later iteration
    lies inside the larger one the champion was scored on; predictions are kept per row, so those rows are read,
    never scored again."""
    import shutil

    import pyarrow.parquet as pq

    from kaizen.tasks.evaluation.evaluate import earlier_rows
    from kaizen.tasks.evaluation.predictions import kept_predictions, prediction_dir, predictions_on_each

    moved = _copy_of(loop_state[0], tmp_path, monkeypatch)
    batches = ["batch-0001", "batch-0002", "batch-0003", "batch-0004"]
    sizes = {b: pq.read_metadata(moved.split_file(b, "test")).num_rows for b in batches}
    assert earlier_rows(moved, batches, "batch-0004") == {}  # the shipped cap is above these few rows
    write_params(moved.root, {"gate.max_earlier_rows": 20})
    moved = Workspace.open(moved.root)
    three, two = earlier_rows(moved, batches, "batch-0004"), earlier_rows(moved, batches[:3], "batch-0003")
    assert sorted(three) == batches[:3] and sorted(two) == batches[:2]
    assert {len(r) for r in three.values()} == {20 // 3} and {len(r) for r in two.values()} == {20 // 2}
    for batch, rows in three.items():
        assert list(rows) == sorted(set(rows)) and rows.min() >= 0 and rows.max() < sizes[batch]
        assert set(rows) <= set(two.get(batch, rows))  # nested: a later share was scored with the earlier one
    write_params(moved.root, {"gate.max_earlier_rows": 0})
    assert earlier_rows(Workspace.open(moved.root), batches, "batch-0004") == {}  # 0: every row

    client = tracking.connect(moved)
    name = moved.settings.model.registered_name
    version, model_dir = tracking.model_version(client, name, "2"), tmp_path / "model"
    tracking.download_model(client, name, "2", model_dir)
    full = predictions_on_each(moved, model_dir, None, batches[:2], "test")
    shutil.rmtree(prediction_dir(moved, "2"))
    scored = predictions_on_each(moved, model_dir, version, batches[:2], "test", logged=False, rows=two)
    for batch in batches[:2]:
        pd.testing.assert_frame_equal(scored[batch], full[batch].iloc[two[batch]].reset_index(drop=True),
                                      check_exact=False, atol=1e-5)
        cached = kept_predictions(moved, "2", batch, "test")
        assert cached["row"].tolist() == list(two[batch])  # what was scored, and nothing else
    # A smaller share inside it: read from the kept rows, with no model to load.
    again = predictions_on_each(moved, tmp_path / "no-such-model", version, batches[:2], "test", logged=False,
                                rows={b: three[b] for b in batches[:2]})
    for batch in batches[:2]:
        assert again[batch]["row"].tolist() == list(three[batch])
        assert again[batch]["predicted"].tolist() == full[batch]["predicted"].iloc[three[batch]].tolist()
    # Every row: the missing ones are scored and join the kept file.
    predictions_on_each(moved, model_dir, version, batches[:1], "test", logged=False)
    cached = kept_predictions(moved, "2", "batch-0001", "test")
    assert cached["row"].tolist() == list(range(sizes["batch-0001"]))
    assert cached["predicted"].tolist() == full["batch-0001"]["predicted"].tolist()
