"""The data version on real DVC in a real git repository: `dvc repro` of the per-batch split stages and the
replay stage, the push to the workspace's local remote, the md5s in dvc.lock, and restoring an old version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kaizen.tasks.data.data_version import build_data_version, read_data_version, restore_data_version
from kaizen.tasks.data.preprocess import prepare, write_prepared
from kaizen.tasks.ingest.corrections import write_correction_files
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.repo import write_stage_vars
from tests.support.files import digests
from tests.support.workspaces import REPO


def write_batch(ws: Workspace, batch_id: str, rows: pd.DataFrame) -> None:
    """An accepted batch as collect writes it (text, label, source, source_row), and the stage list and the batch's
    corrections (none) updated, as collect updates them when a batch forms."""
    batch = rows[["text", "label"]].reset_index(drop=True)
    batch = batch.assign(source=f"{batch_id}.csv", source_row=range(1, len(batch) + 1))
    ws.accepted_dir.mkdir(parents=True, exist_ok=True)
    batch.to_parquet(ws.batch_file(batch_id), index=False)
    write_stage_vars(ws.root)
    with Ledger(ws.ledger_db) as ledger:
        write_correction_files(ws, ledger, [batch_id])


def real_rows(domains: dict[str, pd.DataFrame], name: str, n: int, seed: int) -> pd.DataFrame:
    frame = domains[name]
    return frame[frame["label"].isin(["negative", "positive"])].sample(n=n, random_state=seed)


def remote_object(ws: Workspace, md5: str) -> Path:
    """Where DVC 3 keeps an object in a local remote."""
    return ws.dvc_remote_dir / "files" / "md5" / md5[:2] / md5[2:]


def lock_outs(ws: Workspace) -> dict[str, str]:
    stages = yaml.safe_load(ws.dvc_lock.read_text())["stages"]
    return {o["path"]: o["md5"] for stage in stages.values() for o in stage["outs"]}


def set_param(ws: Workspace, section: str, key: str, value: object) -> None:
    params = yaml.safe_load(ws.params_file.read_text())
    params[section][key] = value
    ws.params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


LOCK = """schema: '2.0'
stages:
  split@batch-0001:
    cmd: python -m kaizen.tasks.data.preprocess split batch-0001
    deps:
    - path: data/accepted/batch-0001.parquet
      md5: aaa
    outs:
    - path: data/prepared/batch-0001
      md5: 111.dir
  replay:
    cmd: python -m kaizen.tasks.data.preprocess replay batch-0001
    deps:
    - path: data/prepared
      md5: 999.dir
    outs:
    - path: data/replay
      md5: 222.dir
