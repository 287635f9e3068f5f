"""Workspaces for the tests: where the repository is, the settings that keep the tiny model fast (FAST) and the
gate wide open (OPEN_GATE), writing params.yaml, a new workspace whose tracking store starts migrated, a workspace
for the tests on real servers, and MLflow's retry settings cleared around a test."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.members import init_workspace
from kaizen.tasks.workspace.settings import write_overrides
from tests.support.processes import free_ports

REPO = Path(__file__).resolve().parents[2]  # the kaizen checkout the tests run from

# Settings that let the tiny model learn something in seconds and keep every test small. It has to learn
# enough not to answer one label for every row: a constant predictor is never promoted.
FAST = {
    "train.learning_rate": 5e-3, "train.epochs": 3, "train.bootstrap_epochs": 6, "train.batch_size": 8,
    "model.max_length": 32, "drift.max_reference_rows": 400, "data.min_batch_rows": 20, "data.settle_seconds": 0,
    "gate.min_test_rows": 5,  # the small batches of the tests still get judged
}

# The gate and the label check wide open, for tests of the loop's mechanics rather than its verdicts.
OPEN_GATE = {"gate.min_score": 0.0, "gate.min_improvement": -1.0, "gate.max_regression": 1.0,
             "gate.improvement_alpha": 1.0, "trust.min_kappa": -1.0, "trust.max_confident_issues": 1.0}


def write_params(root: Path, overrides: dict) -> None:
    write_overrides(root / "params.yaml", overrides)


@functools.cache
def migrated_tracking_store() -> Path:
    """An empty MLflow SQLite store made by MLflow once per test process. Each new store otherwise runs MLflow's
    database migrations, 3 to 4 CPU-seconds, dozens of times a session."""
    from mlflow import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="kaizen-tracking-template-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def seed_tracking_store(database: Path) -> None:
    """A new SQLite tracking store at `database` (none there yet) as a copy of the migrated empty one."""
    if not database.exists():
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_tracking_store(), database)


def new_workspace(root: Path, settings: dict[str, str] | None = None, join: str | None = None) -> Workspace:
    """init_workspace, its SQLite tracking store (when it has one) a copy of the migrated empty store."""
    ws = init_workspace(root, settings, join)
    if ws.backend_store_uri == f"sqlite:///{ws.mlflow_db}":
        seed_tracking_store(ws.mlflow_db)
    return ws


def make_ws(root: Path, tiny_backbone: Path, **overrides) -> Workspace:
    """A workspace for `kaizen up` and its servers: FAST, OPEN_GATE, short polls, free server ports."""
    new_workspace(root)
    prefect_port, mlflow_port = free_ports(2)
    # Both crons once a year: the loop's hourly run raced a test's event-triggered runs at the top of the hour (it
    # took the batch the follow-up run was waiting for), and the traffic watch's only costs CPU (its own tests run it).
    write_params(root, {**FAST, **OPEN_GATE, "model.backbone": str(tiny_backbone), "schedule.poll_seconds": 2,
                        "watch.cron": "0 0 1 1 *", "schedule.cron": "0 0 1 1 *",
                        "servers.slot_wait_seconds": 2, "servers.prefect_port": prefect_port,
                        "servers.mlflow_port": mlflow_port, **overrides})
    return Workspace.open(root)


def clear_tracking_retries(monkeypatch, ws) -> None:
    """The MLflow retry settings that connect puts in os.environ (tasks/workspace/environment.py), cleared for this test
    and restored after it, so that they neither come from an earlier test nor leak into a later one."""
    from kaizen.tasks.workspace import environment

    for key in (*environment.tracking_retry_env(ws), environment.SET_BY_KAIZEN):
        monkeypatch.delenv(key, raising=False)
