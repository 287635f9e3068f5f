"""tasks.servers: the temporary Prefect server of a `kaizen run` never outlives it, and the test session itself
leaves no process behind (tests/conftest.py checks that at the end)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from kaizen.tasks.runtime.servers import TEMPORARY_SERVER_MARK
from tests.conftest import SESSION_MARK, leftover_processes, orphans_of_ended_sessions, pytest_sessionstart
from tests.support.files import land, sample
from tests.support.processes import KAIZEN, cli_env, stop, wait_until


def temporary_servers(parent: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in parent.children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:  # exited meanwhile
            continue
        if TEMPORARY_SERVER_MARK in line and "uvicorn" in line:
            found.append(child)
    return found


def test_a_kaizen_run_killed_with_sigkill_leaves_no_temporary_server(make_workspace, domains) -> None:
    ws = make_workspace()
    land(ws, "movies.csv", sample(domains["movies"], 40, seed=50))
    env = {**cli_env(), "PREFECT_HOME": str(ws.state_dir / "prefect-run")}
    run = subprocess.Popen([KAIZEN, "run", "-w", str(ws.root)], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(run.pid)
        (server,) = wait_until("the run's temporary Prefect server", lambda: temporary_servers(parent), 180, every=0.5)
        time.sleep(1)  # starting: it does not answer yet

        os.kill(run.pid, signal.SIGKILL)  # the OOM killer: this process only, no chance to clean up
        run.wait()

        assert wait_until("the orphaned server to stop", lambda: not server.is_running(), 30, every=0.5)
    finally:
        stop(run, signal.SIGKILL)


FLOW_THAT_LOGS = """
from prefect import flow, get_run_logger
from kaizen.tasks.runtime.servers import temporary_prefect_server

@flow
def talk():
    for i in range(300):
        get_run_logger().info("line %d", i)

with temporary_prefect_server():
    talk()
"""


def test_a_flows_last_logs_reach_the_temporary_server_before_it_stops(tmp_path) -> None:
    """Without the drain, the logs still queued reach for a server already gone at exit, and Prefect prints an
    error under the demo's table."""
    env = {**cli_env(), "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-c", FLOW_THAT_LOGS], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "line 299" in done.stdout  # the flow ran and logged
    assert "Error logging to API" not in done.stdout, done.stdout[-2000:]


def test_the_session_check_finds_a_process_a_test_left_running() -> None:
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert left.pid in {p.pid for p in leftover_processes()}
        stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                    env={k: v for k, v in os.environ.items() if k != SESSION_MARK[0]})
        try:
            assert stranger.pid not in {p.pid for p in leftover_processes()}  # not ours: never touched
        finally:
            stranger.kill()
            stranger.wait()
    finally:
        left.kill()
        left.wait()


