"""The workspace: the one place that knows where everything lives.

A workspace is a git + DVC repository holding `params.yaml` and `dvc.yaml` (the kaizen repository itself,
or a folder made by `kaizen init`). Data lives under `data/`, the loop's own state (ledger, MLflow store,
DVC remote, Prefect home) under `.kaizen/`; both are ignored by git.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tasks.settings import Settings, load_settings

# The repository that holds this code: its params.yaml and dvc.yaml are the templates of a new workspace.
CODE_ROOT = Path(__file__).resolve().parent.parent

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
        return f"sqlite:///{self.mlflow_db}"

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


def configure_environment(ws: Workspace) -> None:
    """Keep every library offline and inside the workspace; call before importing prefect or mlflow."""
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "PREFECT_HOME": str(ws.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DVC_NO_ANALYTICS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


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


def ensure_dvc(root: Path) -> None:
    """Make `root` a git + DVC repository with a local DVC remote under `.kaizen/` (idempotent)."""
    root = root.resolve()
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
    """Create a workspace in `root`: params.yaml and dvc.yaml from this repository, git, DVC, a first commit."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        if not (root / name).exists():
            shutil.copyfile(CODE_ROOT / name, root / name)
    gitignore = root / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE, encoding="utf-8")
    ensure_dvc(root)
    ws = Workspace.open(root)
    run_command(["git", "add", "params.yaml", "dvc.yaml", ".gitignore", ".dvc/config", ".dvcignore"], root)
    staged = subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=root).returncode
    if staged:
        run_command(["git", "commit", "-q", "-m", "kaizen workspace"], root)
    return ws
