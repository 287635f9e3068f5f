"""The MLflow side of kaizen: the tracking store, one run per iteration, model versions and their aliases.

MLflow has no parent-model field and no tie to DVC, so kaizen adds both as tags with one naming scheme
(`kaizen.*`, see TAG). Moving the `champion` alias is the single commit point of a promotion.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.faults import kill_point
from tasks.workspace import CODE_ROOT, Workspace

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
# Lineage and decision tags, on the model version and on the iteration's run.
TAG = {
    "batch": "kaizen.batch",
    "batches_seen": "kaizen.batches_seen",
    "parent_version": "kaizen.parent_version",
    "data_version": "kaizen.data_version",
    "accepted_md5": "kaizen.accepted_md5",
    "code_commit": "kaizen.code_commit",
    "params_hash": "kaizen.params_hash",
    "flow_run_id": "kaizen.prefect_flow_run_id",
    "decision": "kaizen.decision",
    "reasons": "kaizen.decision_reasons",
}
PIP_REQUIREMENTS = ["torch", "transformers", "accelerate"]  # skips MLflow's slow, crash-prone inference


@dataclass(frozen=True)
class ModelRef:
    version: str
    run_id: str
    tags: dict[str, str]

    @property
    def batches_seen(self) -> list[str]:
        seen = self.tags.get(TAG["batches_seen"], "")
        return [b for b in seen.split(",") if b]


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
        if ws.tracking_uri.startswith(("http://", "https://")):
            # A tracking server stores artifacts itself (proxied): runs on other machines can write them too.
            client.create_experiment(ws.settings.mlflow.experiment)
        else:
            ws.artifacts_dir.mkdir(parents=True, exist_ok=True)
            client.create_experiment(ws.settings.mlflow.experiment, artifact_location=ws.artifacts_dir.as_uri())
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


def code_commit() -> str:
    """The git commit of kaizen's own code (with `+dirty` when it has uncommitted changes)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CODE_ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=CODE_ROOT,
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def params_hash(ws: Workspace) -> str:
    return hashlib.sha256(ws.params_file.read_bytes()).hexdigest()[:16]


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
    """Log the model with the transformers flavour (safetensors), register it, tag it, alias it challenger."""
    import mlflow
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    name = ws.settings.model.registered_name
    components = {"model": AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True),
                  "tokenizer": AutoTokenizer.from_pretrained(model_dir)}
    with mlflow.start_run(run_id=run_id):
        info = mlflow.transformers.log_model(
            components, name="model", task="text-classification", pip_requirements=PIP_REQUIREMENTS,
        )
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


@dataclass(frozen=True)
class Iteration:
    """One turn of the loop: its batch, its MLflow run, its data version and the champion it starts from."""

    batch_id: str
    run_id: str
    data_version: str
    accepted_md5: str
    champion: ModelRef | None
    batches: tuple[str, ...]  # every batch up to and including this one
    flow_run_id: str
    loop_run_id: str  # the parent run that groups the workspace's iterations


def start_iteration(ws: Workspace, batch_id: str, batches: list[str], data_version, flow_run_id: str = "") -> Iteration:
    """Open the iteration's MLflow run with its params, lineage tags and the dvc.lock that names its data."""
    client = connect(ws)
    name = ws.settings.model.registered_name
    from tasks.lineage import loop_run_id

    champion = model_by_alias(client, name, CHAMPION)
    loop_run = loop_run_id(client, experiment_id(client, ws))
    run = client.create_run(experiment_id(client, ws), run_name=f"iteration-{batch_id}", tags={
        "mlflow.parentRunId": loop_run,
        TAG["batch"]: batch_id, TAG["data_version"]: data_version.prepared_md5,
        TAG["accepted_md5"]: data_version.accepted_md5, TAG["parent_version"]: champion.version if champion else "",
        TAG["code_commit"]: code_commit(), TAG["params_hash"]: params_hash(ws), TAG["flow_run_id"]: flow_run_id,
        "mlflow.runName": f"iteration-{batch_id}",
    })
    flat = ws.settings.model_dump(mode="json")
    log_params(client, run.info.run_id, {f"{section}.{k}": v for section, values in flat.items()
                                         for k, v in values.items()})
    client.log_text(run.info.run_id, data_version.lock, "data/dvc.lock")
    return Iteration(batch_id, run.info.run_id, data_version.prepared_md5, data_version.accepted_md5, champion,
                     tuple(batches), flow_run_id, loop_run)
