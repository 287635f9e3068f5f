"""The workspace: the one place that knows where everything lives.

A workspace is a git + DVC repository holding `params.yaml` and `dvc.yaml` (the kaizen repository itself,
or a folder made by `kaizen init`). Data lives under `data/`, the loop's own state (ledger, MLflow store,
DVC remote, Prefect home) under `.kaizen/`; both are ignored by git.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kaizen.tasks.workspace import databases
from kaizen.tasks.workspace.files import locked
from kaizen.tasks.workspace.objects import ObjectStore
from kaizen.tasks.workspace.redact import redact
from kaizen.tasks.workspace.repo import TRUST_FILE
from kaizen.tasks.workspace.settings import Settings, load_settings


@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: Settings

    @classmethod
    def open(cls, root: Path | str) -> Workspace:
        root = Path(root).resolve()
        return cls(root=root, settings=load_settings(root / "params.yaml"))

    # --- files of the repository -------------------------------------------------------------------
    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    # --- data -------------------------------------------------------------------------------------
    @property
    def landing(self) -> str:
        """The landing zone as an fsspec URL or an absolute local path."""
        landing = self.settings.storage.landing
        return landing if "://" in landing else str(self.root / landing)

    @property
    def landing_shown(self) -> str:  # as it may be shown or logged: credentials in the URL masked
        return redact(self.landing)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def staged_dir(self) -> Path:
        """Accepted rows of each ingested file, waiting to form a batch."""
        return self.data_dir / "staged"

    @property
    def accepted_dir(self) -> Path:
        """One Parquet file per batch: the input of the DVC stage."""
        return self.data_dir / "accepted"

    @property
    def prepared_dir(self) -> Path:
        """The DVC stage's output: per-batch splits and replay samples."""
        return self.data_dir / "prepared"

    @property
    def replay_dir(self) -> Path:
        """The DVC replay stage's output: the replay sample of the batch being learned (`target.json` names it)."""
        return self.data_dir / "replay"

    @property
    def trust_file(self) -> Path:
        """The batches whose labels are suspect, written from the ledger before each `dvc repro` (a dependency of
        the stage: replay never draws from them)."""
        return self.root / TRUST_FILE

    @property
    def corrections_landing(self) -> str:
        """Where corrected labels are landed: the folder `corrections` of the landing zone, which the landing
        zone's own survey leaves alone (tasks/ingest/corrections.py collects it)."""
        return f"{self.landing.rstrip('/')}/corrections"

    @property
    def corrections_dir(self) -> Path:
        """Each batch's corrected labels, written from the ledger before each `dvc repro`: its `split` stage's
        input beside the accepted batch, which stays as it was ingested."""
        return self.data_dir / "corrections"

    def corrections_file(self, batch_id: str) -> Path:
        return self.corrections_dir / f"{batch_id}.parquet"

    @property
    def failed_dir(self) -> Path:  # batches set aside as failed: out of the DVC stage's input until retried
        return self.data_dir / "failed"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def archive_dir(self) -> Path:
        """Every landed file, byte for byte, once it has been ingested."""
        return self.data_dir / "archive"

    @property
    def captures(self) -> str:
        """What the served model and `kaizen score` answered (tasks/serving/capture.py), Parquet under `day=...`
        folders: under `captures/` of storage.artifacts when it names a store (where the loop on any machine reads
        them), else data/captures here. An fsspec URL or an absolute local path."""
        artifacts = self.settings.storage.artifacts
        return f"{artifacts.rstrip('/')}/captures" if artifacts else str(self.data_dir / "captures")

    @property
    def labeling(self) -> str:
        """The labeling queues `kaizen select` writes (tasks/serving/labeling_queue.py) for a labeling tool to import:
        beside the captures they come from (under storage.artifacts's store when it names one, else data/labeling
        here). An fsspec URL or an absolute local path."""
        artifacts = self.settings.storage.artifacts
        return f"{artifacts.rstrip('/')}/labeling" if artifacts else str(self.data_dir / "labeling")

    @property
    def stream_dir(self) -> Path:
        """The demo's real labeled stream, waiting to be dropped into the landing zone."""
        return self.data_dir / "stream"

    # --- loop state -------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / ".kaizen"

    @property
    def ledger_db(self) -> Path | str:
        """The ingestion ledger: storage.ledger (a PostgreSQL URL) when the workspace is shared, else SQLite here."""
        return self.settings.storage.ledger or self.state_dir / "ledger.db"

    @property
    def mlflow_db(self) -> Path:
        return self.state_dir / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI when the user set it, else the server `kaizen up` started here, else
        storage.tracking_uri, else the SQLite file."""
        return (os.environ.get("MLFLOW_TRACKING_URI") or self.recorded_url("mlflow")
                or self.settings.storage.tracking_uri or f"sqlite:///{self.mlflow_db}")

    @property
    def backend_store_uri(self) -> str:
        """The database behind `kaizen up`'s MLflow server: storage.tracking_uri when it names one, else SQLite here."""
        uri = self.settings.storage.tracking_uri
        return uri if uri and not is_server(uri) else f"sqlite:///{self.mlflow_db}"

    @property
    def artifact_root(self) -> str:
        """Where MLflow stores artifacts (the server's destination, or a new experiment's location without one)."""
        return self.settings.storage.artifacts or str(self.artifacts_dir)

    @property
    def mlflow_ui_url(self) -> str:
        """Where a browser finds the MLflow UI: the tracking server (credentials masked), or `kaizen ui`'s."""
        if is_server(self.tracking_uri):
            return redact(self.tracking_uri).rstrip("/")
        return f"http://{self.settings.servers.host}:{self.settings.servers.mlflow_port}"

    @property
    def prefect_api_url(self) -> str | None:
        """PREFECT_API_URL when set, else the server `kaizen up` started here; None: Prefect's embedded server."""
        recorded = self.recorded_url("prefect")
        return os.environ.get("PREFECT_API_URL") or (f"{recorded}/api" if recorded else None)

    @property
    def servers_dir(self) -> Path:
        """PIDs, logs and databases of the servers `kaizen up` started for this workspace."""
        return self.state_dir / "servers"

    def recorded_url(self, server: str) -> str | None:
        """The address of a server `kaizen up` started here and `kaizen down` has not stopped."""
        record = self.servers_dir / f"{server}.json"
        return json.loads(record.read_text(encoding="utf-8"))["url"] if record.exists() else None

    @property
    def workspace_id(self) -> str:
        """The loop's identity: names its deployment, its arrival events, its runs and its registered model.
        KAIZEN_WORKSPACE_ID when set; else the loop this folder made or joined (`loop_file`, recorded in the loop's
        database: tasks/workspace/identity.py); else one derived from the folder's path, as before loops were
        recorded."""
        if forced := os.environ.get("KAIZEN_WORKSPACE_ID"):
            return forced
        if self.loop_file.exists():
            return str(json.loads(self.loop_file.read_text(encoding="utf-8"))["id"])
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:8]
        return f"{self.root.name.lower()}-{digest}"

    @property
    def loop_file(self) -> Path:
        """This folder's copy of the identity of the loop it made or joined."""
        return self.state_dir / "loop.json"

    @property
    def shared(self) -> bool:
        """A loop that several machines carry on: its ledger is PostgreSQL, its state in the shared stores, and
        this folder is only a cache of them (tasks/workspace/objects.py)."""
        return databases.is_postgres(self.ledger_db)

    @property
    def state_store(self) -> str:
        """Where a shared loop keeps what collect writes: beside the DVC remote's objects, under a prefix that
        DVC's own commands (`dvc gc` included) never touch."""
        return f"{self.dvc_remote.rstrip('/')}/kaizen-state"

    @property
    def watch_state_file(self) -> Path:
        """The files `kaizen watch` has announced that still wait in the landing zone."""
        return self.state_dir / "watch.json"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "mlartifacts"

    @property
    def dvc_remote_dir(self) -> Path:
        return self.state_dir / "dvc-remote"

    @property
    def dvc_remote(self) -> str:
        """The DVC remote that data versions are pushed to and restored from: storage.dvc_remote, else local."""
        return self.settings.storage.dvc_remote or str(self.dvc_remote_dir)

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def runs_dir(self) -> Path:
        """Scratch space of training runs: checkpoints, downloaded models, reports."""
        return self.state_dir / "runs"

    @property
    def sources_dir(self) -> Path:
        """Packages downloaded from the registry that carry the demo's real data."""
        return self.state_dir / "sources"

    @property
    def object_store(self) -> ObjectStore | None:
        """The shared loop's object store (None for a loop on one machine: its folder is the store)."""
        return ObjectStore(self.state_store) if self.shared else None

    def object_key(self, path: Path) -> str:
        """A file under data/ as the object store names it: the same relative path (`staged/<sha>.parquet`)."""
        return path.relative_to(self.data_dir).as_posix()

    def batch_file(self, batch_id: str) -> Path:
        return self.accepted_dir / f"{batch_id}.parquet"

    def set_aside_file(self, batch_id: str) -> Path:
        """Where a batch set aside as failed keeps its accepted rows, out of the DVC stage's input."""
        return self.failed_dir / self.batch_file(batch_id).name

    def split_file(self, batch_id: str, split: str) -> Path:
        return self.prepared_dir / batch_id / f"{split}.parquet"


def is_server(uri: str) -> bool:
    """A tracking URI that names an MLflow server (which stores artifacts itself), not a database."""
    return uri.startswith(("http://", "https://"))


@contextmanager
def hold(ws: Workspace, purpose: str, wait: bool) -> Iterator[bool]:
    """Hold the workspace for one `purpose` ("loop": DVC runs one loop per repository; "collect": one ingest at a
    time; "serve": one server of its deployment, whose shutdown would pause it under another). Waits for the
    holder, or raises files.Busy when `wait` is False. Yields whether it waited. A workspace shared by several
    machines (its ledger on PostgreSQL) is held in that database, where every machine sees the lock."""
    busy = f"another {purpose} is running in {ws.root} (it holds %s); try again later"
    if databases.is_postgres(ws.ledger_db):
        with databases.advisory_lock(str(ws.ledger_db), purpose, wait, busy % f"the ledger's {purpose!r} lock") as waited:
            yield waited
        return
    path = ws.state_dir / f"{purpose}.lock"
    with locked(path, wait, busy % path) as waited:
        yield waited
