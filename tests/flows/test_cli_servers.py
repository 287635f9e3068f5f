"""Production on real servers: `kaizen up` starts a Prefect server and an MLflow server on free loopback ports;
`kaizen serve` serves the loop's deployment; `kaizen submit` and `kaizen watch` announce new files with
`kaizen.data.arrived` events, and each event starts exactly one run, one at a time, every file ingested once;
`kaizen deploy` puts the same deployment on a process work pool whose `prefect worker` runs the cron schedule;
`kaizen down` stops exactly what `kaizen up` started.

Every command is the real CLI in a subprocess (its environment must not leak into other tests). The tests share
the servers and the served deployment (about a minute to start on 2 cores) but not their results: each one
asserts on what it did itself (the runs, batches and versions it added), so any one of them runs alone or in
any order; the test that stops servers starts its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import psutil
import pytest
import yaml

from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import land, sample
from tests.support.processes import KAIZEN, cli_env, kaizen, pgid, start, stop, wait_until
from tests.support.services import FINAL, deployment_with_trigger, prefect, retire, run_filter, runs_of
from tests.support.workspaces import make_ws

POOL = "kaizen-test-pool"


def batches(ws: Workspace) -> list[tuple[str, str]]:
    with Ledger(ws.ledger_db) as ledger:
        return [(b.batch_id, b.status) for b in ledger.batches()]


def triggered(client, deployment_id, before: set) -> list:
    """The runs of the deployment created since `before` (a set of run ids), the cron's aside."""
    return [r for r in runs_of(client, deployment_id) if r.id not in before and "auto-scheduled" not in r.tags]


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
            deployment = wait_until("the served deployment", lambda: deployment_with_trigger(client, ws), 240)
        yield {"proc": proc, "deployment": deployment, "api": up["api"]}
    finally:
        stop(proc)


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


# --- kaizen up ------------------------------------------------------------------------------------------


def test_up_starts_both_servers_on_loopback_and_status_shows_them(ws, up) -> None:
    cfg = ws.settings.servers
    for name, port in (("prefect", cfg.prefect_port), ("mlflow", cfg.mlflow_port)):
        record = up["records"][name]
        assert record["url"] == f"http://127.0.0.1:{port}"
        assert f"http://127.0.0.1:{port}" in up["output"]  # the UI address is printed
        process = psutil.Process(record["pid"])
        assert ("prefect" if name == "prefect" else "mlflow") in " ".join(process.cmdline())
        group = [p for p in psutil.process_iter() if pgid(p.pid) == record["pid"]]
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
    retire(pooled)  # its minutely runs would otherwise cost the module's other tests a core, a run a minute


def test_the_served_deployment_has_its_schedule_trigger_and_limit(ws, served) -> None:
    from prefect.events.actions import RunDeployment

    deployment = served["deployment"]
    assert [s.schedule.cron for s in deployment.schedules] == [ws.settings.schedule.cron]
    assert deployment.parameters == {"workspace": str(ws.root)}
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
    assert deployment.entrypoint == "kaizen.flows.loop.iteration"
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
    batch = f"batch-{len(batches(ws)) + 1:04d}"
    with prefect(served["api"]) as client:
        before = {r.id for r in runs_of(client, deployment_id)}
        landed_at = time.monotonic()
        kaizen("submit", str(path), "-w", str(ws.root))
        run = wait_until("the triggered run to finish", lambda: next(
            (r for r in triggered(client, deployment_id, before) if r.state_type.value in FINAL), None), 600)
        print(f"file landed -> run finished: {time.monotonic() - landed_at:.1f} s")
        time.sleep(3 * ws.settings.schedule.poll_seconds)  # time enough for a second run to show, were there one
        assert [r.id for r in triggered(client, deployment_id, before)] == [run.id]
        assert run.state_type.value == "COMPLETED", run.state.message
        assert run.parameters == {"workspace": str(ws.root), "files": ["movies.csv"]}
        assert run.created_by.type == "AUTOMATION"
        steps = {t.name.rsplit("-", 1)[0] for t in client.read_task_runs(
            flow_run_filter=run_filter(run.id))}
        assert {"collect", "next_batch", "train_challenger", "decide", "close_iteration"} <= steps, steps  # each step a task
        assert any(step.startswith("check") for step in steps), steps
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=run_filter(run.id))}
    assert set(artifacts) == {"kaizen-iteration", "kaizen-training"}  # the summary, and training's progress
    artifact = artifacts["kaizen-iteration"]
    assert artifact.type == "markdown" and artifacts["kaizen-training"].type == "progress"
    assert f"| {batch} | 80 | 0 |" in artifact.data and "promoted" in artifact.data
    mlflow_url = f"http://127.0.0.1:{ws.settings.servers.mlflow_port}"
    assert f"({mlflow_url}/#/experiments/" in artifact.data and "`movies.csv`" in artifact.data
    client = tracking.connect(ws)  # through the tracking server: the champion moved there
    champion = tracking.model_by_alias(client, ws.settings.model.registered_name, tracking.CHAMPION)
    assert champion.tags[TAG["flow_run_id"]] == str(run.id) and champion.tags[TAG["batch"]] == batch


