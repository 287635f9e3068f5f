"""serving: the champion loaded for kaizen (`kaizen predict`, `kaizen score`) exactly as MLflow serves it, and
the `mlflow models serve` command that `kaizen serve-model` runs.

How a version is logged so that this holds is tasks/model/servable.py's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaizen.tasks.model.servable import TEXT, model_config
from kaizen.tasks.registry import tracking
from kaizen.tasks.workspace.environment import child_environment
from kaizen.tasks.workspace.layout import Workspace


class ServingError(RuntimeError):
    """No model to serve or predict with, as asked; the message says why."""


@dataclass
class Classifier:
    """A registered version, loaded as MLflow loads it for serving."""

    version: str
    model: Any  # mlflow.pyfunc.PyFuncModel, or the same TextClassifier on an older version's weights

    def predict(self, texts: list) -> Any:
        """`prediction`, `p_<label>` and `reason` per text (a pandas DataFrame, in order)."""
        import pandas as pd

        return self.model.predict(pd.DataFrame({TEXT: pd.Series(texts, dtype=object)}))


def version_dir(ws: Workspace, version: str) -> Path:
    """A registered version's MLflow model folder on local disk (cached: versions never change)."""
    dest = ws.runs_dir / "served" / f"v{version}"
    if (dest / "MLmodel").exists():
        return dest
    import shutil

    import mlflow

    scratch = dest.with_name(dest.name + ".download")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    uri = f"models:/{ws.settings.model.registered_name}/{version}"
    mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(scratch), tracking_uri=ws.tracking_uri)
    shutil.rmtree(dest, ignore_errors=True)
    scratch.rename(dest)  # whole or not at all: a half download is never taken for the model
    return dest


def load_version(ws: Workspace, version: str) -> Classifier:
    """Load a registered version with `mlflow.pyfunc.load_model` on `train.device`. A version logged before
    kaizen served its models (the transformers flavour) is read from its weights by the same TextClassifier,
    with this workspace's max_length and normalisation."""
    import mlflow
    from mlflow.models import Model

    from kaizen.tasks.model.predict import pick_device

    tracking.connect(ws)  # models:/ URIs resolve against the workspace's registry
    folder = version_dir(ws, version)
    device = pick_device(ws.settings.train.device)
    if "max_length" in (Model.load(folder).flavors.get("python_function", {}).get("config") or {}):
        return Classifier(version, mlflow.pyfunc.load_model(str(folder), model_config={"device": device}))
    from types import SimpleNamespace

    from kaizen.tasks.model import served_model

    legacy = served_model.TextClassifier()
    legacy.load_context(SimpleNamespace(artifacts={"weights": str(tracking.local_model(ws, version))},
                                        model_config={**model_config(ws.settings), "device": device}))
    return Classifier(version, SimpleNamespace(predict=lambda frame: legacy.predict(None, frame)))


def load_champion(ws: Workspace) -> Classifier:
    client = tracking.connect(ws)
    champion = tracking.model_by_alias(client, ws.settings.model.registered_name, tracking.CHAMPION)
    if champion is None:
        raise ServingError("there is no champion yet: run the loop first")
    return load_version(ws, champion.version)


def serve_command(ws: Workspace, port: int | None = None, host: str | None = None,
                  version: str | None = None) -> tuple[list[str], dict[str, str]]:
    """`mlflow models serve` of the champion (or `version`) from the workspace's registry, in this environment
    (`--env-manager local`: it already holds the pinned packages), and the environment to run it with."""
    name = ws.settings.model.registered_name
    uri = f"models:/{name}/{version}" if version else f"models:/{name}@{tracking.CHAMPION}"
    # MLflow starts `uvicorn` by name: child_environment puts this environment's bin/ first on PATH.
    env = child_environment(ws, tracking=True)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
               "-h", host or ws.settings.servers.host, "-p", str(port or ws.settings.serving.port)]
    return command, env
