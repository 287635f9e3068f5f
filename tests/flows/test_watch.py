"""flows/watch.py: the kaizen-watch flow run once on the session's Prefect server, on a shifted stream of captured
traffic (its verdict, its event, its artifact); and its deployment, on `watch.cron` beside the loop's. (The step
itself: tests/serving/test_watch.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kaizen.flows.deployment import build_watch
from kaizen.flows.watch import watch
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import sample
from tests.support.traffic import drift_event, served, trained_copy


@pytest.fixture
def ws(champion_ws, domains, tmp_path) -> Workspace:
    return trained_copy(champion_ws, sample(domains["movies"], 600, seed=21), tmp_path / "ws")


def test_the_flow_reports_drift_on_a_shifted_stream(ws, domains, prefect_server) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    texts = sample(domains["amazon"], 60, seed=8)["text"].tolist() + sample(domains["airline"], 60, seed=8)["text"].tolist()
    served(ws, texts, datetime.now(UTC) - timedelta(hours=1))
    state = watch(str(ws.root), return_state=True)
    found = state.result()
    assert state.is_completed() and found["verdict"] == "drift shown" and found["answered"] == len(texts)
    assert drift_event(ws, found["run_id"])["flow_run_id"] == str(state.state_details.flow_run_id)  # links the run
    with get_client(sync_client=True) as client:
        (artifact,) = [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["kaizen-watch"]))) if a.flow_run_id == state.state_details.flow_run_id]
    shown = str(artifact.data)
    assert f"drift shown: {len(texts)} answered" in shown and "| text | " in shown


def test_the_watch_is_deployed_on_its_own_cron(ws, prefect_server) -> None:
    from prefect.client.orchestration import get_client

    deployment_id = build_watch(ws).apply()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.name == ws.workspace_id and deployment.entrypoint == "kaizen.flows.watch.watch"
    assert [getattr(s.schedule, "cron", None) for s in deployment.schedules] == [ws.settings.watch.cron] == [
        "17 * * * *"]
    assert deployment.parameters == {"workspace": str(ws.root)}
