"""Alerts, approval and scoring on the served route: what each kaizen event says (unit), then a real served loop
(`kaizen up`, `kaizen serve` with `alerts.webhook_url` pointing at a local HTTP receiver and
`gate.require_approval` on): `kaizen serve` creates the automations; one run is approved through Prefect's API and
its promotion reaches the receiver; another is refused and its rejection reaches the receiver; the scoring
deployment scores with the champion; training and scoring report progress artifacts.

The served tests run in file order and share the servers (about a minute to start on 2 cores).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from kaizen.tasks.evaluation.reports import DriftResult
from kaizen.tasks.notify import alerts
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.record import IterationSummary
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import land, sample
from tests.support.processes import KAIZEN, cli_env, free_port, kaizen, start, stop, wait_until
from tests.support.services import FINAL, deployment_with_trigger, prefect, run_filter, runs_of
from tests.support.workspaces import make_ws

# --- what the events say ---------------------------------------------------------------------------------


def summary(decision: str, **changes) -> IterationSummary:
    values = dict(batch="batch-0003", files=1, rows_accepted=80, rows_quarantined=0, drift_share=0.75,
                  champion_score=0.7, challenger_score=0.8, decision=decision, reasons=["why one", "why two"],
                  champion_version="1", challenger_version="1", run_id=None)
    return IterationSummary(**{**values, **changes})


def test_each_decision_has_its_event_and_message(champion_ws) -> None:
    event, payload = alerts.decision_alert(champion_ws, summary("promoted"))
    assert event == "kaizen.champion.promoted"
    assert {"workspace": champion_ws.workspace_id, "batch": "batch-0003", "challenger_version": "1",
            "champion_version": "1", "reasons": ["why one", "why two"]}.items() <= payload.items()
    assert payload["message"].startswith(f"*kaizen · {champion_ws.workspace_id}*: challenger v1 is the champion now")
    assert "accuracy on batch-0003: champion 0.700, challenger 0.800" in payload["message"]
    assert payload["flow_run_url"] is None  # outside a flow run: no link to one
    event, payload = alerts.decision_alert(champion_ws, summary("rejected", challenger_version="2"))
    assert event == "kaizen.challenger.rejected" and "challenger v2 rejected on batch-0003" in payload["message"]
    assert "• why two" in payload["message"]
    event, payload = alerts.decision_alert(champion_ws, summary("suspect", challenger_version=None))
    assert event == "kaizen.batch.suspect" and "batch batch-0003 looks suspect" in payload["message"]
    assert alerts.decision_alert(champion_ws, summary("skipped")) is None
    assert alerts.decision_alert(champion_ws, summary("no new data", batch=None)) is None


def test_drift_is_told_only_when_detected(champion_ws, tmp_path) -> None:
    from kaizen.tasks.registry.record import Iteration

    ref = tracking.ModelRef("1", "run", {})
    it = Iteration("batch-0004", "run", "md5", "md5", ref, ("batch-0004",), "", "loop")
    drifted = DriftResult(0.75, True, {}, tmp_path / "d.html", ("text", "text_length", "word_count"))
    event, payload = alerts.drift_alert(champion_ws, it, drifted)
    assert event == "kaizen.drift.detected" and payload["drifted_columns"] == ["text", "text_length", "word_count"]
    assert "batch batch-0004 drifted" in payload["message"] and "share 0.75 >= 0.50" in payload["message"]
    assert alerts.drift_alert(champion_ws, it, DriftResult(0.25, False, {}, tmp_path / "d.html")) is None
    assert alerts.drift_alert(champion_ws, it, None) is None


def test_the_webhook_can_come_from_the_environment(copy_workspace, monkeypatch) -> None:
    ws = copy_workspace({}, alerts__webhook_url="env:KAIZEN_TEST_HOOK")
    with pytest.raises(alerts.AlertsError, match="KAIZEN_TEST_HOOK"):
        alerts.webhook_url(ws)
    monkeypatch.setenv("KAIZEN_TEST_HOOK", "https://hooks.example/T/B/C")
    assert alerts.webhook_url(ws) == "https://hooks.example/T/B/C"
    monkeypatch.setenv("KAIZEN_TEST_HOOK", "hooks.example/T/B/no-scheme-key")
    with pytest.raises(alerts.AlertsError, match="does not hold an http") as caught:
        alerts.webhook_url(ws)
    assert "no-scheme-key" not in str(caught.value)
    assert alerts.webhook_url(Workspace(ws.root, ws.settings.with_overrides({"alerts.webhook_url": ""}))) is None



def test_a_webhook_from_a_secret_block_is_kept_among_the_alert_blocks_secrets(copy_workspace, prefect_server) -> None:
    """`secret:BLOCK` reads a Prefect Secret block; the alert block holds the URL where Prefect masks it, and sends
    to it all the same."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.events.actions import SendNotification

    hook = "https://hooks.slack.com/services/T000/B000/XXXX"
    ws = copy_workspace({}, alerts__webhook_url="secret:kaizen-test-hook")
    with pytest.raises(alerts.AlertsError, match="no such Secret block"):
        alerts.webhook_url(ws)
    Secret(value=hook).save("kaizen-test-hook", overwrite=True)
    names = alerts.ensure_automations(ws)
    try:
        with get_client(sync_client=True) as client:
            (automation,) = client.read_automations_by_name(names[0])
            (action,) = automation.actions
            assert isinstance(action, SendNotification)
            block_id = action.block_document_id
            shown = client.read_block_document(block_id, include_secrets=False)  # as the API and UI show it
            stored = client.read_block_document(block_id)
        assert "XXXX" not in shown.model_dump_json() and shown.data["url"] == "{{webhook_url}}"
        assert stored.data["secrets"] == {"webhook_url": hook}
        block = CustomWebhookNotificationBlock.load(f"kaizen-alerts-{ws.workspace_id}")
        assert isinstance(block, CustomWebhookNotificationBlock)
        sent = block._build_request_args("hello", "kaizen")
        assert sent["url"] == hook and sent["json"] == {"text": "hello"}
    finally:
        assert alerts.ensure_automations(Workspace(ws.root, ws.settings.with_overrides({"alerts.webhook_url": ""}))) == []

