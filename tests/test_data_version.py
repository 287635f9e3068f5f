"""The data version on real DVC in a real git repository: `dvc repro` of the preprocess stage, the push to the
workspace's local remote, the md5s in dvc.lock, and restoring an old version from the remote."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kaizen.tasks.data_version import DataVersion, build_data_version, read_data_version, restore_data_version
from kaizen.tasks.preprocess import prepare, write_prepared
from kaizen.tasks.workspace import Workspace


def write_batch(ws: Workspace, batch_id: str, rows: pd.DataFrame) -> None:
    """An accepted batch as collect writes it: text, label, source, source_row."""
    batch = rows[["text", "label"]].reset_index(drop=True)
    batch = batch.assign(source=f"{batch_id}.csv", source_row=range(1, len(batch) + 1))
    ws.accepted_dir.mkdir(parents=True, exist_ok=True)
    batch.to_parquet(ws.batch_file(batch_id), index=False)


def real_rows(domains: dict[str, pd.DataFrame], name: str, n: int, seed: int) -> pd.DataFrame:
    frame = domains[name]
    return frame[frame["label"].isin(["negative", "positive"])].sample(n=n, random_state=seed)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def remote_object(ws: Workspace, md5: str) -> Path:
    """Where DVC 3 keeps an object in a local remote."""
    return ws.dvc_remote_dir / "files" / "md5" / md5[:2] / md5[2:]


def lock_md5s(ws: Workspace) -> tuple[str, str]:
    stage = yaml.safe_load(ws.dvc_lock.read_text())["stages"]["preprocess"]
    deps = {d["path"]: d["md5"] for d in stage["deps"]}
    outs = {o["path"]: o["md5"] for o in stage["outs"]}
    return outs["data/prepared"], deps["data/accepted"]


def set_param(ws: Workspace, section: str, key: str, value: object) -> None:
    params = yaml.safe_load(ws.params_file.read_text())
    params[section][key] = value
    ws.params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_read_data_version_needs_the_preprocess_stage() -> None:
    with pytest.raises(ValueError, match="preprocess"):
        read_data_version("schema: '2.0'\nstages: {}\n")
    with pytest.raises(ValueError, match="preprocess"):
        read_data_version("")
    lock = ("schema: '2.0'\nstages:\n  preprocess:\n    cmd: python -m tasks.preprocess\n"
            "    deps:\n    - path: data/accepted\n      md5: aaa.dir\n"
            "    outs:\n    - path: data/prepared\n      md5: 0123456789abcdef0123.dir\n")
    version = read_data_version(lock)
    assert version == DataVersion(prepared_md5="0123456789abcdef0123.dir", accepted_md5="aaa.dir", lock=lock)
    assert version.short == "0123456789ab"


def test_data_version_lifecycle(make_workspace, domains: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    ws = make_workspace()
    first = {"batch-0001": real_rows(domains, "movies", 150, seed=1),
             "batch-0002": real_rows(domains, "amazon", 120, seed=2)}
    for batch_id, rows in first.items():
        write_batch(ws, batch_id, rows)

    # --- the first version: the stage ran, its outputs are in the lock and in the remote -----------------
    v1 = build_data_version(ws)
    assert ws.dvc_lock.is_file()
    assert (v1.prepared_md5, v1.accepted_md5) == lock_md5s(ws)
    assert v1.prepared_md5.endswith(".dir") and v1.accepted_md5.endswith(".dir")
    assert v1.lock == ws.dvc_lock.read_text()
    for batch_id in first:
        for split in ("train", "val", "test"):
            assert ws.split_file(batch_id, split).is_file()
    assert ws.split_file("batch-0002", "replay").is_file()
    assert not ws.split_file("batch-0001", "replay").exists()

    # The stage is the pure function: the same bytes as prepare() on the same batches and params.
    expected = tmp_path / "expected"
    batches = {b: pd.read_parquet(ws.batch_file(b)) for b in first}
    write_prepared(prepare(batches, ws.settings.preprocess, ws.settings.replay), expected)
    v1_files = snapshot(ws.prepared_dir)
    assert v1_files == snapshot(expected)

    # The remote holds the directory listing and every file of it, byte for byte.
    listing = json.loads(remote_object(ws, v1.prepared_md5).read_text())
    assert sorted(entry["relpath"] for entry in listing) == sorted(v1_files)
    for entry in listing:
        pushed = remote_object(ws, entry["md5"])
        assert pushed.is_file(), entry["relpath"]
        assert hashlib.md5(v1_files[entry["relpath"]]).hexdigest() == entry["md5"]
        assert pushed.read_bytes() == v1_files[entry["relpath"]]

    # --- nothing changed: the same version, and the stage did not run again --------------------------
    stamp = (ws.prepared_dir / "summary.json").stat().st_mtime_ns
    assert build_data_version(ws) == v1
    assert (ws.prepared_dir / "summary.json").stat().st_mtime_ns == stamp

    # --- a new batch: a new version, the earlier batches' files untouched ------------------------------
    write_batch(ws, "batch-0003", real_rows(domains, "finefood", 130, seed=3))
    v2 = build_data_version(ws)
    assert v2.prepared_md5 != v1.prepared_md5 and v2.accepted_md5 != v1.accepted_md5
    assert (v2.prepared_md5, v2.accepted_md5) == lock_md5s(ws)
    v2_files = snapshot(ws.prepared_dir)
    for name, data in v1_files.items():
        if name != "summary.json":
            assert v2_files[name] == data, name
    assert ws.split_file("batch-0003", "replay").is_file()

    # --- a changed preprocess param: a new version of the same batches --------------------------------
    set_param(ws, "preprocess", "seed", 14)
    v3 = build_data_version(ws)
    assert v3.accepted_md5 == v2.accepted_md5
    assert v3.prepared_md5 not in (v1.prepared_md5, v2.prepared_md5)
    assert remote_object(ws, v3.prepared_md5).is_file()

    # --- the first version, restored from the remote after the workspace moved on ---------------------
    restored = restore_data_version(ws, v1.lock, tmp_path / "restore")
    assert restored == tmp_path / "restore" / "data" / "prepared"
    assert snapshot(restored) == v1_files
    assert snapshot(ws.prepared_dir) != v1_files  # the workspace itself still holds v3
    assert lock_md5s(ws) == (v3.prepared_md5, v3.accepted_md5)


def test_dvc_repro_by_hand(make_workspace, domains: dict[str, pd.DataFrame]) -> None:
    """The pipeline is an ordinary DVC project: `dvc repro` from a shell builds what the loop builds."""
    ws = make_workspace(replay__ratio=1.0, preprocess__max_test_rows=20)
    write_batch(ws, "batch-0001", real_rows(domains, "airline", 120, seed=4))
    write_batch(ws, "batch-0002", real_rows(domains, "movies", 100, seed=5))

    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ws.root, env=dvc_env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout
    prepared_md5, accepted_md5 = lock_md5s(ws)
    summary = json.loads((ws.prepared_dir / "summary.json").read_text())
    assert summary["batch-0001"]["test"] == 20  # the workspace's params were used
    assert summary["batch-0002"]["replay"] == summary["batch-0002"]["train"]

    # The loop then finds nothing to rebuild: the same version, now pushed.
    version = build_data_version(ws)
    assert (version.prepared_md5, version.accepted_md5) == (prepared_md5, accepted_md5)
    assert remote_object(ws, prepared_md5).is_file()
