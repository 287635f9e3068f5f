"""serving: the champion loaded for kaizen (`kaizen predict`, `kaizen score`) exactly as MLflow serves it, and
the command that `kaizen serve-model` runs: MLflow's scoring app under uvicorn, recording what it answers, behind
basic auth when credentials are set (tasks/serving/guarded.py).

How a version is logged so that this holds is tasks/model/servable.py's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaizen.tasks.model.servable import TEXT, model_config
from kaizen.tasks.registry import tracking
from kaizen.tasks.runtime import security
from kaizen.tasks.serving import guarded
from kaizen.tasks.workspace.environment import child_environment
from kaizen.tasks.workspace.layout import Workspace


class ServingError(RuntimeError):
    """No model to serve or predict with, as asked; the message says why."""


@dataclass
class Classifier:
    """A registered version, loaded as MLflow loads it for serving."""

    version: str
    model: Any  # mlflow.pyfunc.PyFuncModel, or the same TextClassifier on an older version's weights
    labels: tuple[str, ...]  # the version's own, in class-id order: its `p_<label>` columns

    def predict(self, texts: list) -> Any:
        """`prediction`, `p_<label>` and `reason` per text (a pandas DataFrame, in order)."""
        import pandas as pd

        return self.model.predict(pd.DataFrame({TEXT: pd.Series(texts, dtype=object)}))


def version_dir(ws: Workspace, version: str) -> Path:
    """A registered version's MLflow model folder on local disk, cached (versions never change): downloaded whole
    by one process or another, never a mix of two (tracking.download_whole)."""
    dest = ws.runs_dir / "served" / f"v{version}"
    if dest.is_dir():
        return dest
    import mlflow

    tracking.connect(ws)  # models:/ URIs resolve against the workspace's registry
    uri = f"models:/{ws.settings.model.registered_name}/{version}"

    def download(partial: Path) -> Path:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(partial / "model"),
                                                        tracking_uri=ws.tracking_uri))

    return tracking.download_whole(dest, download)


def load_version(ws: Workspace, version: str) -> Classifier:
    """Load a registered version with `mlflow.pyfunc.load_model` on `train.device`, with its own labels (those it
    was logged with, whatever `data.labels` says now). A version logged before kaizen served its models (the
    transformers flavour) is read from its weights by the same TextClassifier, with this workspace's max_length
    and normalisation."""
    import mlflow
    from mlflow.models import Model

    from kaizen.tasks.model.predict import model_labels, pick_device

    folder = version_dir(ws, version)
    device = pick_device(ws.settings.train.device)
    config = Model.load(folder).flavors.get("python_function", {}).get("config") or {}
    if "max_length" in config:
        return Classifier(version, mlflow.pyfunc.load_model(str(folder), model_config={"device": device}),
                          tuple(config["labels"]))
    from types import SimpleNamespace

    from kaizen.tasks.model import served_model

    weights = tracking.local_model(ws, version)
    labels = model_labels(weights)
    legacy = served_model.TextClassifier()
    legacy.load_context(SimpleNamespace(artifacts={"weights": str(weights)},
                                        model_config={**model_config(ws.settings, labels), "device": device}))
    return Classifier(version, SimpleNamespace(predict=lambda frame: legacy.predict(None, frame)), tuple(labels))


def load_champion(ws: Workspace) -> Classifier:
    return load_version(ws, champion_version(ws))


def champion_version(ws: Workspace) -> str:
    champion = tracking.model_by_alias(tracking.connect(ws), ws.settings.model.registered_name, tracking.CHAMPION)
    if champion is None:
        raise ServingError("there is no champion yet: run the loop first")
    return champion.version


def serve_command(ws: Workspace, port: int | None = None, host: str | None = None,
                  version: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The command that serves the champion (or `version`) from the workspace's registry, in this environment,
    and the environment to run it with: MLflow's scoring app, from the version's model folder, under uvicorn with
    kaizen's wrappers (tasks/serving/guarded.py): it records what it answers (capture), and with MLflow's
    credentials set, as for `kaizen up`, answers only those who send them. Without credentials it listens on
    loopback only (security.check_model_server refuses another host here, and the app again at its start)."""
    host, port = host or ws.settings.servers.host, port or ws.settings.serving.port
    security.check_model_server(host)
    env = child_environment(ws, tracking=True)
    version = version or champion_version(ws)  # resolved once, at the start: a later promotion needs a restart
    env.update({guarded.MODEL_FOLDER: str(version_dir(ws, version)), guarded.SERVED_VERSION: str(version),
                guarded.SERVED_HOST: host, guarded.WORKSPACE: str(ws.root)})
    return [sys.executable, "-m", "uvicorn", "--factory", f"{guarded.__name__}:app", "--host", host,
            "--port", str(port)], env