def test_what_a_killed_session_left_running_is_stopped_when_the_next_one_starts(capsys) -> None:
    """A session killed by `timeout` runs no teardown: its servers would run on. The next session stops them,
    and only them: not this session's processes, nor those of another session still running."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]

    def started(mark: str) -> subprocess.Popen:
        return subprocess.Popen(sleeper, env={**os.environ, SESSION_MARK[0]: mark}, start_new_session=True)

    orphan = started("999999999-1.00-kaizen-tests-killed")  # no such pid: that session's pytest is gone
    here = f"{os.getpid()}-{psutil.Process().create_time():.2f}"
    concurrent = started(f"{here}-kaizen-tests-another")  # its pytest (this process) still runs
    reused = started(f"{os.getpid()}-1.00-kaizen-tests-before")  # this pid, but a process that started long ago
    mine = started(SESSION_MARK[1])
    try:
        found = {p.pid for p in orphans_of_ended_sessions()}
        assert {orphan.pid, reused.pid} <= found and not {concurrent.pid, mine.pid} & found
        pytest_sessionstart(None)
        assert orphan.wait(timeout=10) == reused.wait(timeout=10) == -signal.SIGKILL
        assert f"pid {orphan.pid}: " in capsys.readouterr().out
        assert concurrent.poll() is None and mine.poll() is None
    finally:
        for process in (orphan, concurrent, reused, mine):
            process.kill()
            process.wait()


# --- open doors -----------------------------------------------------------------------------------------

CREDENTIALS = {"PREFECT_API_AUTH_STRING": "kaizen:prefect-secret-4711",
               "MLFLOW_TRACKING_USERNAME": "kaizen-admin", "MLFLOW_TRACKING_PASSWORD": "mlflow-secret-4711"}


def test_up_refuses_to_open_the_servers_to_the_network_without_authentication(tmp_path, tiny_backbone) -> None:
    from tests.support.processes import kaizen
    from tests.support.workspaces import make_ws

    ws = make_ws(tmp_path / "open", tiny_backbone, **{"servers.host": "0.0.0.0"})
    result = kaizen("up", "-w", str(ws.root), check=False)
    assert result.returncode == 1 and "not a loopback address" in result.stdout, result.stdout
    assert "PREFECT_API_AUTH_STRING" in result.stdout and "MLFLOW_TRACKING_PASSWORD" in result.stdout
    assert not list(ws.servers_dir.glob("*.json"))  # nothing started


def test_up_with_credentials_lets_in_only_its_users_and_its_own_origin(tmp_path, tiny_backbone) -> None:
    import json

    import httpx

    from tests.support.processes import kaizen
    from tests.support.workspaces import make_ws

    ws = make_ws(tmp_path / "locked", tiny_backbone)
    env = {**cli_env(), **CREDENTIALS}
    kaizen("up", "-w", str(ws.root), env=env, timeout=600)
    try:
        prefect_url, mlflow_url = ws.recorded_url("prefect"), ws.recorded_url("mlflow")
        flows = f"{prefect_url}/api/flows/filter"
        assert httpx.post(flows, json={}).status_code == 401
        assert httpx.post(flows, json={}, auth=tuple(CREDENTIALS["PREFECT_API_AUTH_STRING"].split(":"))).status_code == 200
        experiments = f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert httpx.get(experiments).status_code == 401
        mine = (CREDENTIALS["MLFLOW_TRACKING_USERNAME"], CREDENTIALS["MLFLOW_TRACKING_PASSWORD"])
        assert httpx.get(experiments, auth=mine).status_code == 200
        assert httpx.get(experiments, auth=(mine[0], "guessed-password")).status_code == 401
        for url, own in ((flows, prefect_url), (experiments, mlflow_url)):  # CORS: not `*`, only its own address
            evil = httpx.options(url, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
            assert evil.headers.get("access-control-allow-origin") in (None, ""), (url, evil.headers)
            ok = httpx.options(url, headers={"Origin": own, "Access-Control-Request-Method": "POST"})
            assert ok.headers.get("access-control-allow-origin") == own, (url, ok.headers)
        # A tracking URI that carries the credentials works, and is never shown with them.
        password = CREDENTIALS["MLFLOW_TRACKING_PASSWORD"]
        with_uri = {**env, "MLFLOW_TRACKING_URI": mlflow_url.replace("://", f"://{mine[0]}:{password}@")}
        shown = kaizen("status", "--json", "-w", str(ws.root), env=with_uri).stdout
        mlflow = next(s for s in json.loads(shown)["servers"] if s["name"] == "mlflow")
        assert mlflow["answers"] and mlflow["url"].startswith(f"http://{mine[0]}:***@") and password not in shown
    finally:
        kaizen("down", "-w", str(ws.root), env=env)


def test_kaizen_ui_runs_mlflow_as_lean_as_the_server_of_kaizen_up(tmp_path, monkeypatch) -> None:
    """`kaizen ui` execs `mlflow ui` with the settings of `kaizen up`'s MLflow server: one worker, and neither
    MLflow's job runner nor its task consumers (about ten processes and 2.4 GB without them)."""
    from typer.testing import CliRunner

    from kaizen.flows.cli import app
    from kaizen.flows.cli import inspect as inspect_cli
    from kaizen.tasks.runtime import servers
    from kaizen.tasks.workspace.layout import Workspace
    from kaizen.tasks.workspace.members import template
    from kaizen.tasks.workspace.settings import load_settings

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")  # inherited from a shell: not for these servers
    ws = Workspace(tmp_path, load_settings(template("params.yaml")))
    execs = []
    monkeypatch.setattr(inspect_cli, "open_workspace", lambda path: ws)
    monkeypatch.setattr(os, "execve", lambda path, argv, env: execs.append((path, argv, env)))
    result = CliRunner().invoke(app, ["ui", "-w", str(tmp_path), "--port", "5123"])
    assert result.exit_code == 0, result.output
    ((path, ui, ui_env),) = execs
    up, up_env, _ = servers._command(ws, "mlflow")
    assert path == ui[0] == up[0] and (ui[1], up[1]) == ("ui", "server")
    for argv, env in ((ui, ui_env), (up, up_env)):
        assert argv[argv.index("--workers") + 1] == "1"
        assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
        assert env["HF_HUB_OFFLINE"] == "1" and "MLFLOW_TRACKING_URI" not in env
    assert ui[ui.index("--backend-store-uri") + 1] == ws.tracking_uri == f"sqlite:///{ws.mlflow_db}"
    assert (ui[ui.index("--host") + 1], ui[ui.index("--port") + 1]) == ("127.0.0.1", "5123")
