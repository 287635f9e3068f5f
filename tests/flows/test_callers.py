"""Hostile callers of the Prefect API: a run of a deployment on a real Prefect server, asking for another folder
than its deployment's, is refused before it touches anything; a deployed scoring run reads and writes only under
`serving.roots` (`..`, symlinks, `file://`, URL schemes and encodings included); a deployed training run works
only on a job in its workspace's jobs folder. The runs are executed here, as a worker executes a flow run it
took from the server (prefect.flow_engine.run_flow): the deployment's id comes from the run, as there."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pandas as pd
import pytest

from kaizen.tasks.runtime.callers import Refused, job_folder, scoring_locations
from kaizen.tasks.workspace.layout import Workspace


def run_deployed(flow, deployment_id, **parameters):
    """A run of the deployment, created through the API with `parameters` as any caller may, then executed;
    its final state."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    return run_flow(flow, flow_run=run, parameters=run.parameters, return_type="state")


def test_a_deployed_loop_run_asking_for_another_folder_is_refused(copy_workspace, tmp_path: Path,
                                                                  prefect_server) -> None:
    from kaizen.flows.deployment import build
    from kaizen.flows.loop import iteration

    ws = copy_workspace({})
    deployment_id = build(ws).apply()
    foreign = tmp_path / "foreign"  # a folder whose dvc.yaml `dvc repro` would run
    foreign.mkdir()
    shutil.copy(ws.params_file, foreign / "params.yaml")
    (foreign / "dvc.yaml").write_text("stages:\n  own:\n    cmd: touch owned\n", encoding="utf-8")

    state = run_deployed(iteration, deployment_id, workspace=str(foreign))
    assert state.is_failed() and "may not choose another folder" in state.message, state.message
    assert f"workspace={str(ws.root)!r}" in state.message
    assert sorted(p.name for p in foreign.iterdir()) == ["dvc.yaml", "params.yaml"]  # nothing opened, made or run

    state = run_deployed(iteration, deployment_id, join="postgresql://someone@elsewhere/ledger")
    assert state.is_failed() and "join='postgresql://someone@elsewhere/ledger'" in state.message, state.message


def test_a_deployed_scoring_run_reads_and_writes_only_under_its_roots(champion_ws, domains, prefect_server) -> None:
    from kaizen.flows.deployment import build_scoring
    from kaizen.flows.scoring import score
    from tests.support.files import sample

    deployment_id = build_scoring(champion_ws).apply()
    here = champion_ws.root / f"callers-{uuid.uuid4().hex[:6]}"  # under the default root, the workspace's folder
    here.mkdir()
    try:
        sample(domains["movies"], 6, seed=3).to_csv(here / "in.csv", index=False)
        refused = {
            "outside": run_deployed(score, deployment_id, source="/etc/hostname", out=f"{here.name}/x.parquet"),
            "climbing": run_deployed(score, deployment_id, source=f"{here.name}/in.csv", out="../x.parquet"),
            "foreign": run_deployed(score, deployment_id, source=f"{here.name}/in.csv", out=f"{here.name}/x.parquet",
                                    workspace=str(here)),
        }
        done = run_deployed(score, deployment_id, source=f"{here.name}/in.csv", out=f"{here.name}/scored.parquet")
        scored = pd.read_parquet(here / "scored.parquet")
    finally:
        shutil.rmtree(here)
    assert all(state.is_failed() for state in refused.values()), {k: s.message for k, s in refused.items()}
    assert "source '/etc/hostname' lies outside serving.roots" in refused["outside"].message
    assert f"out {str(champion_ws.root.parent / 'x.parquet')!r} lies outside" in refused["climbing"].message
    assert "may not choose another folder" in refused["foreign"].message
    assert not (champion_ws.root.parent / "x.parquet").exists()
    assert done.is_completed(), done.message  # relative locations are taken in the workspace
    assert len(scored) == 6 and set(scored["model_version"]) == {"1"}


def test_a_deployed_training_run_works_only_on_its_workspaces_jobs(copy_workspace, tmp_path: Path,
                                                                   prefect_server) -> None:
    from kaizen.flows.training import train_job

    ws = copy_workspace({})
    deployment_id = train_job.to_deployment(name=f"test-{uuid.uuid4().hex[:6]}",
                                            parameters={"workspace": str(ws.root)}).apply()
    elsewhere = tmp_path / "job"
    elsewhere.mkdir()
    state = run_deployed(train_job, deployment_id, job=str(elsewhere))
    assert state.is_failed() and f"the training job {str(elsewhere)!r} is not in the jobs folder" in state.message
    state = run_deployed(train_job, deployment_id, job=str(elsewhere), workspace=str(tmp_path))
    assert state.is_failed() and "may not choose another folder" in state.message, state.message
    assert list(elsewhere.iterdir()) == []  # no train.log: nothing was started


# The checks themselves, on a real workspace: every way of naming a place outside the roots.


@pytest.fixture
def ws(copy_workspace, tmp_path: Path) -> Workspace:
    ws = copy_workspace({})
    (ws.root / "in").mkdir()
    (ws.root / "in" / "a.csv").write_text("text\nfine\n", encoding="utf-8")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "s.csv").write_text("text\nsecret\n", encoding="utf-8")
    return ws


