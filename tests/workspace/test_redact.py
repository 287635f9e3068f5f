"""tasks.redact: credentials in the landing zone's URL or the tracking URI never reach a logged param, a tag, an
event, an artifact or a log line, while the loop uses them as given."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import fsspec

from kaizen.flows.loop import iteration
from kaizen.tasks.notify import arrivals
from kaizen.tasks.notify.events import ARRIVED
from kaizen.tasks.registry import record, tracking
from kaizen.tasks.workspace.redact import redact
from tests.support.files import sample

SECRET = "hunter2-landing-secret"
# A token as the URL's user (a password in params.yaml is refused outright: storage settings, issue 14).
LANDING = f"memory://{SECRET}@bucket/landing"


def test_redact_masks_user_information_and_secret_query_values() -> None:
    assert redact(f"s3://KEY:{SECRET}@bucket/x") == "s3://KEY:***@bucket/x"  # a user's name stays, not its password
    assert redact("https://TOKEN@host/repo.git") == "https://***@host/repo.git"
    assert redact("gs://b/x?X-Goog-Signature=abc&generation=2") == "gs://b/x?X-Goog-Signature=***&generation=2"
    assert redact("https://h/x?token=abc#frag") == "https://h/x?token=***#frag"
    assert redact("data/landing and http://127.0.0.1:5000") == "data/landing and http://127.0.0.1:5000"



def test_redact_masks_the_key_in_a_webhook_path() -> None:
    assert redact("https://hooks.slack.com/services/T000/B000/XXXX") == "https://hooks.slack.com/services/***"
    assert redact("https://discord.com/api/webhooks/1234/TOKEN") == "https://discord.com/api/webhooks/***"
    assert redact("https://acme.webhook.office.com/webhookb2/a1@b2/IncomingWebhook/c3/d4") == \
        "https://acme.webhook.office.com/webhookb2/***"
    # any other host: from the first generated-looking segment after /services/, /webhooks/ or /hooks/
    assert redact("https://chat.example/hooks/xk8s7d6f5g4h") == "https://chat.example/hooks/***"
    assert redact("https://relay.example/webhooks/ops/aB3dE5gH7jK9?x=1") == "https://relay.example/webhooks/ops/***?x=1"
    assert redact("'https://hooks.slack.com/services/T1/B2/C3'") == "'https://hooks.slack.com/services/***'"  # a repr
    # words after the marker, and ids elsewhere in a path, are no key: a link stays whole
    for kept in ("http://127.0.0.1:8000/hooks/kaizen", "https://mlflow.example/services/mlflow/#/runs/0123abcd4567ef",
                 "s3://bucket/landing/2024-05-01/batch-0001.csv"):
        assert redact(kept) == kept

def test_credentials_in_the_landing_url_reach_no_param_tag_artifact_event_or_log(make_workspace, domains,
                                                                                prefect_server, caplog,
                                                                                capfd, tmp_path, monkeypatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.events.filters import EventFilter, EventNameFilter

    ws = make_workspace(storage__landing=LANDING)
    fs, root = fsspec.core.url_to_fs(LANDING)
    fs.pipe_file(f"{root}/movies.csv", sample(domains["movies"], 40, seed=60).to_csv(index=False).encode())

    from prefect.settings import PREFECT_API_URL

    # INFO and above, what a run logs: fsspec's own DEBUG lines name the memory filesystem's paths, which (unlike
    # s3:// or gs:// paths) keep the URL's user information.
    with caplog.at_level(logging.INFO):
        summary = iteration(str(ws.root))
        monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the test server, as `kaizen up` gives it
        arrivals.emit(ws, ["more.csv"])

    assert summary["batch"] == "batch-0001" and not fs.exists(f"{root}/movies.csv")  # read with its credentials
    seen = [caplog.text, *capfd.readouterr()]
    client = tracking.connect(ws)
    run = client.get_run(summary["run_id"])
    assert run.data.params["storage.landing"] == "memory://***@bucket/landing"
    seen += [*run.data.params.values(), *run.data.tags.values()]
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    assert json.loads((local / record.SETTINGS_FILE).read_text())["storage"]["landing"] == "memory://***@bucket/landing"
    seen += [p.read_bytes().decode("utf-8", "replace") for p in local.rglob("*") if p.is_file()]
    mv = tracking.model_version(client, ws.settings.model.registered_name, "1")
    seen += list(mv.tags.values())
    flow_run_id = run.data.tags["kaizen.prefect_flow_run_id"]
    with get_client(sync_client=True) as prefect:
        seen += [a.data or "" for a in prefect.read_artifacts(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))]
        seen += [log.message for log in prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[flow_run_id])))]
        for _ in range(30):  # the server stores an event a moment after it accepts it
            events = [e for e in prefect.read_events(EventFilter(event=EventNameFilter(name=[ARRIVED])),
                                                     limit=50).events
                      if e.resource.id == f"kaizen.workspace.{ws.workspace_id}"]
            if events:
                break
            time.sleep(1)
    (event,) = events
    assert event.payload["landing"] == "memory://***@bucket/landing"
    seen += [event.model_dump_json()]
    leaks = [line for text in seen for line in str(text).splitlines() if SECRET in line]
    assert leaks == []