# --- the served route --------------------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """A Slack-like incoming webhook on a loopback port: keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/kaizen"

    def texts(self) -> list[str]:
        return [body["text"] for body in self.bodies]

    def wait_for(self, *words: str, seconds: float = 120) -> str:
        return wait_until(f"a message with {words}", lambda: next(
            (t for t in self.texts() if all(w in t for w in words)), None), seconds, every=1.0)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone, receiver) -> Iterator[dict]:
    """`kaizen up` and `kaizen serve` for a workspace that alerts the receiver and asks for approval."""
    ws = make_ws(tmp_path_factory.mktemp("served-alerts") / "ws", tiny_backbone, **{
        "alerts.webhook_url": receiver.url, "gate.require_approval": True, "gate.approval_timeout_seconds": 900,
        "drift.threshold": 0.25,
        # No hourly cron: a run it starts at minute 0 would take the file a test submits, and the test would
        # wait for its own run (queued behind it) in vain.
        "schedule.cron": "0 0 1 1 *"})
    kaizen("up", "-w", str(ws.root), timeout=600)
    proc = None
    try:
        proc = start([KAIZEN, "serve", "-w", str(ws.root)], ws.state_dir / "serve.log", cli_env())
        api = f"{ws.recorded_url('prefect')}/api"
        with prefect(api) as client:
            deployment = wait_until("the served deployment", lambda: deployment_with_trigger(client, ws), 240)
        yield {"ws": ws, "api": api, "deployment": deployment, "proc": proc}
    finally:
        if proc is not None:
            stop(proc)
        kaizen("down", "-w", str(ws.root), timeout=120)


def paused_approval(client, deployment_id, earlier: set):
    """The new run of the deployment, once its approval subflow waits (Paused): (run, subflow run)."""
    for run in runs_of(client, deployment_id):
        if run.id in earlier or run.state_type.value != "RUNNING":
            continue
        for child in client.read_flow_runs():
            if child.state_type.value == "PAUSED" and child.parent_task_run_id and \
                    client.read_task_run(child.parent_task_run_id).flow_run_id == run.id:
                return run, child
    return None


def submit_and_wait_for_approval(served, name: str, rows: pd.DataFrame, tmp_path: Path):
    with prefect(served["api"]) as client:
        earlier = {r.id for r in runs_of(client, served["deployment"].id)}
        path = land(tmp_path, name, rows)
        kaizen("submit", str(path), "-w", str(served["ws"].root))
        return wait_until("a run waiting for approval", lambda: paused_approval(
            client, served["deployment"].id, earlier), 600, every=3.0)


def finish(served, run_id):
    with prefect(served["api"]) as client:
        return wait_until("the run to finish", lambda: next(
            (r for r in [client.read_flow_run(run_id)] if r.state_type.value in FINAL), None), 300)


