"""Production on real servers: `kaizen up` starts a Prefect server and an MLflow server on free loopback ports;
`kaizen serve` serves the loop's deployment; `kaizen submit` and `kaizen watch` announce new files with
`kaizen.data.arrived` events, and each event starts exactly one run, one at a time, every file ingested once;
`kaizen deploy` puts the same deployment on a process work pool whose `prefect worker` runs the cron schedule;
`kaizen down` stops exactly what `kaizen up` started.

Every command is the real CLI in a subprocess: each needs an environment of its own (PREFECT_API_URL from the
workspace), which must not leak into the other tests of this process. The tests run in file order: they share
the servers and the served deployment (starting them costs about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import psutil
import pytest
import yaml

from tasks import registry
from tasks.ledger import Ledger
from tasks.workspace import Workspace, init_workspace
from tests.conftest import FAST, sample, write_params

KAIZEN = str(Path(sys.executable).parent / "kaizen")
POOL = "kaizen-test-pool"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_env() -> dict[str, str]:
    """This process's environment minus what would point a command at another server or workspace name."""
    drop = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "KAIZEN_WORKSPACE_ID")
    return {k: v for k, v in os.environ.items() if k not in drop}


def kaizen(*args: str, timeout: float = 300, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([KAIZEN, *args], capture_output=True, text=True, timeout=timeout, env=env or cli_env())
    if check:
        assert result.returncode == 0, f"kaizen {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """End a process group this module started: SIGTERM, then SIGKILL (a worker wants two signals)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@contextmanager
def prefect(api_url: str) -> Iterator:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def runs_of(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def wait_until(what: str, check, seconds: float, every: float = 2.0):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(every)


def make_ws(root: Path, tiny_backbone: Path, **overrides) -> Workspace:
    init_workspace(root)
    write_params(root, {**FAST, "model.backbone": str(tiny_backbone), "gate.min_score": 0.0,
                        "gate.min_improvement": -1.0, "gate.max_regression": 1.0, "schedule.poll_seconds": 2,
                        "servers.slot_wait_seconds": 2, "servers.prefect_port": free_port(),
                        "servers.mlflow_port": free_port(), **overrides})
    return Workspace.open(root)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_backbone) -> Workspace:
    return make_ws(tmp_path_factory.mktemp("production") / "ws", tiny_backbone)


@pytest.fixture(scope="module")
def up(ws) -> Iterator[dict]:
    """`kaizen up` in the workspace; whatever a test left running is stopped by `kaizen down` at the end."""
    started = time.monotonic()
    result = kaizen("up", "-w", str(ws.root), timeout=600)
    print(f"kaizen up: {time.monotonic() - started:.1f} s")
    try:
        yield {"output": result.stdout, "api": f"{ws.recorded_url('prefect')}/api",
               "records": {n: json.loads((ws.servers_dir / f"{n}.json").read_text()) for n in ("prefect", "mlflow")}}
    finally:
        kaizen("down", "-w", str(ws.root), timeout=120)


@pytest.fixture(scope="module")
def served(ws, up) -> Iterator[dict]:
    """`kaizen serve` running, its deployment and trigger registered."""
    proc = start([KAIZEN, "serve", "-w", str(ws.root)], ws.state_dir / "serve.log", cli_env())
    try:
        with prefect(up["api"]) as client:
            deployment = wait_until("the served deployment", lambda: _deployment(client, ws), 240)
        yield {"proc": proc, "deployment": deployment, "api": up["api"]}
    finally:
        stop(proc)


def _deployment(client, ws: Workspace):
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = client.read_deployment_by_name(f"kaizen-iteration/{ws.workspace_id}")
    except ObjectNotFound:
        return None
    return deployment if client.read_resource_related_automations(f"prefect.deployment.{deployment.id}") else None


@pytest.fixture(scope="module")
def pooled(tmp_path_factory, tiny_backbone, ws, up) -> Iterator[dict]:
    """A second workspace deployed on a process pool with a one-minute cron, and a worker on the pool."""
    ws2 = make_ws(tmp_path_factory.mktemp("pooled") / "ws2", tiny_backbone, **{"schedule.cron": "* * * * *"})
    env = {**cli_env(), "PREFECT_API_URL": up["api"], "PREFECT_WORKER_QUERY_SECONDS": "2"}
    result = kaizen("deploy", "--pool", POOL, "-w", str(ws2.root), env=env)
    worker = start([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", POOL],
                   ws2.state_dir / "worker.log", env)
    pool = {"ws": ws2, "output": result.stdout, "worker": worker, "api": up["api"]}
    try:
        yield pool
    finally:
        retire(pool)


def retire(pool: dict) -> None:
    """Stop the worker and delete its deployment: no more minutely runs for the rest of the session."""
    stop(pool["worker"])
    if not pool.get("retired"):
        with prefect(pool["api"]) as client:
            client.delete_deployment(client.read_deployment_by_name(f"kaizen-iteration/{pool['ws'].workspace_id}").id)
        pool["retired"] = True


def land(folder: Path, name: str, frame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / name, index=False)
    return folder / name


# --- kaizen up ------------------------------------------------------------------------------------------


def test_up_starts_both_servers_on_loopback_and_status_shows_them(ws, up) -> None:
    cfg = ws.settings.servers
    for name, port in (("prefect", cfg.prefect_port), ("mlflow", cfg.mlflow_port)):
        record = up["records"][name]
        assert record["url"] == f"http://127.0.0.1:{port}"
        assert f"http://127.0.0.1:{port}" in up["output"]  # the UI address is printed
        process = psutil.Process(record["pid"])
        assert ("prefect" if name == "prefect" else "mlflow") in " ".join(process.cmdline())
        group = [p for p in psutil.process_iter() if _pgid(p.pid) == record["pid"]]
        listening = {c.laddr for p in group for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert ("127.0.0.1", port) in listening, listening  # loopback only: nothing else listens
        assert all(addr[0] == "127.0.0.1" for addr in listening), listening
        assert Path(record["log"]).is_file() and Path(record["log"]).parent == ws.servers_dir
    state = json.loads(kaizen("status", "--json", "-w", str(ws.root)).stdout)
    assert [(s["name"], s["answers"], s["source"], s["pid"]) for s in state["servers"]] == [
        ("prefect", True, "kaizen up", up["records"]["prefect"]["pid"]),
        ("mlflow", True, "kaizen up", up["records"]["mlflow"]["pid"])]
    assert ws.tracking_uri == up["records"]["mlflow"]["url"]  # the loop goes through the tracking server
    again = kaizen("up", "-w", str(ws.root))  # idempotent: the same processes, nothing started twice
    assert json.loads((ws.servers_dir / "prefect.json").read_text())["pid"] == up["records"]["prefect"]["pid"]
    assert "answers" in again.stdout


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_submit_without_a_server_refuses_and_lands_nothing(tmp_path, tiny_backbone, domains) -> None:
    other = make_ws(tmp_path / "plain", tiny_backbone)
    path = land(tmp_path, "movies.csv", sample(domains["movies"], 40, seed=5))
    result = kaizen("submit", str(path), "-w", str(other.root), check=False)
    assert result.returncode == 2 and "no Prefect server" in result.stdout
    assert not Path(other.landing).exists() or not list(Path(other.landing).iterdir())


# --- the deployment -------------------------------------------------------------------------------------


def test_deploy_puts_the_loop_on_a_process_pool(pooled, up) -> None:
    ws2 = pooled["ws"]
    assert f"prefect worker start --pool {POOL}" in pooled["output"]
    with prefect(up["api"]) as client:
        assert client.read_work_pool(POOL).type == "process"
        deployment = client.read_deployment_by_name(f"kaizen-iteration/{ws2.workspace_id}")
        assert deployment.work_pool_name == POOL
        assert [s.schedule.cron for s in deployment.schedules] == ["* * * * *"]
        assert deployment.job_variables["working_dir"] == str(ws2.root)
        assert deployment.job_variables["env"]["HF_HUB_OFFLINE"] == "1"


def test_the_served_deployment_has_its_schedule_trigger_and_limit(ws, served) -> None:
    from prefect.events.actions import RunDeployment

    deployment = served["deployment"]
    assert [s.schedule.cron for s in deployment.schedules] == [ws.settings.schedule.cron]
    assert deployment.parameters == {"workspace": str(ws.root)}
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
    assert deployment.entrypoint == "flows.loop.iteration"
    with prefect(served["api"]) as client:
        (automation,) = client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
    trigger = automation.trigger
    assert trigger.expect == {"kaizen.data.arrived"} and trigger.threshold == 1
    assert trigger.match.model_dump()["prefect.resource.id"] == f"kaizen.workspace.{ws.workspace_id}"
    (action,) = automation.actions
    assert isinstance(action, RunDeployment) and action.deployment_id == deployment.id
    assert action.parameters["workspace"] == str(ws.root)


def test_an_event_starts_exactly_one_run_with_its_files(ws, served, domains, tmp_path) -> None:
    deployment_id = served["deployment"].id
    path = land(tmp_path, "movies.csv", sample(domains["movies"], 80, seed=11))
    landed_at = time.monotonic()
    kaizen("submit", str(path), "-w", str(ws.root))
    with prefect(served["api"]) as client:
        run = wait_until("the triggered run to finish", lambda: next(
            (r for r in runs_of(client, deployment_id) if r.state_type.value in FINAL), None), 600)
        print(f"file landed -> run finished: {time.monotonic() - landed_at:.1f} s")
        time.sleep(3 * ws.settings.schedule.poll_seconds)  # time enough for a second run to show, were there one
        runs = [r for r in runs_of(client, deployment_id) if "auto-scheduled" not in r.tags]
        assert [r.id for r in runs] == [run.id]
        assert run.state_type.value == "COMPLETED", run.state.message
        assert run.parameters == {"workspace": str(ws.root), "files": ["movies.csv"]}
        assert run.created_by.type == "AUTOMATION"
        steps = {t.name.rsplit("-", 1)[0] for t in client.read_task_runs(
            flow_run_filter=_run_filter(run.id))}
        assert {"collect", "pick-batch", "train", "promote", "finish"} <= steps, steps  # each step a task
        assert any(step.startswith("check") for step in steps), steps
        (artifact,) = client.read_artifacts(flow_run_filter=_run_filter(run.id))
    assert artifact.key == "kaizen-iteration" and artifact.type == "markdown"
    assert "| batch-0001 | 80 | 0 |" in artifact.data and "promoted" in artifact.data
    mlflow_url = f"http://127.0.0.1:{ws.settings.servers.mlflow_port}"
    assert f"({mlflow_url}/#/experiments/" in artifact.data and "`movies.csv`" in artifact.data
    client = registry.connect(ws)  # through the tracking server: the champion moved there
    champion = registry.model_by_alias(client, ws.settings.model.registered_name, registry.CHAMPION)
    assert champion.version == "1" and champion.tags[registry.TAG["flow_run_id"]] == str(run.id)


def _run_filter(run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))


def test_events_in_quick_succession_queue_and_run_one_loop_at_a_time(ws, served, domains) -> None:
    deployment_id = served["deployment"].id
    names = ["amazon.csv", "finefood.csv", "movies-2.csv"]
    for name, domain, seed in zip(names, ("amazon", "finefood", "movies"), (12, 13, 14), strict=True):
        land(Path(ws.landing), name, sample(domains[domain], 60, seed=seed))
    time.sleep(ws.settings.data.settle_seconds)
    announced = kaizen("watch", "--once", "-w", str(ws.root)).stdout
    assert f"announced {', '.join(names)}" in announced  # one event per file, in one quick burst
    assert "announced" not in kaizen("watch", "--once", "-w", str(ws.root)).stdout  # never twice
    with prefect(served["api"]) as client:
        def finished():
            runs = [r for r in runs_of(client, deployment_id) if r.parameters.get("files") in ([n] for n in names)]
            return runs if len(runs) == 3 and all(r.state_type.value in FINAL for r in runs) else None

        runs = wait_until("three triggered runs to finish", finished, 900)
        time.sleep(3 * ws.settings.schedule.poll_seconds)
        assert len([r for r in runs_of(client, deployment_id) if "auto-scheduled" not in r.tags]) == 4  # none lost, none extra
        waited = [r for r in runs
                  if "AwaitingConcurrencySlot" in {s.name for s in client.read_flow_run_states(r.id)}]
    assert all(r.state_type.value == "COMPLETED" for r in runs), [(r.name, r.state.message) for r in runs]
    assert sorted(r.parameters["files"][0] for r in runs) == sorted(names)
    assert waited, "no run had to wait: the events did not overlap a running loop"
    spans = sorted((r.start_time, r.end_time) for r in runs)
    assert all(earlier[1] <= later[0] for earlier, later in pairwise(spans)), spans  # never two at once
    ledger = Ledger(ws.ledger_db)
    try:
        files = [f.name for f in ledger.files()]
        batches = [(b.batch_id, b.status) for b in ledger.batches()]
    finally:
        ledger.close()
    assert sorted(files) == sorted(["movies.csv", *names])  # each file ingested exactly once
    assert batches == [(f"batch-000{i}", "done") for i in range(1, 5)]  # and each batch learned from once
    assert not list(Path(ws.landing).iterdir())


def test_the_worker_runs_the_cron_schedule(pooled, up) -> None:
    ws2 = pooled["ws"]
    with prefect(up["api"]) as client:
        deployment = client.read_deployment_by_name(f"kaizen-iteration/{ws2.workspace_id}")
        run = wait_until("a scheduled run on the worker", lambda: next(
            (r for r in runs_of(client, deployment.id) if r.state_type.value in FINAL), None), 300)
    assert run.state_type.value == "COMPLETED", run.state.message
    assert "auto-scheduled" in run.tags and run.created_by.type == "SCHEDULE"
    assert run.parameters == {"workspace": str(ws2.root)}
    assert pooled["worker"].poll() is None


# --- kaizen down -----------------------------------------------------------------------------------------


def test_down_stops_exactly_what_up_started(ws, up, served, pooled, tmp_path) -> None:
    stop(served["proc"])
    retire(pooled)
    # A bystander whose command line looks like a server: `kaizen down` must not go by names.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "prefect", "server",
                                  "start", "mlflow", "server"], start_new_session=True)
    try:
        pids = {n: r["pid"] for n, r in up["records"].items()}
        groups = {n: [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pid] for n, pid in pids.items()}
        assert len(groups["mlflow"]) >= 2  # `mlflow server` runs its uvicorn in a child: stopped with it
        result = kaizen("down", "-w", str(ws.root))
        assert "prefect: stopped pid" in result.stdout and "mlflow: stopped pid" in result.stdout
        for name, members in groups.items():
            assert not any(psutil.pid_exists(pid) and _pgid(pid) == pids[name] for pid in members), name
        assert bystander.poll() is None
        assert not list(ws.servers_dir.glob("*.json"))
        state = json.loads(kaizen("status", "--json", "-w", str(ws.root)).stdout)
        assert [(s["name"], s["url"], s["source"]) for s in state["servers"]] == [
            ("prefect", None, "embedded"), ("mlflow", None, "embedded")]
        assert state["champion"]["version"] == "4"  # the same store, read directly from SQLite now
        assert "not started by kaizen up" in kaizen("down", "-w", str(ws.root)).stdout
    finally:
        bystander.kill()
        bystander.wait()
    assert yaml.safe_load(ws.params_file.read_text())["servers"]["host"] == "127.0.0.1"
