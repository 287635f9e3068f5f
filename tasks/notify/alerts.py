"""alerts: telling people what the loop did, without their looking.

The loop emits a Prefect event (tasks/notify/events.py) for each thing worth hearing about, with the workspace, the
batch, the model versions, the reasons and links to the MLflow and Prefect runs in its payload, and a ready
message (Slack mrkdwn) in `payload.message`. `kaizen serve` and `kaizen deploy` create one Prefect automation per
kind of event that sends that message to a notification block: a webhook (`alerts.webhook_url`, given as
`env:NAME` or `secret:BLOCK` and kept among the block's secrets) receiving Slack's incoming-webhook payload
`{"text": ...}`. The automations live on the Prefect server, so the UI shows, pauses and edits them like any other.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

from kaizen.tasks.notify import events
from kaizen.tasks.notify.events import APPROVAL, DRIFT, FAILED, PROMOTED, REJECTED, SUSPECT, TRAFFIC
from kaizen.tasks.registry.tags import TAG, Decision
from kaizen.tasks.workspace.layout import Workspace

if TYPE_CHECKING:
    from kaizen.tasks.registry.record import Iteration

# The events people hear about (events.py names them; FAILED is emitted by tasks/operate/failures.py, APPROVAL by
# tasks/evaluation/approval.py, TRAFFIC by the kaizen-watch flow), each with what its automation is called.
ALERTS = {PROMOTED: "champion promoted", REJECTED: "challenger rejected", DRIFT: "drift detected",
          SUSPECT: "suspect batch", FAILED: "iteration failed", APPROVAL: "approval requested",
          TRAFFIC: "traffic drifted"}
BY_DECISION = {Decision.PROMOTED: PROMOTED, Decision.REJECTED: REJECTED, Decision.SUSPECT: SUSPECT}
# What each automation sends: the event's own message, or (an event without one) its name and payload.
BODY = ("{% if event.payload.message %}{{ event.payload.message }}{% else %}*kaizen · {{ event.resource.name }}*: "
        "{{ event.event }} {{ event.payload | tojson }}{% endif %}")


class AlertsError(ValueError):
    """The alert settings cannot be used as they are; the message says why."""


def _links(ws: Workspace, mlflow_run_id: str | None) -> dict[str, str | None]:
    """The workspace, and where the current Prefect flow run and the iteration's MLflow run are shown."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    from kaizen.tasks.registry import tracking

    run_id = flow_run.id
    return {"workspace": ws.workspace_id, "root": str(ws.root), "flow_run_id": run_id,
            "flow_run_url": url_for("flow-run", obj_id=run_id) if run_id else None,  # None without a server UI
            "mlflow_run_id": mlflow_run_id, "mlflow_run_url": tracking.run_url(ws, mlflow_run_id) if mlflow_run_id else None}


def _footer(payload: dict) -> str:
    links = [f"<{payload['mlflow_run_url']}|MLflow run>" if payload.get("mlflow_run_url") else "",
             f"<{payload['flow_run_url']}|Prefect run>" if payload.get("flow_run_url") else ""]
    return " · ".join(link for link in links if link)


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def decision_message(event: str, p: dict) -> str:
    head = f"*kaizen · {p['workspace']}*: "
    if event == PROMOTED:
        was = f" (was v{p['previous_version']})" if p.get("previous_version") else " (the first champion)"
        head += f"challenger v{p['challenger_version']} is the champion now{was}, after {p['batch']}"
    elif event == REJECTED:
        head += f"challenger v{p['challenger_version']} rejected on {p['batch']}; the champion stays " \
                f"{'v' + p['champion_version'] if p.get('champion_version') else 'unset'}"
    else:
        head += f"batch {p['batch']} looks suspect: nothing promoted, the champion stays v{p.get('champion_version')}"
    scores = f"{p['metric']} on {p['batch']}: champion {_score(p['champion_score'])}, challenger " \
             f"{_score(p['challenger_score'])}"
    reasons = "\n".join(f"• {reason}" for reason in p["reasons"][:6])
    return f"{head}\n{scores}\n{reasons}\n{_footer(p)}".strip()


