"""The MLflow side of kaizen: the tracking store, model versions and their aliases, and batched logging.

Moving the `champion` alias is the single commit point of a promotion. What an iteration records (its tags
and metrics) is `tasks/registry/record.py`'s; the tags' names, `tasks/registry/tags.py`'s.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaizen.tasks.workspace import environment
from kaizen.tasks.workspace.faults import kill_point
from kaizen.tasks.workspace.layout import Workspace, is_server

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

    with environment.kept("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set_tracking_uri writes them there
        mlflow.set_tracking_uri(ws.tracking_uri)
        mlflow.set_registry_uri(ws.tracking_uri)
    environment.apply_tracking_retries(ws)  # the retries of the workspace this client is for
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


def retry_wait_seconds(retries: int, backoff: float, jitter: float = 1.0, cap: float = 120.0) -> float:
    """The longest MLflow (urllib3) waits between the tries of one request: no wait before the first retry, then
    backoff * 2**(k-1) before the k-th, each at most `cap`, plus up to `jitter` each."""
    return sum(min(cap, backoff * 2 ** (k - 1) + (jitter if k > 1 else 0.0)) for k in range(2, retries + 1))


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
    """The model version's files as one folder for from_pretrained (weights, config and tokenizer), assembled
    whole (see download_whole)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    def assemble(partial: Path) -> Path:
        uri = client.get_model_version_download_uri(name, version)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(partial / "download")))
        except MlflowException:
            # MLflow gathers the files it failed to download into one message, without their exceptions. Ask the
            # server whether it still answers: if not, that error (a connection error, chained to this one) says
            # so, and the attempt is not counted against the batch (tasks/operate/failures.py); if it does, this one.
            client.search_experiments(max_results=1)
            raise
        weights = next(local.rglob("config.json")).parent
        tokenizer = next((p.parent for p in local.rglob("tokenizer.json")), weights)
        files = partial / "model"
        files.mkdir()
        for folder in dict.fromkeys((weights, tokenizer)):
            for path in folder.iterdir():
                shutil.copy2(path, files / path.name)
                kill_point("download:copied")
        return files

    return download_whole(dest, assemble)


def download_whole(dest: Path, assemble: Callable[[Path], Path]) -> Path:
    """`dest`, unless there already: `assemble(partial)` builds it in a folder of this process's own beside it and
    returns the built folder, which is renamed into place whole. A kill, Ctrl-C or a full disk never leaves a
    `dest` that looks complete, and two processes downloading at once never share a folder: a `dest` is always one
    whole download (the first renamed; the other's copy is dropped)."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(dest)
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        built = assemble(partial)
        try:
            os.rename(built, dest)  # the commit point: atomic on one filesystem
        except OSError:
            if not dest.is_dir():
                raise
            # Another process renamed its whole download first (a folder is never renamed over a full one).
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


def _remove_abandoned(dest: Path) -> None:
    """Temporary folders of downloads whose process is gone (killed mid-download)."""
    for folder in dest.parent.glob(f".{dest.name}.partial-*"):
        pid = folder.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def local_model(ws: Workspace, version: str) -> Path:
    """A registered version's files on local disk, cached by model name and version (versions never change)."""
    client = connect(ws)
    name = ws.settings.model.registered_name
    return download_model(client, name, version, ws.runs_dir / "models" / name / f"v{version}")


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """All of an iteration's numbers in one `log_batch` call, not one request per metric."""
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])


PARAM_CHARS = 6_000  # MLflow cuts a longer param value here, with a warning and no word of where the rest is
RUN_TAG_CHARS = 8_000  # MLflow cuts a run tag's value here, mid-line, with a warning each time
VERSION_TAG_CHARS = 100_000  # and refuses a longer model version tag: the iteration would fail


def fit_lines(text: str, limit: int, where: str) -> str:
    """`text` itself when it fits in `limit` characters; else as many of its first lines as fit, then how many
    more lines `where` holds. Reasons put failed checks first, so the lines that matter are the ones kept."""
    if len(text) <= limit:
        return text
    lines = text.splitlines()
    kept: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 + len(f"... {len(lines) - len(kept) - 1} more lines in {where}") > limit:
            break
        kept.append(line)
        size += len(line) + 1
    tail = f"... {len(lines) - len(kept)} more lines in {where}"
    if not kept:  # a first line longer than the limit: its start, and every line counted as not shown
        return f"{lines[0][: max(0, limit - len(tail) - 1)]}\n{tail}"
    return "\n".join([*kept, tail])


def log_params(client, run_id: str, params: dict[str, Any], where: str) -> None:
    """Log params in one call; a value longer than MLflow takes keeps its start and says where it is whole."""
    from mlflow.entities import Param

    def fitted(value: str) -> str:
        tail = f" ... {len(value)} characters in all, whole in {where}"
        return value if len(value) <= PARAM_CHARS else value[: PARAM_CHARS - len(tail)] + tail

    client.log_batch(run_id, params=[Param(k, fitted(str(v))) for k, v in params.items()])


def set_tags(client, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def register_model(client, ws: Workspace, run_id: str, model_dir: Path, tags: dict[str, str]) -> ModelRef:
    """Log the model as a servable pyfunc (tasks/model/servable.py: safetensors weights, kaizen's prediction code, the
    trained max_length and normalisation), register it, tag it, alias it challenger."""
    import mlflow

    from kaizen.tasks.model import servable

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


class ChampionMoved(RuntimeError):
    """The champion is no longer the version an iteration started from: it was moved meanwhile (a rollback)."""


def move_champion(client, name: str, version: str, started_from: str | None) -> str | None:
    """Make `version` the champion if the champion is still `started_from` (compare and set: a rollback made while
    the iteration ran is never undone by it; raises ChampionMoved instead). Returns the former champion, which
    becomes `previous-champion`. Callers hold the workspace's "champion" lock, so the check and the move are one
    step for every kaizen process of the workspace."""
    former = model_by_alias(client, name, CHAMPION)
    if (former.version if former else None) != started_from:
        raise ChampionMoved(
            f"not promoted: the champion is v{former.version if former else '–'}, no longer "
            f"v{started_from or '–'}, which this iteration started from and compared against (moved meanwhile, "
            "e.g. by `kaizen rollback`)")
    return swap_champion(client, name, version, former)


def swap_champion(client, name: str, version: str, former: ModelRef | None) -> str | None:
    """Champion -> `version`, previous-champion -> `former`: three alias writes, ordered so that a crash between
    them never leaves previous-champion naming the champion, nor a stale version a rollback would restore
    silently. previous-champion is removed first; a crash then leaves none (`kaizen rollback` asks for --to, and
    the recovery of a killed iteration sets it again)."""
    if model_by_alias(client, name, PREVIOUS) is not None:
        client.delete_registered_model_alias(name, PREVIOUS)
    client.set_registered_model_alias(name, CHAMPION, version)  # the commit point
    kill_point("aliases:between")
    if former is not None and former.version != version:
        client.set_registered_model_alias(name, PREVIOUS, former.version)
    return former.version if former else None


def run_url(ws: Workspace, run_id: str | None, ui_url: str | None = None) -> str:
    """Where the MLflow UI shows the run (the workspace's tracking server, or where `kaizen ui` serves it)."""
    experiment = experiment_id(connect(ws), ws)
    return f"{ui_url or ws.mlflow_ui_url}/#/experiments/{experiment}/runs/{run_id}"
