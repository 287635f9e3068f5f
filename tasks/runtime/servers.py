"""Local servers for one workspace: a Prefect server (SQLite) and an MLflow tracking server (on params.yaml's
`storage`: PostgreSQL and an object store, or the workspace's own SQLite store and artifact folder; none
when `storage.tracking_uri` names a shared server), on the loopback address from params.yaml `servers`.

`start` launches each one in its own session and records its PID, the process's start time, its address and
its log under `.kaizen/servers/`; `stop` ends exactly those process groups, checking the start time first so
that a PID the system has since given to another program is never signalled.
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
from dataclasses import asdict, dataclass
from pathlib import Path

from kaizen.tasks.runtime import security
from kaizen.tasks.workspace.environment import child_environment
from kaizen.tasks.workspace.layout import Workspace, is_server
from kaizen.tasks.workspace.redact import redact

SERVERS = ("prefect", "mlflow")
_temporary: list[int] = []  # the temporary Prefect server this process started and watches, while it runs
TEMPORARY_SERVER_MARK = "prefect.server.api.server:create_app"  # in the command line of Prefect's temporary server
# A server of the workspace serves its own stores: never the ones this process was pointed at.
NOT_FOR_SERVERS = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")
# MLflow's server without its job runner and task consumers, on one worker: without these, `mlflow server` (and
# `mlflow ui`, the same server) starts about ten processes and 2.4 GB. `kaizen up` and `kaizen ui` both use them.
LEAN_MLFLOW_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
LEAN_MLFLOW_ARGS = ("--workers", "1")


class ServerError(RuntimeError):
    """A server would not start or stop; the message says which, why, and where its log is."""


@dataclass(frozen=True)
class ServerState:
    name: str
    url: str | None  # the UI and API base address; None: no server (Prefect runs embedded, MLflow on SQLite)
    answers: bool  # its health endpoint said so just now
    pid: int | None  # set when `kaizen up` started it
    log: str | None
    source: str  # "kaizen up", "params.yaml" (storage.tracking_uri), "environment" or "embedded"

    def as_dict(self) -> dict:
        return asdict(self)


def health_url(name: str, url: str) -> str:
    return f"{url}/api/health" if name == "prefect" else f"{url}/health"


def answers(name: str, url: str) -> bool:
    """Whether the server's health endpoint says it is up (connection refused or a timeout: it is not)."""
    import httpx

    try:
        response = httpx.get(health_url(name, url), timeout=3.0)
    except httpx.TransportError:
        return False
    return response.status_code == 200