"""


def test_the_data_version_names_every_output_and_needs_the_stages() -> None:
    with pytest.raises(ValueError, match="`split` and `replay` stages"):
        read_data_version("schema: '2.0'\nstages: {}\n")
    with pytest.raises(ValueError, match="`split` and `replay` stages"):
        read_data_version("")
    version = read_data_version(LOCK)
    assert version.outs == {"data/prepared/batch-0001": "111.dir", "data/replay": "222.dir"}
    assert len(version.prepared_md5) == 32 and version.short == version.prepared_md5[:12]
    assert read_data_version(LOCK.replace("222.dir", "223.dir")).prepared_md5 != version.prepared_md5
    assert read_data_version(LOCK.replace("md5: aaa", "md5: aab")).accepted_md5 != version.accepted_md5
    assert read_data_version(LOCK.replace("md5: aaa", "md5: aab")).prepared_md5 == version.prepared_md5


def test_data_version_lifecycle(make_workspace, domains: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    ws = make_workspace()
    first = {"batch-0001": real_rows(domains, "movies", 150, seed=1),
             "batch-0002": real_rows(domains, "amazon", 120, seed=2)}
    for batch_id, rows in first.items():
        write_batch(ws, batch_id, rows)

    # --- the first version: every stage ran, its outputs are in the lock and in the remote ----------------
    v1 = build_data_version(ws, "batch-0002")
    assert v1.lock == ws.dvc_lock.read_text() and v1.outs == lock_outs(ws)
    assert set(v1.outs) == {"data/prepared/batch-0001", "data/prepared/batch-0002", "data/replay"}
    for batch_id in first:
        for split in ("train", "val", "test"):
            assert ws.split_file(batch_id, split).is_file()
    assert json.loads((ws.replay_dir / "target.json").read_text()) == {"batch": "batch-0002"}

    # The stages are the pure functions: the same bytes as prepare() on the same batches and params.
    expected = tmp_path / "expected"
    batches = {b: pd.read_parquet(ws.batch_file(b)) for b in first}
    prepared = prepare(batches, ws.settings.preprocess, ws.settings.replay)
    write_prepared(prepared, expected)
    v1_files = digests(ws.prepared_dir)
    assert v1_files == digests(expected)
    pd.testing.assert_frame_equal(pd.read_parquet(ws.replay_dir / "replay.parquet"), prepared["batch-0002"]["replay"])

    # The remote holds every output's listing and every file of it, byte for byte.
    for out, md5 in v1.outs.items():
        listing = json.loads(remote_object(ws, md5).read_text())
        for entry in listing:
            assert remote_object(ws, entry["md5"]).read_bytes() == (ws.root / out / entry["relpath"]).read_bytes()

    # --- nothing changed: the same version, and no stage ran again ---------------------------------------
    stamps = {p: p.stat().st_mtime_ns for p in ws.prepared_dir.rglob("*.parquet")}
    assert build_data_version(ws, "batch-0002") == v1
    assert {p: p.stat().st_mtime_ns for p in ws.prepared_dir.rglob("*.parquet")} == stamps

    # --- a new batch: only its split runs; the earlier batches' outputs, md5s and files are untouched -----
    write_batch(ws, "batch-0003", real_rows(domains, "finefood", 130, seed=3))
    v2 = build_data_version(ws, "batch-0003")
    assert v2.prepared_md5 != v1.prepared_md5 and v2.accepted_md5 != v1.accepted_md5
    for batch_id in first:
        assert v2.outs[f"data/prepared/{batch_id}"] == v1.outs[f"data/prepared/{batch_id}"]
    assert {p: p.stat().st_mtime_ns for p in ws.prepared_dir.rglob("*.parquet") if p in stamps} == stamps
    assert json.loads((ws.replay_dir / "target.json").read_text()) == {"batch": "batch-0003"}
    assert set(pd.read_parquet(ws.replay_dir / "replay.parquet")["batch"]) == set(first)

    # --- a changed preprocess param: every split is new --------------------------------------------------
    set_param(ws, "preprocess", "seed", 14)
    v3 = build_data_version(ws, "batch-0003")
    assert v3.accepted_md5 == v2.accepted_md5
    assert all(v3.outs[out] != v2.outs[out] for out in v2.outs if out.startswith("data/prepared/"))
    assert all(remote_object(ws, md5).is_file() for md5 in v3.outs.values())

    # --- the first version, restored from the remote after the workspace moved on ---------------------
    restored = restore_data_version(ws, v1.lock, tmp_path / "restore")
    assert restored == tmp_path / "restore" / "data"
    assert digests(restored / "prepared") == v1_files
    pd.testing.assert_frame_equal(pd.read_parquet(restored / "replay" / "replay.parquet"),
                                  prepared["batch-0002"]["replay"])
    assert digests(ws.prepared_dir) != v1_files  # the workspace itself still holds v3
    assert lock_outs(ws) == v3.outs


def test_dvc_repro_by_hand(make_workspace, domains: dict[str, pd.DataFrame]) -> None:
    """The pipeline is an ordinary DVC project: `dvc repro` from a shell builds what the loop builds."""
    ws = make_workspace(replay__ratio=1.0, preprocess__max_test_rows=20)
    write_batch(ws, "batch-0001", real_rows(domains, "airline", 120, seed=4))
    write_batch(ws, "batch-0002", real_rows(domains, "movies", 100, seed=5))

    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ws.root, env=dvc_env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout
    outs = lock_outs(ws)
    summary = json.loads((ws.prepared_dir / "batch-0001" / "summary.json").read_text())
    assert summary["test"] == 20  # the workspace's params were used
    replay = json.loads((ws.replay_dir / "summary.json").read_text())["replay"]
    assert replay == json.loads((ws.prepared_dir / "batch-0002" / "summary.json").read_text())["train"]

    # The loop then finds nothing to rebuild: the same version, now pushed.
    version = build_data_version(ws, "batch-0002")
    assert version.outs == outs
    assert all(remote_object(ws, md5).is_file() for md5 in outs.values())


def test_a_new_batch_is_reproduced_alone_unless_an_earlier_split_is_stale(
        make_workspace, domains: dict[str, pd.DataFrame], monkeypatch) -> None:
    """The loop reproduces a new batch's split and the replay sample without DVC checking every earlier split
    (that check grows with the history); a changed parameter or an earlier output gone still rebuilds them."""
    from kaizen.tasks.data import data_version

    ws = make_workspace(preprocess__max_test_rows=20)
    calls: list[tuple[str, ...]] = []
    real_dvc = data_version.run_dvc
    monkeypatch.setattr(data_version, "run_dvc", lambda w, *args: calls.append(args) or real_dvc(w, *args))
    reproduced = lambda: [c for c in calls if c[0] == "repro"]  # noqa: E731

    for i, name in enumerate(("movies", "amazon"), start=1):
        write_batch(ws, f"batch-000{i}", real_rows(domains, name, 100, seed=i))
    build_data_version(ws, "batch-0002")
    assert reproduced() == [("repro", "--single-item", "split@batch-0001", "split@batch-0002", "replay")]

    # A third batch: its split and the replay alone, and the earlier splits stay what they were.
    before = lock_outs(ws)
    calls.clear()
    write_batch(ws, "batch-0003", real_rows(domains, "finefood", 100, seed=3))
    v3 = build_data_version(ws, "batch-0003")
    assert reproduced() == [("repro", "--single-item", "split@batch-0003", "replay")]
    assert {o: v3.outs[o] for o in before if o.startswith("data/prepared/")} == \
           {o: md5 for o, md5 in before.items() if o.startswith("data/prepared/")}

    # A changed parameter with a new batch: the new split is made the new way, so every earlier one is stale,
    # and the full `dvc repro` makes them all again, as a full repro from nothing would.
    calls.clear()
    set_param(ws, "preprocess", "max_test_rows", 15)
    write_batch(ws, "batch-0004", real_rows(domains, "airline", 100, seed=4))
    v4 = build_data_version(ws, "batch-0004")
    assert [c[:2] for c in reproduced()] == [("repro", "--single-item"), ("repro",)]
    for b in ("batch-0001", "batch-0002", "batch-0003", "batch-0004"):
        assert json.loads((ws.prepared_dir / b / "summary.json").read_text())["test"] == 15
        assert v4.outs[f"data/prepared/{b}"] != before.get(f"data/prepared/{b}")

    # An earlier split's output removed by hand: DVC is asked to check everything, and restores it.
    calls.clear()
    for path in (ws.prepared_dir / "batch-0002").iterdir():
        path.unlink()
    write_batch(ws, "batch-0005", real_rows(domains, "movies", 100, seed=5))
    v5 = build_data_version(ws, "batch-0005")
    assert reproduced() == [("repro",)]
    assert v5.outs["data/prepared/batch-0002"] == v4.outs["data/prepared/batch-0002"]
    assert ws.split_file("batch-0002", "test").is_file()


def test_a_checkout_of_kaizen_as_the_workspace_versions_its_data(make_workspace, domains) -> None:
    """`make demo` runs in the repository, which also holds kaizen/templates/dvc.yaml (a link to the
    pipeline, package data). DVC must not read it as a second pipeline: its `vars` do not resolve there, and
    `dvc push` failed on it (with --quiet, without a word of why)."""
    ws = make_workspace()
    templates = ws.root / "kaizen" / "templates"
    templates.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):  # as the repository has them
        (templates / name).symlink_to(Path("..") / ".." / name)
    write_batch(ws, "batch-0001", real_rows(domains, "movies", 100, seed=6))
    version = build_data_version(ws, "batch-0001")
    assert all(remote_object(ws, md5).is_file() for md5 in version.outs.values())

    # Without the workspace's ignore pattern DVC fails there, and the error gives DVC's reason.
    dvcignore = ws.root / ".dvcignore"
    dvcignore.write_text("\n".join(line for line in dvcignore.read_text().splitlines() if "templates" not in line))
    write_batch(ws, "batch-0002", real_rows(domains, "amazon", 100, seed=7))
    with pytest.raises(RuntimeError, match=r"kaizen/templates/dvc\.yaml"):
        build_data_version(ws, "batch-0002")


def test_the_repository_ignores_its_templates_as_every_workspace_does() -> None:
    """The checkout is a workspace too (`make demo`): its tracked .dvcignore already has the patterns, so the
    demo does not change a tracked file (nor commit one)."""
    from kaizen.tasks.workspace.repo import DVC_IGNORED

    lines = (REPO / ".dvcignore").read_text().splitlines()
    assert all(pattern in lines for pattern in DVC_IGNORED)


def test_a_failing_stage_raises_with_its_traceback_and_dvc_leaves_the_streams_alone(make_workspace, domains) -> None:
    """DVC runs in this process, its stages in children whose stderr it does not capture: the stage's traceback
    still reaches the error, and importing DVC (colorama wraps the standard streams for its CLI) changes nothing."""
    streams = sys.stdout, sys.stderr
    ws = make_workspace()
    write_batch(ws, "batch-0001", real_rows(domains, "movies", 100, seed=8))
    ws.batch_file("batch-0001").write_bytes(b"not a parquet file")
    with pytest.raises(RuntimeError) as caught:
        build_data_version(ws, "batch-0001")
    message = str(caught.value)
    assert "failed to reproduce 'split@batch-0001'" in message and "the stage's error:" in message, message
    assert "Traceback" in message and "Parquet magic bytes not found" in message, message  # pyarrow's own words
    assert (sys.stdout, sys.stderr) == streams


def test_a_remote_that_cannot_be_written_fails_the_push_in_words(make_workspace, domains, tmp_path) -> None:
    """An error of the OS inside DVC (not one of DVC's own) is still a RuntimeError naming the command and why."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the remote's folder should be")
    ws = make_workspace(storage__dvc_remote=str(blocker / "remote"))
    write_batch(ws, "batch-0001", real_rows(domains, "movies", 100, seed=9))
    with pytest.raises(RuntimeError, match=r"`dvc push` failed in .*Not a directory"):
        build_data_version(ws, "batch-0001")
