"""Helpers of the tests that start real servers and real `kaizen` commands (tests/test_production.py): each
command runs in a subprocess with an environment of its own, and every process a test starts is stopped by
its process group, never by name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kaizen.tasks.workspace.layout import Workspace, init_workspace
from tests.helpers import FAST, OPEN_GATE, write_params

KAIZEN = str(Path(sys.executable).parent / "kaizen")
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
    write_params(root, {**FAST, **OPEN_GATE, "model.backbone": str(tiny_backbone), "schedule.poll_seconds": 2,
                        "servers.slot_wait_seconds": 2, "servers.prefect_port": free_port(),
                        "servers.mlflow_port": free_port(), **overrides})
    return Workspace.open(root)


def land(folder: Path, name: str, frame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / name, index=False)
    return folder / name


def pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def run_filter(run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))


def deployment_with_trigger(client, ws: Workspace):
    """The workspace's deployment once its trigger's automation exists too; None before."""
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = client.read_deployment_by_name(f"kaizen-iteration/{ws.workspace_id}")
    except ObjectNotFound:
        return None
    return deployment if client.read_resource_related_automations(f"prefect.deployment.{deployment.id}") else None


def retire(pool: dict) -> None:
    """Stop the worker and delete its deployment: no more minutely runs for the rest of the session."""
    stop(pool["worker"])
    if not pool.get("retired"):
        with prefect(pool["api"]) as client:
            client.delete_deployment(client.read_deployment_by_name(f"kaizen-iteration/{pool['ws'].workspace_id}").id)
        pool["retired"] = True
