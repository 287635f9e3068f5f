"""The MLflow side of kaizen: the tracking store, model versions and their aliases, and batched logging.

Moving the `champion` alias is the single commit point of a promotion. What an iteration records (its tags
and metrics) is `tasks/record.py`'s.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaizen.tasks.faults import kill_point
from kaizen.tasks.workspace import Workspace, is_server

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"


@dataclass(frozen=True)
class ModelRef:
    version: str
    run_id: str
    tags: dict[str, str]


def connect(ws: Workspace):
    """A client on the workspace's tracking store, with its experiment created (artifacts beside the store)."""
    import mlflow
    from mlflow import MlflowClient

    # set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ, where Workspace.tracking_uri would
    # then take it for the user's own choice: every workspace opened later in this process would use this store.
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(ws.tracking_uri)
    mlflow.set_registry_uri(ws.tracking_uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    client = MlflowClient(ws.tracking_uri, ws.tracking_uri)
    if client.get_experiment_by_name(ws.settings.mlflow.experiment) is None:
        if is_server(ws.tracking_uri):
            # A tracking server stores artifacts itself (proxied): runs on other machines can write them too.
            client.create_experiment(ws.settings.mlflow.experiment)
        else:  # storage.artifacts (an object store: credentials from the environment), else a folder here
            root = ws.artifact_root
            if "://" not in root:
                Path(root).mkdir(parents=True, exist_ok=True)
                root = Path(root).as_uri()
            client.create_experiment(ws.settings.mlflow.experiment, artifact_location=root)
    return client


def experiment_id(client, ws: Workspace) -> str:
    return client.get_experiment_by_name(ws.settings.mlflow.experiment).experiment_id


def model_by_alias(client, name: str, alias: str) -> ModelRef | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return ModelRef(str(mv.version), mv.run_id, dict(mv.tags))


def model_version(client, name: str, version: str) -> ModelRef:
    mv = client.get_model_version(name, version)
    return ModelRef(str(mv.version), mv.run_id, dict(mv.tags))


def download_model(client, name: str, version: str, dest: Path) -> Path:
    """The model version's files as one folder for from_pretrained (weights, config and tokenizer)."""
    if (dest / "config.json").exists():
        return dest
    uri = client.get_model_version_download_uri(name, version)
    scratch = dest.with_name(dest.name + ".download")
    shutil.rmtree(scratch, ignore_errors=True)
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(scratch)))
    weights = next(local.rglob("config.json")).parent
    dest.mkdir(parents=True, exist_ok=True)
    for path in weights.iterdir():
        shutil.copy2(path, dest / path.name)
    tokenizer = next((p.parent for p in local.rglob("tokenizer.json")), None)
    if tokenizer and tokenizer != weights:
        for path in tokenizer.iterdir():
            shutil.copy2(path, dest / path.name)
    shutil.rmtree(scratch)
    return dest


def local_model(ws: Workspace, version: str) -> Path:
    """A registered version's files on local disk (cached: versions never change)."""
    client = connect(ws)
    return download_model(client, ws.settings.model.registered_name, version, ws.runs_dir / "models" / f"v{version}")


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """All of an iteration's numbers in one `log_batch` call, not one request per metric."""
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def set_tags(client, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def register_model(client, ws: Workspace, run_id: str, model_dir: Path, tags: dict[str, str]) -> ModelRef:
    """Log the model as a servable pyfunc (tasks/servable.py: safetensors weights, kaizen's prediction code, the
    trained max_length and normalisation), register it, tag it, alias it challenger."""
    import mlflow

    from kaizen.tasks import servable

    name = ws.settings.model.registered_name
    with mlflow.start_run(run_id=run_id):
        info = servable.log_classifier(model_dir, ws.settings)
    client.update_run(run_id, status="RUNNING")  # leaving `start_run` ended it; the iteration goes on
    kill_point("register:logged")
    if not _registered(client, name):
        client.create_registered_model(name, description="kaizen: the text classifier kept improving by the loop")
    mv = client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id)
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    return ModelRef(str(mv.version), run_id, tags)


def _registered(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def tag_version(client, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def move_champion(client, name: str, version: str) -> str | None:
    """Make `version` the champion; the former champion keeps `previous-champion`. Returns the former one."""
    former = model_by_alias(client, name, CHAMPION)
    if former is not None and former.version != version:
        client.set_registered_model_alias(name, PREVIOUS, former.version)
    client.set_registered_model_alias(name, CHAMPION, version)  # the commit point
    return former.version if former else None
