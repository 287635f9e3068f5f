"""The data version: run the DVC pipeline, push its outputs, and read the md5s that name what was trained on.

Each output has its own md5 in dvc.lock (each batch's splits, the replay sample); the data version is one md5
over all of them, so it names everything a challenger was trained, validated and tested on.

DVC runs in this process (tasks/workspace/repo.py), its stages in processes with the environment kaizen gives
its children.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kaizen.tasks.ingest.corrections import corrections, mark_applied, write_correction_files
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.workspace.environment import child_environment
from kaizen.tasks.workspace.faults import kill_point
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.objects import md5_of
from kaizen.tasks.workspace.repo import configure_remote, run_dvc_command, write_stage_vars, write_trust_file


@dataclass(frozen=True)
class DataVersion:
    prepared_md5: str  # one md5 over every output's md5: the training, validation, test and replay data
    accepted_md5: str  # one md5 over the accepted batches they were built from
    lock: str  # the whole dvc.lock, so the version can be restored from the remote later
    outs: dict[str, str] = field(default_factory=dict)  # each output (data/prepared/<batch>, data/replay) -> md5

    @property
    def short(self) -> str:
        return self.prepared_md5[:12]


def load_yaml(text: str):
    """YAML with libyaml's safe loader when PyYAML has it: dvc.lock grows by about 30 lines a batch, and the
    pure-Python loader takes about 60 ms for 50 batches, parsed several times an iteration."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)


def _digest(entries: dict[str, str]) -> str:
    return hashlib.md5("".join(f"{path} {md5}\n" for path, md5 in sorted(entries.items())).encode()).hexdigest()


def run_dvc(ws: Workspace, *args: str) -> None:
    """`dvc ARGS` in the workspace (repro, push or pull), its stages in children of this process."""
    run_dvc_command(ws.root, args, child_environment(ws))


def read_data_version(lock_text: str) -> DataVersion:
    lock = load_yaml(lock_text) or {}
    stages = lock.get("stages", {})
    if not any(name.startswith("split@") for name in stages) or "replay" not in stages:
        raise ValueError("dvc.lock has no `split` and `replay` stages: run the pipeline first")
    outs = {o["path"]: o["md5"] for stage in stages.values() for o in stage.get("outs", [])}
    accepted = {d["path"]: d["md5"] for name, stage in stages.items() if name.startswith("split@")
                for d in stage.get("deps", []) if d["path"].startswith("data/accepted/")}
    return DataVersion(prepared_md5=_digest(outs), accepted_md5=_digest(accepted), lock=lock_text, outs=outs)


def lock_stage_vars(lock_text: str) -> tuple[list[str], str]:
    """The batches and the batch being learned that a recorded dvc.lock was made with."""
    stages = (load_yaml(lock_text) or {}).get("stages", {})
    batches = sorted(name.removeprefix("split@") for name in stages if name.startswith("split@"))
    return batches, stages["replay"]["cmd"].split()[-1]


def build_data_version(ws: Workspace, learning: str) -> DataVersion:
    """`dvc repro` for the batch being `learning` (only what changed runs: a new batch's split, the replay
    sample), `dvc push` to the remote (only new objects travel), and the resulting version."""
    configure_remote(ws.root, ws.dvc_remote)  # params.yaml's storage.dvc_remote may have changed since
    stage_vars = load_yaml(write_stage_vars(ws.root, learning).read_text(encoding="utf-8"))
    with Ledger(ws.ledger_db) as ledger:
        write_trust_file(ws.trust_file, ledger.suspect_batches())
        write_correction_files(ws, ledger, stage_vars["batches"])
        _check_pipeline_reads_corrections(ws, ledger)
    reproduce(ws, stage_vars["batches"])
    kill_point("preprocess:reproduced")
    run_dvc(ws, "push")
    lock = ws.dvc_lock.read_text(encoding="utf-8")
    version = read_data_version(lock)
    with Ledger(ws.ledger_db) as ledger:  # where the next iteration, on any machine, finds the pipeline's state
        ledger.record_data_version(learning, version.prepared_md5, lock)
        mark_applied(ledger, stage_vars["batches"], learning)  # the corrections this version is the first with
    return version


CORRECTIONS_DEP = "data/corrections/${item}.parquet"  # the `split` stage's input of corrected labels (dvc.yaml)