def decision_alert(ws: Workspace, summary) -> tuple[str, dict] | None:
    """The event that tells what an iteration decided (a record.IterationSummary), or None when it decided
    nothing worth telling (no new data, training skipped)."""
    event = BY_DECISION.get(summary.decision)
    if event is None or summary.batch is None:
        return None
    from kaizen.tasks.registry import tracking

    previous = None
    if event == PROMOTED and summary.challenger_version:  # the champion it replaced is the one it started from
        client = tracking.connect(ws)
        ref = tracking.model_version(client, ws.settings.model.registered_name, summary.challenger_version)
        previous = ref.tags.get(TAG["parent_version"]) or None
    payload = {**_links(ws, summary.run_id), "batch": summary.batch, "decision": summary.decision,
               "reasons": list(summary.reasons), "challenger_version": summary.challenger_version,
               "champion_version": summary.champion_version, "previous_version": previous,
               "metric": ws.settings.gate.metric, "champion_score": summary.champion_score,
               "challenger_score": summary.challenger_score, "drift_share": summary.drift_share}
    return event, {**payload, "message": decision_message(event, payload)}


def drift_alert(ws: Workspace, it: Iteration, drift) -> tuple[str, dict] | None:
    """The event that tells the new batch drifted from the champion's training data (tasks.check.DriftResult)."""
    if drift is None or not drift.drifted:
        return None
    payload = {**_links(ws, it.run_id), "batch": it.batch_id, "share": drift.share,
               "threshold": ws.settings.drift.threshold, "drifted_columns": list(drift.drifted_columns),
               "champion_version": it.champion.version if it.champion else None}
    columns = ", ".join(payload["drifted_columns"]) or "–"
    message = (f"*kaizen · {ws.workspace_id}*: batch {it.batch_id} drifted from the champion's training data "
               f"(share {drift.share:.2f} >= {payload['threshold']:.2f}; columns: {columns})\n{_footer(payload)}")
    return DRIFT, {**payload, "message": message.strip()}


def traffic_alert(ws: Workspace, found) -> tuple[str, dict] | None:
    """The event that tells the captured traffic drifted from the champion's data (a watch.TrafficDrift), or None
    when the watch showed no drift or reached no verdict."""
    if not found.drifted:
        return None
    payload = {**_links(ws, found.run_id), "since": found.since.isoformat(), "until": found.until.isoformat(),
               "rows": found.answered, "share": found.share, "threshold": ws.settings.watch.threshold,
               "drifted_columns": list(found.drifted_columns), "notes": list(found.notes),
               "champion_version": found.champion_version}
    columns = ", ".join(payload["drifted_columns"])
    notes = "".join(f"\n• {note}" for note in found.notes)
    message = (f"*kaizen · {ws.workspace_id}*: the traffic champion v{found.champion_version} answered drifted from "
               f"its data: {found.answered} texts from {found.since:%Y-%m-%d %H:%M} to {found.until:%Y-%m-%d %H:%M} UTC "
               f"(share {found.share:.2f} >= {payload['threshold']:.2f}; columns: {columns}){notes}\n"
               f"{_footer(payload)}")
    return TRAFFIC, {**payload, "message": message.strip()}


def approval_alert(ws: Workspace, batch_id: str, challenger_version: str, timeout_seconds: int) -> tuple[str, dict]:
    """The event that asks a person to approve or refuse a challenger the gate passed, linking to the run that
    waits (whose Resume form takes the answer)."""
    payload = {**_links(ws, None), "batch": batch_id, "challenger_version": challenger_version,
               "timeout_seconds": timeout_seconds}
    where = f"<{payload['flow_run_url']}|approve or refuse in the Prefect UI>" if payload["flow_run_url"] else \
        f"approve or refuse flow run {payload['flow_run_id']} in the Prefect UI"
    message = (f"*kaizen · {ws.workspace_id}*: challenger v{challenger_version} passed the gate on {batch_id} and "
               f"waits for a person: {where} (no answer within {timeout_seconds} s refuses it)")
    return APPROVAL, {**payload, "message": message}