def test_serve_creates_the_alert_automations_and_the_scoring_deployment(served, receiver) -> None:
    ws: Workspace = served["ws"]
    assert f"alerts: {len(alerts.ALERTS)} Prefect automations" in (ws.state_dir / "serve.log").read_text()
    with prefect(served["api"]) as client:
        for event in alerts.ALERTS:
            (automation,) = client.read_automations_by_name(alerts.automation_name(ws, event))
            assert automation.trigger.expect == {event}
            assert automation.trigger.match.model_dump()["prefect.resource.id"] == f"kaizen.workspace.{ws.workspace_id}"
            (action,) = automation.actions
            block = client.read_block_document(action.block_document_id)
        assert block.data["url"] == "{{webhook_url}}" and block.data["json_data"] == {"text": "{{body}}"}
        assert block.data["secrets"] == {"webhook_url": receiver.url}  # read with secrets: what is sent
        for flow in ("kaizen-score", "kaizen-watch", "kaizen-select"):
            assert client.read_deployment_by_name(f"{flow}/{ws.workspace_id}").parameters == {"workspace": str(ws.root)}


def test_an_approved_promotion_is_announced(served, receiver, domains, tmp_path) -> None:
    ws: Workspace = served["ws"]
    run, approval = submit_and_wait_for_approval(served, "movies.csv", sample(domains["movies"], 80, seed=1), tmp_path)
    asked = receiver.wait_for("waits for a person", "batch-0001")
    assert f"/runs/flow-run/{approval.id}|approve or refuse in the Prefect UI>" in asked  # links to the paused run
    assert approval.name and approval.flow_id != run.flow_id  # the kaizen-approval subflow, not the run itself
    with prefect(served["api"]) as client:
        client.resume_flow_run(approval.id, run_input={"approve": True, "who": "tester", "reason": "samples fine"})
    assert finish(served, run.id).state_type.value == "COMPLETED"

    client = tracking.connect(ws)
    champion = tracking.model_by_alias(client, ws.settings.model.registered_name, tracking.CHAMPION)
    assert champion.version == "1"
    assert champion.tags[TAG["reasons"]].startswith("approved by tester in the Prefect UI: samples fine")
    promoted = receiver.wait_for("challenger v1 is the champion now", "batch-0001")
    assert f"*kaizen · {ws.workspace_id}*" in promoted and "approved by tester" in promoted
    assert "|MLflow run>" in promoted and "|Prefect run>" in promoted
    with prefect(served["api"]) as prefect_client:
        artifacts = prefect_client.read_artifacts(flow_run_filter=run_filter(run.id))
    progress = [a for a in artifacts if a.type == "progress"]
    assert [(a.key, a.data) for a in progress] == [("kaizen-training", 100.0)]


def test_a_refusal_is_recorded_like_a_gate_refusal_and_announced(served, receiver, domains, tmp_path) -> None:
    ws: Workspace = served["ws"]
    run, approval = submit_and_wait_for_approval(served, "amazon.csv", sample(domains["amazon"], 80, seed=2), tmp_path)
    with prefect(served["api"]) as client:
        client.resume_flow_run(approval.id, run_input={"approve": False, "who": "tester", "reason": "not this week"})
    assert finish(served, run.id).state_type.value == "COMPLETED"
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == "1"
    refused = tracking.model_version(client, name, "2").tags
    assert refused[TAG["decision"]] == "rejected"
    assert refused[TAG["reasons"]].startswith("refused by tester in the Prefect UI: not this week")
    rejected = receiver.wait_for("challenger v2 rejected on batch-0002", "the champion stays v1")
    assert "not this week" in rejected
    assert receiver.wait_for("batch batch-0002 drifted")


def test_the_scoring_deployment_scores_with_the_champion(served, domains) -> None:
    ws: Workspace = served["ws"]
    texts = sample(domains["finefood"], 30, seed=6)
    folder = ws.root / "scoring"  # a deployed run reads and writes only under serving.roots: the workspace here
    folder.mkdir(exist_ok=True)
    texts.to_csv(folder / "reviews.csv", index=False)
    out = folder / "scored.parquet"
    with prefect(served["api"]) as client:
        deployment = client.read_deployment_by_name(f"kaizen-score/{ws.workspace_id}")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={
            "source": str(folder / "reviews.csv"), "out": str(out)})
    done = finish(served, run.id)
    assert done.state_type.value == "COMPLETED", done.state.message
    scored = pd.read_parquet(out)
    assert len(scored) == 30 and set(scored["model_version"]) == {"1"} and scored["reason"].isna().all()
    with prefect(served["api"]) as client:
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=run_filter(run.id))}
    assert artifacts["kaizen-scoring"].type == "progress" and artifacts["kaizen-scoring"].data == 100.0
    assert "30 rows from 1 file(s), 30 labelled, 0 with a reason" in artifacts["kaizen-scoring-summary"].data