def _check_pipeline_reads_corrections(ws: Workspace, ledger: Ledger) -> None:
    """A workspace made before corrections existed keeps its dvc.yaml, whose stages would never see them: refused,
    saying how to fix it, rather than training on labels the ledger says are wrong."""
    if CORRECTIONS_DEP not in (ws.root / "dvc.yaml").read_text(encoding="utf-8") and corrections(ledger):
        raise RuntimeError(f"the ledger holds label corrections, but {ws.root / 'dvc.yaml'} does not list "
                           f"{CORRECTIONS_DEP} among the `split` stage's deps, so they would never be applied: add it "
                           "(kaizen's template, kaizen/templates/dvc.yaml, has it)")


def reproduce(ws: Workspace, batches: list[str]) -> None:
    """`dvc repro`, at a cost that does not grow with the history when nothing but new batches changed.

    A full `dvc repro` checks every batch's `split` stage, about 30 ms each, though an accepted batch never
    changes. So the new batches' splits and the replay sample are reproduced alone (`--single-item`), and then
    every split in dvc.lock must have been made the way the new ones just were: the same command, parameters and
    stage code, and its output folder still holding the files and bytes it was locked with. If any was not (a
    changed `preprocess` parameter, a kaizen upgrade, a folder removed by hand), the full `dvc repro` follows
    and rebuilds what is stale, replay included."""
    locked = split_stages(ws)
    new = [f"split@{b}" for b in batches if f"split@{b}" not in locked]
    corrected = [f"split@{b}" for b in batches if f"split@{b}" in locked and _corrections_changed(ws, b, locked)]
    if (new or corrected) and all(out_intact(ws, stage) for stage in locked.values()):
        run_dvc(ws, "repro", "--single-item", *new, *corrected, "replay")
        if len({_recipe(name, stage) for name, stage in split_stages(ws).items()}) == 1:
            return
    run_dvc(ws, "repro")


def _corrections_changed(ws: Workspace, batch: str, locked: dict[str, dict]) -> bool:
    """The batch's corrections are not those its split was locked with, or a split locked before corrections
    existed (a small file: hashed, not stat'd)."""
    path, dep = ws.corrections_file(batch), CORRECTIONS_DEP.replace("${item}", batch)
    md5s = [d.get("md5") for d in locked[f"split@{batch}"].get("deps", []) if d["path"] == dep]
    return not md5s or md5s[0] != (md5_of(path) if path.exists() else None)


def split_stages(ws: Workspace) -> dict[str, dict]:
    lock = load_yaml(ws.dvc_lock.read_text(encoding="utf-8")) if ws.dvc_lock.exists() else None
    return {name: stage for name, stage in ((lock or {}).get("stages") or {}).items() if name.startswith("split@")}


def _recipe(name: str, stage: dict) -> str:
    """How a split stage was made, without what names its batch: command, parameters and code dependencies."""
    batch = name.removeprefix("split@")
    deps = sorted((d["path"], d.get("md5")) for d in stage.get("deps", [])
                  if d["path"] not in (f"data/accepted/{batch}.parquet", CORRECTIONS_DEP.replace("${item}", batch)))
    return json.dumps([stage["cmd"].removesuffix(batch), stage.get("params"), deps], sort_keys=True)


def out_intact(ws: Workspace, stage: dict) -> bool:
    """The output folder holds as many files and bytes as dvc.lock says (a stat of each, no hashing)."""
    for out in stage.get("outs", []):
        files = [p for p in (ws.root / out["path"]).rglob("*") if p.is_file()]
        if len(files) != out.get("nfiles") or sum(p.stat().st_size for p in files) != out.get("size"):
            return False
    return True


def restore_data_version(ws: Workspace, lock_text: str, dest: Path, remote: str | None = None) -> Path:
    """Materialise the prepared data of a recorded version from a DVC remote (default: the workspace's) into
    `dest`, a new DVC repository with that remote as its default: `dvc pull` works there too."""
    from kaizen.tasks.workspace.repo import ensure_dvc

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dvc.yaml").write_text((ws.root / "dvc.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (dest / "params.yaml").write_text(ws.params_file.read_text(encoding="utf-8"), encoding="utf-8")
    (dest / "dvc.lock").write_text(lock_text, encoding="utf-8")
    ensure_dvc(dest, remote or ws.dvc_remote)
    batches, learning = lock_stage_vars(lock_text)
    write_stage_vars(dest, learning, batches)
    outs = list(read_data_version(lock_text).outs)
    run_dvc(Workspace(dest, ws.settings), "pull", *outs)
    return dest / "data"
