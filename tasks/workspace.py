"""The workspace: the one place that knows where everything lives.

A workspace is a git + DVC repository holding `params.yaml` and `dvc.yaml` (the kaizen repository itself,
or a folder made by `kaizen init`). Data lives under `data/`, the loop's own state (ledger, MLflow store,
DVC remote, Prefect home) under `.kaizen/`; both are ignored by git.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kaizen.tasks.files import locked
from kaizen.tasks.redact import redact
from kaizen.tasks.settings import Settings, load_settings

GITIGNORE = """\
# kaizen: data and loop state live outside git (DVC and MLflow version them)
/data/
/.kaizen/
"""


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
        landing = self.settings.data.landing
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
    def stream_dir(self) -> Path:
        """The demo's real labeled stream, waiting to be dropped into the landing zone."""
        return self.data_dir / "stream"

    # --- loop state -------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / ".kaizen"

    @property
    def ledger_db(self) -> Path:
        return self.state_dir / "ledger.db"

    @property
    def mlflow_db(self) -> Path:
        return self.state_dir / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI when the user set it, else the server `kaizen up` started here, else the SQLite file."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.recorded_url("mlflow") or f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_ui_url(self) -> str:
        """Where a browser finds the MLflow UI: the tracking server (credentials masked), or `kaizen ui`'s."""
        if self.tracking_uri.startswith(("http://", "https://")):
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
        """Names this workspace's deployment and its arrival events. KAIZEN_WORKSPACE_ID gives one name to a
        workspace mounted at different paths (a container and the host that feeds it)."""
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:8]
        return os.environ.get("KAIZEN_WORKSPACE_ID") or f"{self.root.name.lower()}-{digest}"

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

    def batch_file(self, batch_id: str) -> Path:
        return self.accepted_dir / f"{batch_id}.parquet"

    def split_file(self, batch_id: str, split: str) -> Path:
        return self.prepared_dir / batch_id / f"{split}.parquet"


# Every process of the loop, wherever it runs: offline, and no telemetry.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
HEARTBEAT = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"  # how often a deployed run tells the server it lives (tasks/zombies.py)


def configure_environment(ws: Workspace) -> None:
    """Keep every library offline and inside the workspace; call before importing prefect or mlflow."""
    defaults = {
        **OFFLINE_ENV,
        "PREFECT_HOME": str(ws.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    if ws.prefect_api_url:  # a real server: the one `kaizen up` started, unless PREFECT_API_URL names another
        os.environ.setdefault("PREFECT_API_URL", ws.prefect_api_url)
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", str(ws.settings.schedule.poll_seconds))
    os.environ.setdefault(HEARTBEAT, str(ws.settings.operations.heartbeat_seconds))  # served runs inherit it


def run_environment(ws: Workspace) -> dict[str, str]:
    """The variables a flow run started by a worker needs (it does not inherit the shell of `kaizen deploy`)."""
    env = {**OFFLINE_ENV, HEARTBEAT: str(ws.settings.operations.heartbeat_seconds),
           "KAIZEN_WORKSPACE_ID": ws.workspace_id}
    if os.environ.get("MLFLOW_TRACKING_URI"):  # else the run finds the store from the workspace, as here
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    return env


@contextmanager
def hold(ws: Workspace, purpose: str, wait: bool) -> Iterator[bool]:
    """Hold the workspace for one `purpose` ("loop": DVC runs one loop per repository; "collect": one ingest at a
    time; "serve": one server of its deployment, whose shutdown would pause it under another). Waits for the
    holder, or raises files.Busy when `wait` is False. Yields whether it waited."""
    path = ws.state_dir / f"{purpose}.lock"
    with locked(path, wait, f"another {purpose} is running in {ws.root} (it holds {path}); try again later") as waited:
        yield waited


def run_command(args: list[str], cwd: Path) -> str:
    """Run a tool; on failure raise with its own words, so nothing is swallowed."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(args)}` failed in {cwd} (exit {result.returncode}):\n{result.stderr or result.stdout}"
        )
    return result.stdout


def dvc_command(*args: str) -> list[str]:
    """`dvc` of this interpreter's environment, whatever is first on PATH."""
    return [sys.executable, "-m", "dvc", *args]


def template(name: str) -> Path:
    """A file a new workspace starts from (`params.yaml`, `dvc.yaml`), shipped inside the kaizen package."""
    from importlib.resources import files

    return Path(str(files("kaizen") / "templates" / name))


def write_stage_vars(root: Path) -> Path:
    """The machine-specific values `dvc.yaml` reads (its `vars`): the interpreter that runs the stage, so a
    `dvc repro` by hand uses this environment's kaizen whatever `python` is first on PATH, and the folder of the
    stage's code, which the stage lists among its dependencies. Rewritten only when they change."""
    import kaizen.tasks

    stage_vars = root / ".kaizen" / "stage.yaml"
    text = (f"# written by kaizen for dvc.yaml (machine-specific, never committed)\n"
            f"python: {json.dumps(sys.executable)}\ncode: {json.dumps(str(Path(kaizen.tasks.__file__).parent))}\n")
    if not stage_vars.exists() or stage_vars.read_text(encoding="utf-8") != text:
        stage_vars.parent.mkdir(parents=True, exist_ok=True)
        stage_vars.write_text(text, encoding="utf-8")
    return stage_vars


def ensure_dvc(root: Path) -> None:
    """Make `root` a git + DVC repository with a local DVC remote under `.kaizen/` (idempotent)."""
    root = root.resolve()
    write_stage_vars(root)
    if not (root / ".git").exists():
        run_command(["git", "init", "-q", "-b", "main"], root)
    for key, value in (("user.name", "kaizen"), ("user.email", "kaizen@localhost")):
        if subprocess.run(["git", "config", key], cwd=root, capture_output=True).returncode != 0:
            run_command(["git", "config", key, value], root)
    if not (root / ".dvc").exists():
        run_command(dvc_command("init", "-q"), root)
    run_command(dvc_command("config", "core.analytics", "false"), root)
    # Given relative to the repository, DVC stores the URL relative to .dvc/: the config works in every clone.
    run_command(dvc_command("remote", "add", "-f", "-d", "local", ".kaizen/dvc-remote"), root)
    run_command(dvc_command("config", "--local", "core.site_cache_dir", str(root / ".kaizen" / "dvc-site")), root)


def init_workspace(root: Path) -> Workspace:
    """Create a workspace in `root`: params.yaml and dvc.yaml from the templates, git, DVC, a first commit."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        if not (root / name).exists():
            shutil.copyfile(template(name), root / name)
    gitignore = root / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE, encoding="utf-8")
    ensure_dvc(root)
    ws = Workspace.open(root)
    if "://" not in ws.settings.data.landing:  # exists from the start: `cp file DIR/data/landing/` works
        Path(ws.landing).mkdir(parents=True, exist_ok=True)
    run_command(["git", "add", "params.yaml", "dvc.yaml", ".gitignore", ".dvc/config", ".dvcignore"], root)
    staged = subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=root).returncode
    if staged:
        run_command(["git", "commit", "-q", "-m", "kaizen workspace"], root)
    return ws