def mlflow_command(ws: Workspace, verb: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """`mlflow <verb> <args>` (`server` for `kaizen up`, `ui` for `kaizen ui`) run lean, and its environment."""
    env = child_environment(ws, drop=NOT_FOR_SERVERS, extra=LEAN_MLFLOW_ENV)
    return [str(Path(sys.executable).parent / "mlflow"), verb, *args, *LEAN_MLFLOW_ARGS], env


def ui_command(ws: Workspace, port: int | None = None) -> tuple[list[str], dict[str, str]]:
    """`kaizen ui`: the MLflow UI on the workspace's tracking store (a database, not a server), on 127.0.0.1."""
    return mlflow_command(ws, "ui", "--backend-store-uri", ws.tracking_uri, "--host", "127.0.0.1",
                          "--port", str(port or ws.settings.servers.mlflow_port))


def _command(ws: Workspace, name: str) -> tuple[list[str], dict[str, str], str]:
    """The command line, the environment and the address of one server."""
    cfg = ws.settings.servers
    port = cfg.prefect_port if name == "prefect" else cfg.mlflow_port
    if name == "prefect":
        env = child_environment(ws, drop=NOT_FOR_SERVERS, extra={
            "PREFECT_HOME": str(ws.prefect_home),
            # Its own database: the embedded server of `kaizen run` keeps its own in PREFECT_HOME.
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{ws.servers_dir / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": str(cfg.slot_wait_seconds),
        })
        cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", cfg.host, "--port", str(port)]
    else:
        # storage.tracking_uri / storage.artifacts (PostgreSQL, S3...) or the workspace's own files; the
        # credentials they need (PGPASSWORD, AWS_...) come with this environment.
        cmd, env = mlflow_command(ws, "server", "--backend-store-uri", ws.backend_store_uri,
                                  "--artifacts-destination", ws.artifact_root, "--host", cfg.host, "--port", str(port))
    url = f"http://{cfg.host}:{port}"
    args, secured = security.hardening(ws, name, url)  # CORS to its own address; authentication if set
    env.update(secured)
    return cmd + args, env, url


def _record_file(ws: Workspace, name: str) -> Path:
    return ws.servers_dir / f"{name}.json"


def _read_record(ws: Workspace, name: str) -> dict | None:
    path = _record_file(ws, name)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _alive(record: dict) -> bool:
    """The recorded process still runs and is the same process (same start time), not a reused PID."""
    import psutil

    try:
        process = psutil.Process(record["pid"])
        # A server that exited stays a zombie until its parent reaps it: it is not running.
        return abs(process.create_time() - record["create_time"]) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex((host, port)) == 0


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _launch(ws: Workspace, name: str) -> dict:
    import psutil

    cmd, env, url = _command(ws, name)
    port = int(url.rsplit(":", 1)[1])
    if _port_taken(ws.settings.servers.host, port):
        raise ServerError(f"{name}: port {port} on {ws.settings.servers.host} is taken by another program; "
                          f"choose another in params.yaml (servers.{name}_port)")
    ws.servers_dir.mkdir(parents=True, exist_ok=True)
    if "://" not in ws.artifact_root:
        Path(ws.artifact_root).mkdir(parents=True, exist_ok=True)
    log = ws.servers_dir / f"{name}.log"
    with open(log, "ab") as out:
        # A session of its own: the server's children share its process group, which `stop` signals whole.
        proc = subprocess.Popen(cmd, env=env, cwd=ws.root, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    record = {"name": name, "url": url, "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
              "log": str(log), "command": cmd}
    _record_file(ws, name).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def wanted(ws: Workspace) -> tuple[str, ...]:
    """The servers `kaizen up` runs here: not MLflow when storage.tracking_uri names a shared tracking server."""
    return tuple(n for n in SERVERS if n != "mlflow" or not is_server(ws.settings.storage.tracking_uri))


def start(ws: Workspace) -> list[ServerState]:
    """Start whichever of the servers is not already running for this workspace; wait until they answer.
    If one fails, the ones started by this call are stopped again and the error carries the log's tail."""
    try:
        security.check(ws)
    except security.Unprotected as exc:
        raise ServerError(str(exc)) from exc
    started: list[str] = []
    records: dict[str, dict] = {}
    try:
        for name in wanted(ws):
            record = _read_record(ws, name)
            if record is not None and _alive(record):
                records[name] = record
                continue
            _record_file(ws, name).unlink(missing_ok=True)  # a server that died: start it again
            records[name] = _launch(ws, name)
            started.append(name)
        deadline = time.monotonic() + ws.settings.servers.startup_timeout_seconds
        waiting = set(wanted(ws))
        while waiting:
            for name in sorted(waiting):
                if answers(name, records[name]["url"]):
                    waiting.discard(name)
                elif not _alive(records[name]):
                    raise ServerError(f"{name} server exited while starting; its log ({records[name]['log']}) "
                                      f"ends:\n{_log_tail(Path(records[name]['log']))}")
            if waiting and time.monotonic() > deadline:
                raise ServerError(f"{', '.join(sorted(waiting))} did not answer within "
                                  f"{ws.settings.servers.startup_timeout_seconds} s (servers.startup_timeout_seconds)")
            if waiting:
                time.sleep(0.5)
    except BaseException:
        for name in started:
            _stop_one(ws, name)
        raise
    return status(ws)


def _stop_one(ws: Workspace, name: str) -> str:
    """Stop one recorded server's process group: SIGTERM, then SIGKILL after 20 s. Returns what happened."""
    record = _read_record(ws, name)
    if record is None:
        return "not started by kaizen up"
    if not _alive(record):
        _record_file(ws, name).unlink()
        return f"pid {record['pid']} had already exited"
    import psutil

    group = record["pid"]  # started with its own session: its process group id is its pid
    members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == group]
    os.killpg(group, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=20)
    if alive:
        os.killpg(group, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
    _record_file(ws, name).unlink()
    return f"stopped pid {record['pid']}" + (" (killed: it ignored SIGTERM for 20 s)" if alive else "")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@contextmanager
def temporary_prefect_server() -> Iterator[None]:
    """Without a Prefect server to use (`kaizen up`, PREFECT_API_URL), a flow runs on Prefect's temporary local
    server, a child process. It is started here, before the flows, and watched by tasks/runtime/watchdog.py, which stops
    it when this process dies without stopping it (SIGKILL, the OOM killer): it never outlives its run."""
    if os.environ.get("PREFECT_API_URL") or _temporary:  # a real server, or the one an outer call started
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    # The watchdog first: the server's process exists seconds before it answers.
    watchdog = subprocess.Popen([sys.executable, "-m", "kaizen.tasks.runtime.watchdog", TEMPORARY_SERVER_MARK],
                                stdin=subprocess.DEVNULL)
    server = SubprocessASGIServer()  # the instance every Prefect client of this process then uses
    try:
        server.start()
        assert server.server_process is not None, "start() runs the server's process (or it already ran)"
        _temporary.append(server.server_process.pid)
        yield
    finally:
        _temporary.clear()
        # The flows' last logs are still queued for the API: sent now, not at exit to a server already gone
        # (Prefect then prints "--- Error logging to API ---" under the demo's table).
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
        server.stop()
        watchdog.terminate()
        watchdog.wait(timeout=30)


def running(ws: Workspace) -> list[str]:
    """The servers `kaizen up` started for this workspace that still run."""
    return [name for name in SERVERS if (record := _read_record(ws, name)) is not None and _alive(record)]


def stop(ws: Workspace) -> dict[str, str]:
    """Stop exactly the servers `kaizen up` started for this workspace, and forget them."""
    return {name: _stop_one(ws, name) for name in SERVERS}


def status(ws: Workspace) -> list[ServerState]:
    """Each server's address, whether it answers, and who runs it."""
    states = []
    for name in SERVERS:
        record = _read_record(ws, name)
        if name == "prefect":
            api = ws.prefect_api_url
            url = api.removesuffix("/").removesuffix("/api") if api else None
        else:
            url = ws.tracking_uri if is_server(ws.tracking_uri) else None
        ours = record if url is not None and record is not None and record["url"] == url else None  # kaizen up's
        source = "embedded" if url is None else (
            "kaizen up" if ours is not None else
            "params.yaml" if url == ws.settings.storage.tracking_uri else "environment")
        states.append(ServerState(  # shown and printed: credentials in a URL masked
            name=name, url=redact(url) if url else None, answers=answers(name, url) if url else False,
            pid=ours["pid"] if ours is not None else None,
            log=ours["log"] if ours is not None else None, source=source))
    return states