def announce(ws: Workspace, alert: tuple[str, dict] | None) -> str | None:
    """Emit the alert's event (see events.emit); the event's id, or None when there was nothing to tell."""
    return events.emit(ws, *alert) if alert else None


def announce_decision(ws: Workspace, summary) -> str | None:
    return announce(ws, decision_alert(ws, summary))


def announce_drift(ws: Workspace, it: Iteration, drift) -> str | None:
    return announce(ws, drift_alert(ws, it, drift))


def announce_traffic(ws: Workspace, found) -> str | None:
    return announce(ws, traffic_alert(ws, found))


def webhook_url(ws: Workspace) -> str | None:
    """The URL `alerts.webhook_url` names: `env:NAME` reads that variable, `secret:BLOCK` that Prefect Secret block
    (a webhook URL holds its key, so params.yaml names where it is rather than holding it)."""
    value = ws.settings.alerts.webhook_url
    if not value:
        return None
    kind, _, name = value.partition(":")
    resolved: object
    if kind == "env":
        resolved = os.environ.get(name)
        if not resolved:
            raise AlertsError(f"alerts.webhook_url is {value!r} but that variable is not set")
    elif kind == "secret":
        resolved = _secret_block(name)
    else:
        return value  # a URL without a secret in it (settings.AlertsSettings refuses any other)
    if not isinstance(resolved, str) or not resolved.startswith(("https://", "http://")):
        raise AlertsError(f"alerts.webhook_url is {value!r}, which does not hold an http(s) URL")  # never shown
    return resolved


def _secret_block(name: str) -> object:
    from prefect.blocks.system import Secret

    try:
        return cast(Secret, Secret.load(name)).get()  # a sync call: load returns the block, not a coroutine
    except ValueError as exc:  # Prefect's words for a block that is not there
        raise AlertsError(f"alerts.webhook_url is 'secret:{name}' but the Prefect server has no such Secret block "
                          f"({exc})") from exc


def automation_name(ws: Workspace, event: str) -> str:
    return f"kaizen {ALERTS[event]} ({ws.workspace_id})"


def ensure_automations(ws: Workspace) -> list[str]:
    """Replace this workspace's alert automations on the Prefect server: one per kind of event, each sending its
    message to the webhook (a Prefect Custom Webhook block). With no webhook, remove them. Returns their names."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    url = webhook_url(ws)
    with get_client(sync_client=True) as client:
        for event in ALERTS:
            for old in client.read_automations_by_name(automation_name(ws, event)):
                client.delete_automation(old.id)
        if url is None:
            return []
        # The URL (its key in its path) goes in the block's secrets, which Prefect's API and UI show as ********;
        # the block's url names it, filled in when a message is sent.
        block = CustomWebhookNotificationBlock(name=f"kaizen alerts ({ws.workspace_id})", url="{{webhook_url}}",
                                               secrets={"webhook_url": url},
                                               json_data={"text": "{{body}}"})  # Slack's incoming-webhook payload
        block_id = block.save(f"kaizen-alerts-{ws.workspace_id}", overwrite=True)
        for event, what in ALERTS.items():
            trigger = EventTrigger(expect={event}, match={"prefect.resource.id": events.resource(ws)["prefect.resource.id"]},
                                   posture=Posture.Reactive, threshold=1)
            client.create_automation(AutomationCore(
                name=automation_name(ws, event), description=f"kaizen: send '{what}' alerts of {ws.root} to the webhook",
                trigger=trigger, actions=[SendNotification(block_document_id=block_id, subject=f"kaizen: {what}",
                                                           body=BODY)]))
    return [automation_name(ws, event) for event in ALERTS]
