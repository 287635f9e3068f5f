"""Against a real `mlflow server` on a loopback port: lineage tags that are true, rollback, reproduce, predict,
history, the REST API, and the registered model's page in headless Chromium showing the champion alias."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.flows.loop import iteration
from kaizen.tasks.data.data_version import read_data_version
from kaizen.tasks.operate.operations import OperationError, reproduce, rollback
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.record import params_hash
from kaizen.tasks.registry.tags import TAG
from tests.support.files import digests, land, sample
from tests.support.processes import environment
from tests.support.services import mlflow_server
from tests.support.workspaces import FAST, OPEN_GATE, REPO, write_params


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone, domains, prefect_server):
    """A real MLflow server, and a workspace that ran bootstrap plus two iterations against it."""
    from kaizen.tasks.workspace.layout import Workspace
    from tests.support.workspaces import new_workspace

    store = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(f"sqlite:///{store}/mlflow.db", str(store / "artifacts"), store / "server.log",
                       seconds=180) as url, environment({"MLFLOW_TRACKING_URI": url}):
        root = tmp_path_factory.mktemp("served") / "ws"
        new_workspace(root)
        write_params(root, {**FAST, **OPEN_GATE, "model.backbone": str(tiny_backbone)})
        ws = Workspace.open(root)
        prepared, locks = [], []
        for name, domain in (("movies", "movies"), ("amazon", "amazon"), ("food", "finefood")):
            land(ws, f"{name}.csv", sample(domains[domain], 120, seed=4))
            iteration(str(root))
            prepared.append(digests(ws.prepared_dir))
            locks.append(ws.dvc_lock.read_text())
        yield ws, url, prepared, locks


def test_lineage_tags_are_true(served) -> None:
    ws, url, _, locks = served
    assert ws.tracking_uri == url
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for version, lock in zip(("1", "2", "3"), locks, strict=True):
        tags = tracking.model_version(client, name, version).tags
        assert tags[TAG["parent_version"]] == ("" if version == "1" else str(int(version) - 1))
        assert tags[TAG["data_version"]] == read_data_version(lock).prepared_md5
        assert tags[TAG["code_commit"]].startswith(head)
        assert tags[TAG["params_hash"]] == params_hash(ws)
    run = client.get_run(tracking.model_version(client, name, "2").run_id)
    inputs = {d.dataset.name: {t.key: t.value for t in d.tags} for d in run.inputs.dataset_inputs}
    assert inputs["batch-0002/train+replay"]["mlflow.data.context"] == "training"
    assert inputs["batch-0002/test"]["mlflow.data.context"] == "evaluation"
    assert inputs["1 earlier batch(es)/test"]["mlflow.data.context"] == "evaluation"  # pooled: one entry
    earlier = next(d.dataset for d in run.inputs.dataset_inputs if d.dataset.name == "1 earlier batch(es)/test")
    assert json.loads(earlier.profile)["num_rows"] == run.data.metrics["evaluation.earlier_rows"] > 0
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} >= {
        "evaluation/matrix.json", "evaluation/matrix-accuracy.png"}
    loop = client.get_run(run.data.tags["mlflow.parentRunId"])
    history = client.get_metric_history(loop.info.run_id, "champion.batch-0001.accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert {"bwt", "forgetting.max", "forgetting.batch-0001"} <= set(loop.data.metrics)
    assert run.data.metrics["replay.batch-0001.rows"] > 0


def test_rest_api_lists_the_model_with_its_aliases(served) -> None:
    ws, url, _, _ = served
    name = ws.settings.model.registered_name
    found = get_json(f"{url}/api/2.0/mlflow/registered-models/search")["registered_models"]
    model = next(m for m in found if m["name"] == name)
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert aliases["champion"] == "3" and aliases["previous-champion"] == "2"


def test_reproduce_restores_byte_identical_data(served, tmp_path: Path) -> None:
    ws, _, prepared, _ = served
    folder, md5 = reproduce(ws, "1", tmp_path / "v1")
    assert digests(folder / "prepared") == prepared[0] != prepared[2]
    assert md5 == tracking.model_version(tracking.connect(ws), ws.settings.model.registered_name, "1").tags[
        TAG["data_version"]]


def test_reproduce_reads_any_dvc_remote(served, tmp_path: Path) -> None:
    """`--remote` names another DVC remote (a mirror, another bucket): the data comes from it alone."""
    ws, _, prepared, _ = served
    mirror = tmp_path / "mirror"
    shutil.copytree(ws.dvc_remote_dir, mirror)
    away = ws.dvc_remote_dir.with_name("dvc-remote.away")
    ws.dvc_remote_dir.rename(away)  # the workspace's own remote is out of reach meanwhile
    try:
        result = CliRunner().invoke(app, ["reproduce", "2", "--remote", str(mirror), "--out", str(tmp_path / "v2"),
                                          "-w", str(ws.root)])
    finally:
        away.rename(ws.dvc_remote_dir)
    assert result.exit_code == 0, result.output
    assert digests(tmp_path / "v2" / "data" / "prepared") == prepared[1]


def test_predict_history_then_rollback(served, tmp_path: Path) -> None:
    ws, _, _, _ = served
    runner = CliRunner()
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["A wonderful, moving film.", "Broke after two days.", "Fine."]}).to_csv(texts, index=False)
    result = runner.invoke(app, ["predict", str(texts), "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    out = pd.read_csv(tmp_path / "texts.predictions.csv")
    assert list(out["model_version"]) == [3, 3, 3]
    assert set(out["prediction"]) <= {"negative", "positive"}
    assert ((out["p_negative"] + out["p_positive"]) - 1).abs().max() < 1e-5
    result = runner.invoke(app, ["predict", "what a great product", "-w", str(ws.root)])
    assert result.exit_code == 0 and "champion v3" in result.output

    result = runner.invoke(app, ["history", "--json", "-w", str(ws.root)])
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["batch"], r["decision"], r["champion_version"]) for r in rows] == [
        ("batch-0001", "promoted", "1"), ("batch-0002", "promoted", "2"), ("batch-0003", "promoted", "3")]

    with pytest.raises(OperationError, match="reason"):
        rollback(ws, "  ")
    done = rollback(ws, "bad outputs reported by support")
    assert (done.from_version, done.to_version) == ("3", "2")
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == "2"
    assert tracking.model_by_alias(client, name, tracking.PREVIOUS).version == "3"
    tags = tracking.model_version(client, name, "2").tags
    assert tags["kaizen.rollback.reason"] == "bad outputs reported by support"
    assert tags["kaizen.rollback.by"] and tags["kaizen.rollback.at"] and tags["kaizen.rollback.from"] == "3"
    assert client.get_run(done.run_id).data.tags["kaizen.decision"] == "rollback"

    result = runner.invoke(app, ["rollback", "--to", "1", "--reason", "back to the first", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == "1"
    result = runner.invoke(app, ["rollback", "--to", "1", "--reason", "again", "-w", str(ws.root)])
    assert result.exit_code == 1 and "already the champion" in result.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_the_model_page_shows_the_champion_alias(served, tmp_path: Path) -> None:
    ws, url, _, _ = served
    page = f"{url}/#/models/{ws.settings.model.registered_name}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--window-size=1400,900"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    keep = os.environ.get("KAIZEN_SCREENSHOT_DIR")
    if keep:
        (Path(keep) / "mlflow-model-page.html").write_text(dom.stdout)
    assert "@&nbsp;champion" in dom.stdout, dom.stdout[-2000:]  # the alias tag in the versions table
    shot = tmp_path / "model-page.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    if keep:
        shutil.copy(shot, Path(keep) / "mlflow-model-page.png")


def test_a_batch_operation_waits_for_a_running_iteration_then_gives_up(copy_workspace) -> None:
    """retry, trust and distrust take the loop's own lock: while an iteration holds it they wait, a bounded time,
    then refuse and say why; once it is released they go on."""
    import threading
    import time

    from kaizen.tasks.ingest.ledger import Ledger
    from kaizen.tasks.operate.failures import retry
    from kaizen.tasks.operate.operations import set_batch_trust
    from kaizen.tasks.workspace.files import Busy
    from kaizen.tasks.workspace.layout import hold

    ws = copy_workspace({})
    with Ledger(ws.ledger_db) as ledger:
        ledger.record_batch("batch-0001", 10, [])
        ledger.set_status("batch-0001", "failed", "failed")

    def status() -> list[tuple[str, str]]:
        with Ledger(ws.ledger_db) as ledger:
            return [(b.status, b.trust) for b in ledger.batches()]

    before = status()

    with hold(ws, "loop", wait=False):  # an iteration runs
        began = time.monotonic()
        with pytest.raises(Busy, match=r"another loop is running .* waited 0\.5 s for it to end"):
            retry(ws, "batch-0001", wait_seconds=0.5)
        assert time.monotonic() - began >= 0.5
        with pytest.raises(Busy, match="waited 0 s"):
            set_batch_trust(ws, "batch-0001", False, "labels from a broken export", wait_seconds=0)
        result = CliRunner().invoke(app, ["batch", "distrust", "batch-0001", "--reason", "broken", "--wait", "0",
                                          "-w", str(ws.root)])
        assert result.exit_code == 1 and "cannot distrust batch-0001:" in result.output, result.output
        assert status() == before  # nothing changed under the iteration

    held = threading.Event()

    def iterate() -> None:  # a second iteration, which ends 0.5 s after the operator asked
        with hold(ws, "loop", wait=False):
            held.set()
            time.sleep(0.5)

    worker = threading.Thread(target=iterate)
    worker.start()
    held.wait(10)
    began = time.monotonic()
    retry(ws, "batch-0001", wait_seconds=30)
    assert time.monotonic() - began >= 0.3  # it waited for the iteration, then went on
    worker.join()
    assert status() == [("pending", before[0][1])]
