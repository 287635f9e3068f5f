"""Making a workspace folder and opening one as a member of its loop: `kaizen init` (a new loop, or `--join` of
one whose settings and identity live in its PostgreSQL ledger), and the folder a deployed run works in (under
KAIZEN_HOME on a worker), joined when empty. tasks/workspace/layout.py knows where everything lies in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kaizen.tasks.workspace import identity
from kaizen.tasks.workspace.files import write_atomically
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.redact import redact
from kaizen.tasks.workspace.repo import ensure_dvc, run_command

GITIGNORE = """\
# kaizen: data and loop state live outside git (DVC and MLflow version them)
/data/
/.kaizen/
"""



def template(name: str) -> Path:
    """A file a new workspace starts from (`params.yaml`, `dvc.yaml`), shipped inside the kaizen package."""
    from importlib.resources import files

    return Path(str(files("kaizen") / "templates" / name))


def make_buckets(ws: Workspace) -> None:
    """The object-store locations of `storage` exist afterwards (a missing bucket is made, with the credentials
    of the environment), so the first push, upload or landed file has somewhere to go."""
    import fsspec

    storage = ws.settings.storage
    for url in sorted({storage.landing, storage.dvc_remote, storage.artifacts}):
        if url.startswith(("s3://", "gs://", "gcs://")):
            fs, path = fsspec.core.url_to_fs(url)
            fs.makedirs(path, exist_ok=True)


def workspace_folder(workspace: str | Path) -> Path:
    """The folder a run's `workspace` names: a relative one lies under KAIZEN_HOME when the machine sets it (a
    worker's cache folder, kept between runs), else under the working directory (a process worker's is new for
    each run: an empty disk every time)."""
    folder = Path(workspace)
    home = os.environ.get("KAIZEN_HOME")
    return (Path(home) / folder if home and not folder.is_absolute() else folder).resolve()


def open_member(workspace: str | Path, join: str | None = None) -> Workspace:
    """The workspace a run works in: made by joining the loop in the database `join` when the folder is empty (a
    worker's new disk), and checked to be a member of its loop when the loop is shared (ForeignLoop if not)."""
    root = workspace_folder(workspace)
    if join and not (root / "params.yaml").exists():
        init_workspace(root, join=join)
    ws = Workspace.open(root)
    if not ws.shared:
        return ws
    shared = identity.check_member(ws.ledger_db, ws.workspace_id, ws.params_file.read_text(encoding="utf-8"),
                                   redact(str(ws.ledger_db)))
    said = identity.sync_settings(ws.ledger_db, ws.workspace_id, shared, ws.params_file, ws.loop_file)
    if said:
        print(said)
    return Workspace.open(root) if said else ws  # the settings as agreed


def _join(root: Path, join: str) -> None:
    """The loop's settings and identity written into `root`."""
    found = identity.recorded(join)
    if found is None:
        raise identity.NoLoop(f"the database at {redact(join)} holds no loop yet: make one with "
                              f"`kaizen init DIR --ledger {redact(join)}`")
    loop_id, params = found
    if params:
        write_atomically(root / "params.yaml", params.encode("utf-8"))
    identity.write_membership(root / ".kaizen" / "loop.json", loop_id, params)


def init_workspace(root: Path, settings: dict[str, str] | None = None, join: str | None = None) -> Workspace:
    """Create a workspace in `root`: params.yaml and dvc.yaml from the templates with `settings` set (dotted keys:
    `{"storage.tracking_uri": "http://mlflow:5000", "storage.dvc_remote": "s3://bucket/dvc"}`), git, DVC, a
    first commit. `join`: the database (a postgresql:// URL) of a loop to carry on from here, whose settings and
    identity the folder takes (one loop, one params.yaml: no `settings` with it; a machine's own address of a
    store goes in the environment, MLFLOW_TRACKING_URI). A folder on a shared ledger that does not join makes the
    loop, or is refused when the ledger has one."""
    from kaizen.tasks.workspace.settings import write_overrides

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if join:
        if settings:
            raise identity.ForeignLoop(f"a folder that joins a loop takes its settings; not also {', '.join(settings)}")
        _join(root, join)
    for name in ("params.yaml", "dvc.yaml"):
        if not (root / name).exists():
            shutil.copyfile(template(name), root / name)
    if settings:
        write_overrides(root / "params.yaml", settings)
    gitignore = root / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE, encoding="utf-8")
    ws = Workspace.open(root)
    if ws.shared and not join:
        loop_id, _ = identity.claim(ws.ledger_db, ws.workspace_id, ws.params_file.read_text(encoding="utf-8"))
        if loop_id != ws.workspace_id:
            raise identity.ForeignLoop(
                f"the ledger at {redact(str(ws.ledger_db))} holds the loop {loop_id!r} already: carry it on from "
                f"here with `kaizen init {root} --join {redact(str(ws.ledger_db))}`, or give this workspace a "
                "ledger of its own")
        identity.write_membership(ws.loop_file, loop_id, ws.params_file.read_text(encoding="utf-8"))
    make_buckets(ws)
    ensure_dvc(root, ws.dvc_remote)
    if "://" not in ws.landing:  # exists from the start: `cp file DIR/data/landing/` works
        Path(ws.landing).mkdir(parents=True, exist_ok=True)
    run_command(["git", "add", "params.yaml", "dvc.yaml", ".gitignore", ".dvc/config", ".dvcignore"], root)
    staged = subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=root).returncode
    if staged:
        run_command(["git", "commit", "-q", "-m", "kaizen workspace"], root)
    return ws
