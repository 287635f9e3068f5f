"""The environment: what kaizen puts in its own process's environment, and what it gives the processes it starts.

Two functions, each the one place for its half:
- `apply_environment(ws)`, once at the start of a command (before prefect or mlflow is imported): every library
  offline and without telemetry, Prefect's home inside the workspace, the Prefect server `kaizen up` started,
  and MLflow's retry settings from `operations`. A value the user set wins, always.
- `child_environment(ws)`, for every process kaizen starts (a server, DVC, the training job, `mlflow models
  serve`, a flow run a worker starts): built from this process's environment, or from nothing but kaizen's own
  settings for a process that runs elsewhere.

Variables that are the user's input are read where they are used: MLFLOW_TRACKING_URI, PREFECT_API_URL and
KAIZEN_WORKSPACE_ID (tasks/workspace/layout.py), credentials (tasks/runtime/security.py), KAIZEN_KILL_AT
(tasks/workspace/faults.py), `alerts.webhook_url`'s `env:NAME`, and torch's RANK / WORLD_SIZE in the training job.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from kaizen.tasks.workspace.layout import Workspace

# Every process of the loop, wherever it runs: offline, and no telemetry.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
HEARTBEAT = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"  # how often a deployed run tells the server it lives (tasks/runtime/zombies.py)
# The MLflow settings kaizen put in the environment, recorded there too: a child process inherits both, so it
# tells them from the user's own and applies its own workspace's values (params.yaml may have changed since).
SET_BY_KAIZEN = "KAIZEN_MLFLOW_SETTINGS"


def apply_environment(ws: Workspace) -> None:
    """Keep every library offline and inside the workspace, and MLflow's requests retried as `operations` says;
    call once at the start of a command, before importing prefect or mlflow. A value the user set wins."""
    defaults = {
        **OFFLINE_ENV,
        "PREFECT_HOME": str(ws.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_RUNNER_POLL_FREQUENCY": str(ws.settings.schedule.poll_seconds),
        HEARTBEAT: str(ws.settings.operations.heartbeat_seconds),  # served runs inherit it
    }
    if ws.prefect_api_url:  # a real server: the one `kaizen up` started, unless PREFECT_API_URL names another
        defaults["PREFECT_API_URL"] = ws.prefect_api_url
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    apply_tracking_retries(ws)


def tracking_retry_env(ws: Workspace) -> dict[str, str]:
    """MLflow's own retry settings for requests to a tracking server, from `operations`: the loop's one retry
    layer (no Prefect retries on top), so every MLflow call, inside training and the checks too, rides out a
    tracking server that restarts, and gives up after a bounded wait (tracking.retry_wait_seconds)."""
    ops = ws.settings.operations
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(ops.tracking_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(ops.tracking_backoff_seconds),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(ops.tracking_timeout_seconds)}


def apply_tracking_retries(ws: Workspace) -> None:
    """Put `tracking_retry_env` in os.environ, where MLflow reads it at every request (apply_environment, and
    tracking.connect for whichever workspace it connects to). A value the user set wins; one kaizen set, in this
    process or in the one that started it, is replaced."""
    ours = json.loads(os.environ.get(SET_BY_KAIZEN) or "{}")
    for key, value in tracking_retry_env(ws).items():
        if os.environ.get(key, ours.get(key)) == ours.get(key):  # unset, or still kaizen's
            os.environ[key] = ours[key] = value
    os.environ[SET_BY_KAIZEN] = json.dumps(ours, sort_keys=True)


def child_environment(ws: Workspace | None, *, inherit: bool = True, tracking: bool = False,
                      drop: Iterable[str] = (), extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process kaizen starts.

    `inherit` (a process on this machine): this process's environment, with what apply_environment put there,
    the user's own settings and the credentials the stores need; the offline settings where still unset; and
    this interpreter's bin/ first on PATH, so that what the child starts by name (`uvicorn` for `mlflow models
    serve`, the tools of DVC's stages) comes from kaizen's environment, activated or not.
    Not `inherit` (a flow run a worker starts, on another machine or in a container: it does not get the shell of
    `kaizen deploy`): only kaizen's own settings, the workspace's id, and MLFLOW_TRACKING_URI when the user set
    it (else the run finds the store from the workspace, as here).
    `tracking`: the workspace's tracking store as MLflow's tracking and registry URI. Then the variables in
    `drop` are removed and `extra` is set."""
    if inherit:
        env = dict(os.environ)
        for key, value in OFFLINE_ENV.items():
            env.setdefault(key, value)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    else:
        if ws is None:
            raise ValueError("child_environment: a process that does not inherit this one's environment gets the "
                             "workspace's settings, so it needs the workspace")
        env = {**OFFLINE_ENV, HEARTBEAT: str(ws.settings.operations.heartbeat_seconds),
               "KAIZEN_WORKSPACE_ID": ws.workspace_id}
        if user_store := os.environ.get("MLFLOW_TRACKING_URI"):
            env["MLFLOW_TRACKING_URI"] = user_store
    if tracking:
        if ws is None:
            raise ValueError("child_environment: tracking=True sets the workspace's tracking store, so it needs the "
                             "workspace")
        env.update(MLFLOW_TRACKING_URI=ws.tracking_uri, MLFLOW_REGISTRY_URI=ws.tracking_uri)
    for key in drop:
        env.pop(key, None)
    env.update(extra or {})
    return env


@contextmanager
def kept(*keys: str) -> Iterator[None]:
    """Whatever the block does to these variables of os.environ is undone after it (tracking.connect: MLflow's
    set_tracking_uri writes MLFLOW_TRACKING_URI there, where Workspace.tracking_uri would then take it for the
    user's own choice, and every workspace opened later in this process would use that store)."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