def test_locations_inside_the_workspace_are_used_resolved(ws: Workspace) -> None:
    inside = str(ws.root / "in" / "a.csv")
    assert scoring_locations(ws, "in/a.csv", "out/s.parquet") == (inside, str(ws.root / "out" / "s.parquet"))
    assert scoring_locations(ws, f"file://{inside}", "in/../s.csv") == (inside, str(ws.root / "s.csv"))
    assert scoring_locations(ws, "data/accepted", "s.csv")[0] == str(ws.data_dir / "accepted")  # reading is fine


@pytest.mark.parametrize("source, out, refusal", [
    ("/etc/hostname", "s.parquet", "source '/etc/hostname' lies outside serving.roots"),
    ("in/../../secret/s.csv", "s.parquet", "lies outside serving.roots"),
    ("file:///etc/hostname", "s.parquet", "lies outside serving.roots"),
    ("FILE:///etc/hostname", "s.parquet", "lies outside serving.roots"),
    ("s3://bucket/in.csv", "s.parquet", "source 's3://bucket/in.csv' lies outside serving.roots"),
    ("https://internal.example/in.csv", "s.parquet", "lies outside serving.roots"),
    ("in/a.csv", "memory://s.parquet", "out 'memory://s.parquet' lies outside"),
    ("zip://a.csv::file:///etc/x.zip", "s.parquet", "a chained URL"),
    ("in/a.csv", "../s.parquet", "lies outside serving.roots"),
    (".kaizen/ledger.db", "s.parquet", "the loop's own: a deployed scoring run may not read there"),
    ("in/a.csv", "data/landing/labels.csv", "the loop's own: a deployed scoring run may not write there"),
    ("in/a.csv", "data/accepted/batch-0001.parquet", "may not write there"),
    ("in/a.csv", ".kaizen/servers/x.csv", "may not write there"),
])
def test_locations_outside_the_roots_are_refused(ws: Workspace, source: str, out: str, refusal: str) -> None:
    with pytest.raises(Refused, match=refusal.replace("(", r"\(").replace(".", r"\.")):
        scoring_locations(ws, source, out)


def test_links_are_followed_to_where_they_lead(ws: Workspace, tmp_path: Path) -> None:
    os.symlink(tmp_path / "secret" / "s.csv", ws.root / "in" / "link.csv")
    with pytest.raises(Refused, match=r"source '.*/secret/s\.csv' lies outside"):
        scoring_locations(ws, "in/link.csv", "s.parquet")  # the link itself
    with pytest.raises(Refused, match=r"source '.*/secret/s\.csv' lies outside"):
        scoring_locations(ws, "in", "s.parquet")  # a folder holding it
    (ws.root / "in" / "link.csv").unlink()
    os.symlink(tmp_path / "secret", ws.root / "in" / "deeper")
    with pytest.raises(Refused, match=r"source '.*/secret' lies outside"):
        scoring_locations(ws, "in", "s.parquet")  # a folder holding a link to a folder
    os.symlink(tmp_path, ws.root / "outward")
    with pytest.raises(Refused, match="lies outside"):
        scoring_locations(ws, "in/a.csv", "outward/s.parquet")  # written through a link


def test_roots_name_folders_and_url_prefixes(copy_workspace, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    ws = copy_workspace({"serving.roots": [str(shared), "s3://bucket/in", "S3://bucket/out/"]})
    assert scoring_locations(ws, "S3://bucket/in/a.csv", "s3://bucket/out/s.parquet") == (
        "s3://bucket/in/a.csv", "s3://bucket/out/s.parquet")
    assert scoring_locations(ws, str(shared / "a.csv"), str(shared / "s.csv"))[0] == str(shared / "a.csv")
    for source in ("s3://bucket/in/../secret.csv", "s3://bucket/in/%2e%2e/secret.csv", "s3://bucket/in/a%2F..%2F..%2Fx",
                   "s3://bucket/inside.csv", "s3a://bucket/in/a.csv", "s3://bucket/in/a.csv?versionId=1",
                   "s3://bucket/in\\..\\x", "s3://other/in/a.csv", "in/a.csv"):
        with pytest.raises(Refused):
            scoring_locations(ws, source, "s3://bucket/out/s.parquet")


def test_a_job_lies_in_the_workspaces_jobs_folder(ws: Workspace, tmp_path: Path) -> None:
    job = ws.runs_dir / "batch-0001" / "job"
    assert job_folder(ws, str(job)) == job
    assert job_folder(ws, ".kaizen/runs/batch-0001/job") == job
    ws.runs_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(tmp_path / "secret", ws.runs_dir / "linked", target_is_directory=True)
    for outside in (str(ws.runs_dir), str(tmp_path / "secret"), str(ws.runs_dir / ".." / "x"),
                    str(ws.runs_dir / "linked"), "s3://bucket/.kaizen/runs/b/job"):
        with pytest.raises(Refused, match="is not in the jobs folder"):
            job_folder(ws, outside)
