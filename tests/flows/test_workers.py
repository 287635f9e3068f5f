"""A work pool of disposable workers carries one loop on from the shared stores alone (issue 23's route).

PostgreSQL (ledger, MLflow's tables), SeaweedFS (landing zone, DVC remote, the loop's objects, MLflow's artifacts),
`mlflow server` on the two and the session's Prefect server. `kaizen deploy --pool` registers the loop; two
`prefect worker` processes, each with an empty folder, take its runs: the first keeps a cache folder (KAIZEN_HOME),
the second none (each of its runs starts on a new, empty disk). Three batches land in the bucket at once. The worker
that trains first is SIGKILLed mid-training, its folder deleted, and it is started again: the batch is still learned,
every champion's parent is the one before, and the ledger holds every file once.
"""

from __future__ import annotations

import shutil
import signal
import sys
import uuid
from pathlib import Path

import psutil

from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.members import init_workspace, open_member
from tests.support.files import sample
from tests.support.processes import cli_env, kaizen, start, stop, wait_until
from tests.support.services import FINAL, mlflow_server, prefect, run_filter, runs_of
from tests.support.workspaces import FAST, OPEN_GATE, write_params

POOL = "kaizen-disposable"
PREFECT = str(Path(sys.executable).parent / "prefect")


def worker(api: str, log: Path, home: Path | None):
    env = {**cli_env(), "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    if home is not None:
        env["KAIZEN_HOME"] = str(home)
    return start([PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1"], log, env)


def training_run(client, deployment_id):
    """A run of the deployment whose `train_challenger` task is running, or None."""
    for run in runs_of(client, deployment_id):
        if run.state_type.value != "RUNNING":
            continue
        steps = {t.name.rsplit("-", 1)[0]: t.state_type.value
                 for t in client.read_task_runs(flow_run_filter=run_filter(run.id))}
        if steps.get("train_challenger") == "RUNNING":
            return run
    return None


def runs_it(proc, run) -> bool:
    """Whether the worker `proc` started the run's process (the run records it as HOST:PID)."""
    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    return pid in {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}


def test_two_disposable_workers_carry_one_loop_on(tmp_path, postgres, object_store, prefect_server, tiny_backbone,
                                                  domains) -> None:
    import s3fs

    tag = uuid.uuid4().hex[:8]
    backend = postgres["create"](f"workers_{tag}")
    storage = {"artifacts": f"s3://{object_store['bucket']}/{tag}/mlartifacts", "ledger": backend,
               "dvc_remote": f"s3://{object_store['bucket']}/{tag}/dvc", "landing": f"s3://{object_store['bucket']}/{tag}/landing"}
    with mlflow_server(backend, storage["artifacts"], tmp_path / "mlflow.log") as url:
        creator = tmp_path / "creator"  # the operator's folder: it makes the loop and deploys it, then runs nothing
        init_workspace(creator, {f"storage.{k}": v for k, v in {**storage, "tracking_uri": url}.items()})
        write_params(creator, {**FAST, **OPEN_GATE, "model.backbone": str(tiny_backbone), "schedule.cron": "0 0 1 1 *",
                               "servers.slot_wait_seconds": 2, "operations.zombie_after_seconds": 60})
        ws = open_member(creator)  # publishes the edited settings: every worker's folder starts from them
        env = {**cli_env(), "PREFECT_API_URL": prefect_server}
        kaizen("deploy", "--pool", POOL, "-w", str(creator), env=env)
        homes = [tmp_path / "worker-1", None]
        workers = [worker(prefect_server, tmp_path / f"worker-{i}.log", home) for i, home in enumerate(homes, 1)]
        try:
            fs = s3fs.S3FileSystem()
            for i, domain in enumerate(("movies", "amazon", "finefood"), start=1):
                rows = sample(domains[domain].query("label != 'neutral'"), 60, seed=20 + i)
                fs.pipe(f"{storage['landing'].removeprefix('s3://')}/{i}-{domain}.csv", rows.to_csv(index=False).encode())
            with prefect(prefect_server) as client:
                from prefect.deployments import run_deployment

                deployment = client.read_deployment_by_name(f"kaizen-iteration/{ws.workspace_id}")
                assert deployment.parameters == {"workspace": f"kaizen-{ws.workspace_id}", "join": backend}
                (trigger,) = [a for a in client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
                              if a.trigger.expect == {"kaizen.data.arrived"}]
                assert {k: v for k, v in trigger.actions[0].parameters.items() if k != "files"} == deployment.parameters
                for _ in range(4):  # one per batch, one for the killed attempt; follow-ups may add more
                    run_deployment(deployment.id, timeout=0)
                killed = wait_until("a run mid-training", lambda: training_run(client, deployment.id), 600, every=1)
                victim = next(i for i, proc in enumerate(workers) if runs_it(proc, killed))
                for process in psutil.Process(workers[victim].pid).children(recursive=True):
                    process.kill()
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait(timeout=30)
                if homes[victim] is not None:
                    shutil.rmtree(homes[victim])  # its disk is gone: the next run there starts empty
                workers[victim] = worker(prefect_server, tmp_path / f"worker-{victim + 1}-again.log", homes[victim])
                crashed = wait_until("the killed run marked Crashed", lambda: (
                    r := client.read_flow_run(killed.id)).state_type.value == "CRASHED" and r, 300, every=3)
                assert crashed.state_type.value == "CRASHED"

                def learned() -> bool:
                    with Ledger(backend) as ledger:
                        return [b.status for b in ledger.batches()] == ["done"] * 3

                wait_until("every batch learned", learned, 900, every=3)
                ended = wait_until("the runs to end", lambda: (runs := [r for r in runs_of(client, deployment.id)
                                                                        if r.id != killed.id])
                                   and all(r.state_type.value in FINAL for r in runs) and runs, 300, every=3)
            assert all(r.state_type.value == "COMPLETED" for r in ended), [(r.name, r.state_type.value) for r in ended]
            follow_ups = [r for r in ended if "kaizen-follow-up" in r.tags]  # queued by a run: the deployment's own
            assert all(r.parameters == deployment.parameters for r in follow_ups)
        finally:
            for proc in workers:
                stop(proc)
        with Ledger(backend) as ledger:
            assert len(ledger.files()) == 3 and len({f.sha256 for f in ledger.files()}) == 3  # every file once
            batches = ledger.batches()
        assert [b.decision for b in batches] == ["promoted"] * 3
        member = Workspace.open(creator)
        client = tracking.connect(member)
        name = member.settings.model.registered_name
        versions = {b.model_version: client.get_model_version(name, b.model_version) for b in batches}
        chain = [b.model_version for b in batches]
        assert [versions[v].tags[TAG["parent_version"]] for v in chain] == ["", *chain[:-1]]  # each from the last
        assert client.get_model_version_by_alias(name, "champion").version == chain[-1]
        fs.invalidate_cache()
        assert not fs.find(storage["landing"].removeprefix("s3://"))  # every landed file collected