def test_events_in_quick_succession_queue_and_run_one_loop_at_a_time(ws, served, domains) -> None:
    deployment_id = served["deployment"].id
    names = ["amazon.csv", "finefood.csv"]
    done_before = batches(ws)
    with prefect(served["api"]) as client:
        before = {r.id for r in runs_of(client, deployment_id)}
    for name, domain, seed in zip(names, ("amazon", "finefood"), (12, 13), strict=True):
        land(Path(ws.landing), name, sample(domains[domain], 60, seed=seed))
    time.sleep(ws.settings.data.settle_seconds)
    announced = kaizen("watch", "--once", "-w", str(ws.root)).stdout
    assert f"announced {', '.join(names)}" in announced  # one event per file, in one quick burst
    assert "announced" not in kaizen("watch", "--once", "-w", str(ws.root)).stdout  # never twice
    with prefect(served["api"]) as client:
        def finished():
            runs = [r for r in triggered(client, deployment_id, before) if r.parameters.get("files") in
                    ([n] for n in names)]
            return runs if len(runs) == 2 and all(r.state_type.value in FINAL for r in runs) else None

        runs = wait_until("two triggered runs to finish", finished, 900)
        time.sleep(3 * ws.settings.schedule.poll_seconds)
        assert len(triggered(client, deployment_id, before)) == 2  # none lost, none extra
        waited = [r for r in runs
                  if "AwaitingConcurrencySlot" in {s.name for s in client.read_flow_run_states(r.id)}]
    assert all(r.state_type.value == "COMPLETED" for r in runs), [(r.name, r.state.message) for r in runs]
    assert sorted(r.parameters["files"][0] for r in runs) == sorted(names)
    assert waited, "no run had to wait: the events did not overlap a running loop"
    spans = sorted((r.start_time, r.end_time) for r in runs)
    assert all(earlier[1] <= later[0] for earlier, later in pairwise(spans)), spans  # never two at once
    with Ledger(ws.ledger_db) as ledger:
        files = [f.name for f in ledger.files()]
    assert sorted(n for n in files if n in names) == sorted(names)  # each file ingested exactly once
    new = batches(ws)[len(done_before):]
    assert [status for _, status in new] == ["done"] * 2  # and each batch learned from once
    assert not list(Path(ws.landing).iterdir())
    kaizen("watch", "--once", "-w", str(ws.root))  # the watcher forgets files once they left the landing zone
    assert json.loads(ws.watch_state_file.read_text()) == {}


def test_one_event_for_two_batches_queues_a_follow_up_run(ws, served, domains, tmp_path) -> None:
    deployment_id = served["deployment"].id
    paths = [land(tmp_path, f"{d}-3.csv", sample(domains[d], 60, seed=15)) for d in ("airline", "amazon")]
    done_before = batches(ws)
    with prefect(served["api"]) as client:
        earlier = {r.id for r in runs_of(client, deployment_id)}
        kaizen("submit", *map(str, paths), "-w", str(ws.root))  # one event naming both: two batches, one run

        def finished():
            runs = triggered(client, deployment_id, earlier)
            return runs if len(runs) == 2 and all(r.state_type.value in FINAL for r in runs) else None

        runs = wait_until("the triggered run and its follow-up to finish", finished, 600)
        time.sleep(3 * ws.settings.schedule.poll_seconds)
        assert len(triggered(client, deployment_id, earlier)) == 2
    by_tag = {("kaizen-follow-up" in r.tags): r for r in runs}
    assert by_tag[False].parameters["files"] == [p.name for p in paths]
    assert by_tag[True].parameters == {"workspace": str(ws.root)}
    assert all(r.state_type.value == "COMPLETED" for r in runs)
    assert [status for _, status in batches(ws)[len(done_before):]] == ["done", "done"]


def kill_tree(proc) -> None:
    """SIGKILL a process and everything under it, as a machine going down does (no chance to report anything)."""
    root = psutil.Process(proc.pid)
    for process in [*root.children(recursive=True), root]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    proc.wait()


