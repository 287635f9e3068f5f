"""The data version: run the DVC pipeline, push its outputs, and read the md5s that name what was trained on.

DVC is driven as a subprocess with the workspace as its working directory (DVC resolves paths against the
process's cwd) and this interpreter's folder first on PATH (the stage's `python` must be the venv's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from kaizen.tasks.faults import kill_point
from kaizen.tasks.ledger import Ledger
from kaizen.tasks.repo import configure_remote, dvc_command, write_stage_vars, write_trust_file
from kaizen.tasks.workspace import Workspace


@dataclass(frozen=True)
class DataVersion:
    prepared_md5: str  # md5 of data/prepared (a `.dir` hash): the training, test and replay data
    accepted_md5: str  # md5 of data/accepted: the batches it was built from
    lock: str  # the whole dvc.lock, so the version can be restored from the remote later

    @property
    def short(self) -> str:
        return self.prepared_md5.removesuffix(".dir")[:12]


def _dvc(ws: Workspace, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(dvc_command(*args), cwd=ws.root, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {ws.root} (exit {result.returncode}):\n"
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def read_data_version(lock_text: str) -> DataVersion:
    lock = yaml.safe_load(lock_text) or {}
    stage = lock.get("stages", {}).get("preprocess")
    if not stage:
        raise ValueError("dvc.lock has no `preprocess` stage: run the pipeline first")
    deps = {d["path"]: d["md5"] for d in stage.get("deps", [])}
    outs = {o["path"]: o["md5"] for o in stage.get("outs", [])}
    return DataVersion(prepared_md5=outs["data/prepared"], accepted_md5=deps["data/accepted"], lock=lock_text)


def build_data_version(ws: Workspace) -> DataVersion:
    """`dvc repro` (a no-op when nothing changed), `dvc push` to the remote, and the resulting version."""
    configure_remote(ws.root, ws.dvc_remote)  # params.yaml's storage.dvc_remote may have changed since
    write_stage_vars(ws.root)
    with Ledger(ws.ledger_db) as ledger:
        write_trust_file(ws.trust_file, ledger.suspect_batches())
    _dvc(ws, "repro", "--quiet")
    kill_point("preprocess:reproduced")
    _dvc(ws, "push", "--quiet")
    return read_data_version(ws.dvc_lock.read_text(encoding="utf-8"))


def restore_data_version(ws: Workspace, lock_text: str, dest: Path, remote: str | None = None) -> Path:
    """Materialise the prepared data of a recorded version from a DVC remote (default: the workspace's) into
    `dest`, a new DVC repository with that remote as its default: `dvc pull` works there too."""
    from kaizen.tasks.repo import ensure_dvc

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dvc.yaml").write_text((ws.root / "dvc.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (dest / "params.yaml").write_text(ws.params_file.read_text(encoding="utf-8"), encoding="utf-8")
    (dest / "dvc.lock").write_text(lock_text, encoding="utf-8")
    ensure_dvc(dest, remote or ws.dvc_remote)
    _dvc(Workspace(dest, ws.settings), "pull", "--quiet", "data/prepared")
    return dest / "data" / "prepared"
