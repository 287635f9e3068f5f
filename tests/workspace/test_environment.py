"""tasks.workspace.environment: a command's own environment (the user's values win) and the one way every child
process's environment is built."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kaizen.tasks.workspace import environment
from kaizen.tasks.workspace.environment import OFFLINE_ENV, apply_environment, child_environment
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.members import template
from kaizen.tasks.workspace.settings import load_settings


def _workspace(root: Path) -> Workspace:
    return Workspace(root, load_settings(template("params.yaml")))


def test_a_command_applies_the_workspaces_settings_and_the_users_own_win(tmp_path, monkeypatch) -> None:
    ws = _workspace(tmp_path)
    for key in (*OFFLINE_ENV, "PREFECT_HOME", "PREFECT_API_URL", "PREFECT_RUNNER_POLL_FREQUENCY",
                "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                environment.HEARTBEAT, environment.SET_BY_KAIZEN, *environment.tracking_retry_env(ws)):
        monkeypatch.setenv(key, "")  # recorded, so that what apply_environment sets is undone after the test
        monkeypatch.delenv(key)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "9")
    apply_environment(ws)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["PREFECT_HOME"] == str(ws.prefect_home) and ws.prefect_home.is_dir()
    assert "PREFECT_API_URL" not in os.environ  # no server of `kaizen up` here: Prefect's temporary one
    assert os.environ[environment.HEARTBEAT] == str(ws.settings.operations.heartbeat_seconds)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "9"  # the user's
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == str(ws.settings.operations.tracking_retries)


def test_a_child_inherits_this_environment_offline_with_this_interpreters_tools_first(tmp_path, monkeypatch) -> None:
    ws = _workspace(tmp_path)
    monkeypatch.setenv("PGPASSWORD", "from-the-user")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's own choice stands
    monkeypatch.delenv("DVC_NO_ANALYTICS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = child_environment(ws)
    assert env["PGPASSWORD"] == "from-the-user" and env["HF_HUB_OFFLINE"] == "0" and env["DVC_NO_ANALYTICS"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert "MLFLOW_TRACKING_URI" not in env
    served = child_environment(ws, tracking=True, drop=("PGPASSWORD",), extra={"KAIZEN_KILL_ALSO": "12"})
    assert served["MLFLOW_TRACKING_URI"] == served["MLFLOW_REGISTRY_URI"] == ws.tracking_uri
    assert "PGPASSWORD" not in served and served["KAIZEN_KILL_ALSO"] == "12"
    assert "PGPASSWORD" in os.environ and "KAIZEN_KILL_ALSO" not in os.environ  # this process's own: untouched


def test_a_run_started_elsewhere_gets_only_kaizens_settings(tmp_path, monkeypatch) -> None:
    ws = _workspace(tmp_path)
    monkeypatch.setenv("PGPASSWORD", "from-the-user")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert child_environment(ws, inherit=False) == {
        **OFFLINE_ENV, environment.HEARTBEAT: str(ws.settings.operations.heartbeat_seconds),
        "KAIZEN_WORKSPACE_ID": ws.workspace_id, "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert "MLFLOW_TRACKING_URI" not in child_environment(ws, inherit=False)


def test_what_a_block_does_to_kept_variables_is_undone(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "the user's")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with environment.kept("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = "sqlite:///elsewhere.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "the user's" and "MLFLOW_REGISTRY_URI" not in os.environ
