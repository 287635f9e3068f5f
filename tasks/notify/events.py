"""Events: what the loop tells the Prefect server, each about the workspace as a Prefect resource.

This module is the catalogue of every event kaizen emits or listens to, by name (below): `kaizen.data.arrived`
(tasks/notify/arrivals.py) starts a deployed run; the loop's own events (`kaizen.champion.promoted`,
`kaizen.challenger.rejected`, `kaizen.batch.suspect`, `kaizen.iteration.failed`, ...) say what it did, and
`kaizen.traffic.drifted` what the watch on served traffic saw, for automations and people (tasks/notify/alerts.py).
Each is sent with a plain HTTP POST, so the server has it when `emit` returns (Prefect's websocket client sends in
the background and can lose the last events of a process that exits). The names are stored on the Prefect server (its events, triggers and automations): they never change.
"""

from __future__ import annotations

from typing import Literal, overload

from kaizen.tasks.runtime import zombies
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.redact import redact

# kaizen's own events.
ARRIVED = "kaizen.data.arrived"  # new files in the landing zone: starts the deployed loop (arrivals.py)
PROMOTED = "kaizen.champion.promoted"  # the alerts (alerts.py), one per kind
REJECTED = "kaizen.challenger.rejected"
DRIFT = "kaizen.drift.detected"
TRAFFIC = "kaizen.traffic.drifted"  # captured traffic drifted from the champion's data (tasks/serving/watch.py)
SUSPECT = "kaizen.batch.suspect"
FAILED = "kaizen.iteration.failed"  # every failed attempt at a batch (tasks/operate/failures.py)
APPROVAL = "kaizen.approval.requested"  # a challenger waits for a person (tasks/evaluation/approval.py)
# Prefect's own, which the automation that marks silent runs Crashed listens to: named in tasks/runtime/zombies.py,
# which sits below this wing and uses them, and listed here so that this catalogue is whole.
FLOW_RUN_HEARTBEAT = zombies.HEARTBEAT
FLOW_RUN_ENDED = zombies.ENDED


class NoServerError(RuntimeError):
    """No Prefect server to send the event to: nothing would hear it."""


def resource(ws: Workspace) -> dict[str, str]:
    """The Prefect resource every kaizen event is about: this workspace."""
    return {"prefect.resource.id": f"kaizen.workspace.{ws.workspace_id}",
            "prefect.resource.name": ws.workspace_id, "kaizen.landing": redact(ws.landing)}


def _server_known(ws: Workspace) -> bool:
    """A Prefect server to talk to: a real one (`kaizen up`, PREFECT_API_URL), or the one of the flow run that
    is running in this process (Prefect's temporary server under `kaizen run`)."""
    if ws.prefect_api_url:
        return True
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


@overload
def emit(ws: Workspace, event: str, payload: dict, required: Literal[True]) -> str: ...
@overload
def emit(ws: Workspace, event: str, payload: dict, required: bool = False) -> str | None: ...
def emit(ws: Workspace, event: str, payload: dict, required: bool = False) -> str | None:
    """Send `event` about the workspace with `payload`. Returns its id; None when there is no server to hear it
    and the event is not `required` (a required one raises NoServerError instead)."""
    if not _server_known(ws):
        if required:
            raise NoServerError(f"no Prefect server to send {event} to: start one with `kaizen up` "
                                "or set PREFECT_API_URL")
        return None
    from prefect.client.orchestration import get_client
    from prefect.events import Event

    sent = Event(event=event, resource=resource(ws), payload=payload)
    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[sent.model_dump(mode="json")]).raise_for_status()
    return str(sent.id)