def test_a_run_killed_with_its_serving_process_frees_the_slot_and_is_learned(up, tiny_backbone, domains,
                                                                            tmp_path, monkeypatch) -> None:
    # Its own workspace on the shared servers: a model of its own; its runs are told apart by their workspace tag.
    third = make_ws(tmp_path / "third", tiny_backbone, **{"model.registered_name": "kaizen-third"})
    env = {**cli_env(), "PREFECT_API_URL": up["api"], "MLFLOW_TRACKING_URI": up["records"]["mlflow"]["url"]}
    files = [land(tmp_path, f"{d}.csv", sample(domains[d], 60, seed=16)) for d in ("movies", "amazon")]
    serving = start([KAIZEN, "serve", "-w", str(third.root)], third.state_dir / "serve-1.log", env)
    try:
        with prefect(up["api"]) as client:
            deployment = wait_until("the deployment", lambda: deployment_with_trigger(client, third), 240)
            kaizen("submit", str(files[0]), "-w", str(third.root), env=env)

            def mid_iteration():
                for run in runs_of(client, deployment.id):
                    steps = {t.name.rsplit("-", 1)[0]: t.state_type.value
                             for t in client.read_task_runs(flow_run_filter=run_filter(run.id))}
                    if run.state_type.value == "RUNNING" and steps.get("start_iteration") == "COMPLETED":
                        return run
                return None

            killed = wait_until("the run to be mid-iteration", mid_iteration, 600, every=1)
            kill_tree(serving)  # the serving process and the run's own process, mid-iteration
            assert client.read_flow_run(killed.id).state_type.value == "RUNNING"  # what the server still believes

            serving = start([KAIZEN, "serve", "-w", str(third.root)], third.state_dir / "serve-2.log", env)
            crashed = wait_until("the killed run marked Crashed", lambda: (
                r := client.read_flow_run(killed.id)).state_type.value == "CRASHED" and r, 240)
            assert "when `kaizen serve` started again" in crashed.state.message
            kaizen("submit", str(files[1]), "-w", str(third.root), env=env)
            wait_until("both batches learned", lambda: batches(third) == [("batch-0001", "done"),
                                                                          ("batch-0002", "done")], 900, every=3)
            later = wait_until("the later runs to end", lambda: (runs := triggered(client, deployment.id, {killed.id}))
                               and all(r.state_type.value in FINAL for r in runs) and runs, 300)
            assert all(r.state_type.value == "COMPLETED" for r in later), [(r.name, r.state_type.value) for r in later]
    finally:
        stop(serving)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", up["records"]["mlflow"]["url"])  # the store the loop wrote to
    client = tracking.connect(third)
    orphans = [r for r in client.search_runs([tracking.experiment_id(client, third)],
                                             filter_string="tags.`kaizen.batch` = 'batch-0001'")
               if r.data.tags.get(TAG["workspace"]) == third.workspace_id and r.data.tags.get(TAG["decision"]) == "orphaned"]
    assert len(orphans) == 1  # the killed attempt, labelled; the batch learned once by the next run


# --- kaizen down -----------------------------------------------------------------------------------------


def test_down_stops_exactly_what_up_started(tmp_path, tiny_backbone) -> None:
    own = make_ws(tmp_path / "own", tiny_backbone)  # servers of its own: stopping them leaves the others' running
    kaizen("up", "-w", str(own.root), timeout=600)
    records = {n: json.loads((own.servers_dir / f"{n}.json").read_text()) for n in ("prefect", "mlflow")}
    client = tracking.connect(own)  # through the tracking server: a run to find again in SQLite afterwards
    run_id = client.create_run(tracking.experiment_id(client, own)).info.run_id
    # A bystander whose command line looks like a server: `kaizen down` must not go by names.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "prefect", "server",
                                  "start", "mlflow", "server"], start_new_session=True)
    try:
        pids = {n: r["pid"] for n, r in records.items()}
        groups = {n: [p.pid for p in psutil.process_iter() if pgid(p.pid) == pid] for n, pid in pids.items()}
        assert len(groups["mlflow"]) >= 2  # `mlflow server` runs its uvicorn in a child: stopped with it
        result = kaizen("down", "-w", str(own.root))
        assert "prefect: stopped pid" in result.stdout and "mlflow: stopped pid" in result.stdout
        for name, members in groups.items():
            assert not any(psutil.pid_exists(pid) and pgid(pid) == pids[name] for pid in members), name
        assert bystander.poll() is None
        assert not list(own.servers_dir.glob("*.json"))
        state = json.loads(kaizen("status", "--json", "-w", str(own.root)).stdout)
        assert [(s["name"], s["url"], s["source"]) for s in state["servers"]] == [
            ("prefect", None, "embedded"), ("mlflow", None, "embedded")]
        assert own.tracking_uri.startswith("sqlite:///")  # the same store, read directly from SQLite now
        assert tracking.connect(own).get_run(run_id).info.run_id == run_id
        assert "not started by kaizen up" in kaizen("down", "-w", str(own.root)).stdout
    finally:
        bystander.kill()
        bystander.wait()
        kaizen("down", "-w", str(own.root), check=False)
    assert yaml.safe_load(own.params_file.read_text())["servers"]["host"] == "127.0.0.1"
