"""Beyond one machine, on real engines: a PostgreSQL server, an S3-compatible object store (SeaweedFS) and an
MLflow server on the two, started the way the README's production section starts them.

Machine A runs two iterations of the loop with every store shared: MLflow's runs and registry in PostgreSQL,
its artifacts in S3 behind the server, the DVC remote and the landing zone in S3, the ledger in PostgreSQL;
nothing of it stays in the workspace. Then machine B, an empty folder: `kaizen init` with the same storage,
`kaizen reproduce V` and `dvc pull` restore the champion's training data from S3, and `kaizen predict` loads
the champion from the tracking server alone, without any credential for the object store or the database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kaizen.flows.loop import iteration
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.runtime import servers
from kaizen.tasks.workspace import identity
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.members import init_workspace
from kaizen.tasks.workspace.objects import MissingFromStores, md5_of
from tests.support.files import digests, sample
from tests.support.processes import cli_env, kaizen
from tests.support.services import mlflow_server
from tests.support.workspaces import FAST, OPEN_GATE, write_params

CREDENTIALS = ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(scope="module")
def machine_a(tmp_path_factory, postgres, object_store, tiny_backbone, domains, prefect_server):
    import s3fs

    bucket, tag = object_store["bucket"], uuid.uuid4().hex[:8]
    backend = postgres["create"](f"kaizen_{tag}")  # one database: MLflow's tables, and the ledger in its schema
    storage = {"artifacts": f"s3://{bucket}/{tag}/mlartifacts", "dvc_remote": f"s3://kaizen-{tag}/dvc",
               "landing": f"s3://kaizen-{tag}/landing", "ledger": backend}  # kaizen init makes the new bucket
    logs = tmp_path_factory.mktemp("logs")
    with mlflow_server(backend, storage["artifacts"], logs / "mlflow.log") as url:
        root = tmp_path_factory.mktemp("machine-a") / "ws"
        init_workspace(root, {f"storage.{key}": value for key, value in {**storage, "tracking_uri": url}.items()})
        write_params(root, {**FAST, **OPEN_GATE, "model.backbone": str(tiny_backbone)})
        ws = Workspace.open(root)
        fs = s3fs.S3FileSystem()  # endpoint and keys from the environment, like every other client here
        summaries = []
        for name, domain, seed in (("movies.csv", "movies", 1), ("amazon.csv", "amazon", 2)):
            fs.pipe(f"{storage['landing'].removeprefix('s3://')}/{name}",
                    sample(domains[domain], 120, seed=seed).to_csv(index=False).encode())
            summaries.append(iteration(str(root)))
        yield {"ws": ws, "url": url, "storage": storage, "backend": backend, "fs": fs, "summaries": summaries,
               "prepared": digests(ws.prepared_dir)}


def test_two_iterations_keep_every_store_on_the_shared_services(machine_a, postgres) -> None:
    ws, fs, storage = machine_a["ws"], machine_a["fs"], machine_a["storage"]
    assert [(s["batch"], s["decision"], s["champion_version"]) for s in machine_a["summaries"]] == [
        ("batch-0001", "promoted", "1"), ("batch-0002", "promoted", "2")]
    # The registry is in PostgreSQL, behind the server.
    with postgres["connect"](machine_a["backend"].rsplit("/", 1)[1]) as db:
        assert db.execute("SELECT count(*) FROM model_versions").fetchone() == (2,)
        assert db.execute("SELECT version FROM registered_model_aliases WHERE alias = 'champion'").fetchone() == (2,)
    # Models and reports in S3 (through the server's artifact proxy); data versions in the S3 DVC remote.
    artifacts = fs.find(storage["artifacts"].removeprefix("s3://"))
    assert sum(p.endswith("model.safetensors") for p in artifacts) == 2
    assert any(p.endswith("reports/drift.html") for p in artifacts)
    assert fs.find(f"{storage['dvc_remote'].removeprefix('s3://')}/files/md5")
    assert not [p for p in fs.find(storage["landing"].removeprefix("s3://")) if p.endswith(".csv")]  # collected
    with Ledger(ws.ledger_db) as ledger:  # the ledger is in PostgreSQL
        assert [(b.batch_id, b.status) for b in ledger.batches()] == [("batch-0001", "done"), ("batch-0002", "done")]
    for local in (ws.state_dir / "ledger.db", ws.mlflow_db, ws.artifacts_dir, ws.dvc_remote_dir):
        assert not local.exists(), local
    # Credentials live in the environment only: not in params.yaml, the DVC config, or any run's params/tags.
    client = tracking.connect(ws)
    runs = client.search_runs([tracking.experiment_id(client, ws)])
    recorded = [ws.params_file.read_text(), (ws.root / ".dvc" / "config").read_text()] + [
        f"{r.data.params} {r.data.tags}" for r in runs]
    for secret in (os.environ[name] for name in CREDENTIALS):
        assert not any(secret in text for text in recorded)


def test_kaizen_up_serves_mlflow_on_the_storage_settings(machine_a, tmp_path: Path) -> None:
    """`kaizen up` on the machine that hosts MLflow: its server is on storage's database and object store;
    a workspace whose tracking URI is a shared server starts none of its own."""
    ws = init_workspace(tmp_path / "host", {"storage.tracking_uri": machine_a["backend"],
                                            "storage.artifacts": machine_a["storage"]["artifacts"]})
    command, _, _ = servers._command(ws, "mlflow")
    assert command[command.index("--backend-store-uri") + 1] == machine_a["backend"]
    assert command[command.index("--artifacts-destination") + 1] == machine_a["storage"]["artifacts"]
    assert servers.wanted(ws) == ("prefect", "mlflow") and servers.wanted(machine_a["ws"]) == ("prefect",)
    (mlflow,) = [s for s in servers.status(machine_a["ws"]) if s.name == "mlflow"]  # what `kaizen status` shows
    assert (mlflow.url, mlflow.source, mlflow.answers) == (machine_a["url"], "params.yaml", True)


def test_another_machine_reproduces_the_data_and_predicts_from_the_server_alone(machine_a, tmp_path: Path) -> None:
    url, storage = machine_a["url"], machine_a["storage"]
    other = tmp_path / "machine-b"
    kaizen("init", str(other), "--tracking-uri", url, "--dvc-remote", storage["dvc_remote"])
    done = kaizen("reproduce", "2", "-w", str(other), "--out", str(other / "v2"))
    assert "every file's md5 verified" in done.stdout
    restored = other / "v2" / "data" / "prepared"
    assert digests(restored) == machine_a["prepared"]  # the champion's training data, byte for byte

    # The restored folder is a DVC repository on the S3 remote: `dvc pull` by hand brings the data back too.
    shutil.rmtree(restored)
    shutil.rmtree(other / "v2" / ".dvc" / "cache")
    pulled = subprocess.run([sys.executable, "-m", "dvc", "pull", "-q"], cwd=other / "v2", env=cli_env(),
                            capture_output=True, text=True, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    assert digests(restored) == machine_a["prepared"]

    alone = {k: v for k, v in cli_env().items() if k not in CREDENTIALS and not k.startswith("AWS_")}
    said = kaizen("predict", "A moving, beautifully acted film.", "-w", str(other), env=alone)
    assert "champion v2" in said.stdout and ("positive" in said.stdout or "negative" in said.stdout)


def test_a_folder_that_does_not_join_the_loop_is_refused(machine_a, tmp_path: Path) -> None:
    storage = {**machine_a["storage"], "tracking_uri": machine_a["url"]}
    said = kaizen("init", str(tmp_path / "stranger"), *[f"--{key.replace('_', '-')}={value}"
                                                           for key, value in storage.items()], check=False)
    assert said.returncode == 2 and "--join" in said.stdout + said.stderr
    with pytest.raises(identity.ForeignLoop, match="takes its settings"):  # one loop, one params.yaml
        init_workspace(tmp_path / "both", {"storage.landing": "/elsewhere"}, join=machine_a["backend"])


def test_an_empty_folder_joins_the_loop_and_carries_it_on(machine_a, domains, tmp_path: Path) -> None:
    """Machine B: an empty folder joins the loop (its settings and identity come from the loop's database), then
    learns the next batch from what the stores hold: the accepted batches and dvc.lock that machine A wrote, the
    prepared splits by `dvc pull`, the champion from MLflow; the new champion's parent is A's."""
    ws_a, fs, storage = machine_a["ws"], machine_a["fs"], machine_a["storage"]
    said = kaizen("init", str(tmp_path / "machine-b"), "--join", machine_a["backend"])
    assert ws_a.workspace_id in said.stdout
    b = Workspace.open(tmp_path / "machine-b")
    assert b.workspace_id == ws_a.workspace_id
    assert b.settings == ws_a.settings  # A's edits to params.yaml after `kaizen init` were published by its run
    fs.pipe(f"{storage['landing'].removeprefix('s3://')}/finefood.csv",
            sample(domains["finefood"], 120, seed=3).to_csv(index=False).encode())

    summary = iteration(str(b.root))
    assert (summary["batch"], summary["decision"], summary["champion_version"]) == ("batch-0003", "promoted", "3")
    client = tracking.connect(b)
    assert client.get_model_version(b.settings.model.registered_name, "3").tags[TAG["parent_version"]] == "2"
    assert {name: digest for name, digest in digests(b.prepared_dir).items() if "batch-0003" not in name} == \
        machine_a["prepared"]  # A's splits, restored byte for byte
    with Ledger(b.ledger_db) as ledger:
        assert [(x.batch_id, x.status) for x in ledger.batches()] == [
            ("batch-0001", "done"), ("batch-0002", "done"), ("batch-0003", "done")]
        assert ledger.failures_in_a_row("batch-0003")[0] == 0
        assert all(md5_of(b.batch_file(x.batch_id)) == x.md5 for x in ledger.batches())


def test_something_gone_from_the_stores_is_named_before_training_and_not_charged(machine_a, domains,
                                                                                 tmp_path: Path) -> None:
    ws_a, fs, storage = machine_a["ws"], machine_a["fs"], machine_a["storage"]
    store = ws_a.object_store
    assert store is not None
    gone = f"{ws_a.state_store.removeprefix('s3://')}/accepted/batch-0001.parquet"
    kept_bytes = fs.cat(gone)
    fs.rm(gone)
    try:
        fs.pipe(f"{storage['landing'].removeprefix('s3://')}/airline.csv",
                sample(domains["airline"].query("label != 'neutral'"), 120, seed=4).to_csv(index=False).encode())
        with pytest.raises(MissingFromStores, match="batch-0001.parquet is gone"):
            iteration(str(tmp_path / "machine-c"), join=machine_a["backend"])  # an empty folder of a new machine
    finally:
        fs.pipe(gone, kept_bytes)
    with Ledger(ws_a.ledger_db) as ledger:
        (batch,) = ledger.batches(status="pending")
        assert ledger.failures_in_a_row(batch.batch_id)[0] == 0  # not the batch's fault: not counted
        (outcome,) = ledger._db.execute("SELECT outcome FROM batch_attempts WHERE batch_id=?",
                                        (batch.batch_id,)).fetchone()
    assert outcome == "missing"
    registered = tracking.connect(ws_a).search_model_versions(f"name='{ws_a.settings.model.registered_name}'")
    assert len(registered) == 3  # nothing trained
