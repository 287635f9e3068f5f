"""New data announces itself: the `kaizen.data.arrived` event that starts the deployed loop, and the follow-up
run a deployed iteration queues when more batches wait.

`kaizen submit` copies files into the landing zone and sends one event naming them; `kaizen watch` polls the
landing zone (a folder or any fsspec URL) and sends one event per file it has not announced before. The event's
resource is the workspace (its `workspace_id`), which the deployment's trigger matches, so each workspace's
events start only its own loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from kaizen.tasks.notify import events
from kaizen.tasks.notify.events import ARRIVED, NoServerError, resource
from kaizen.tasks.workspace.files import write_atomically
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.redact import redact


def trigger_spec(ws: Workspace, parameters: dict[str, str] | None = None) -> dict:
    """What the deployment's trigger waits for, and the run parameters it fills from the event: one run per event
    (threshold 1), with the files the event names. `parameters`: the deployment's own (a trigger's replace them),
    by default this folder."""
    return {
        "name": f"kaizen data arrived ({ws.workspace_id})",
        "expect": [ARRIVED],
        "match": {"prefect.resource.id": resource(ws)["prefect.resource.id"]},
        "parameters": {**(parameters or {"workspace": str(ws.root)}), "files": "{{ event.payload.files }}"},
    }


def emit(ws: Workspace, files: list[str]) -> str:
    """Announce `files` with one arrival event (the server has it when this returns). Returns the event id."""
    return events.emit(ws, ARRIVED, {"files": files, "landing": redact(ws.landing)}, required=True)


def submit(ws: Workspace, paths: Iterable[Path]) -> list[str]:
    """Copy local files into the landing zone (each under a hidden name, then renamed, so the loop never reads
    half a file) and announce them in one event. Returns the names as landed."""
    import fsspec

    paths = [Path(p) for p in paths]
    if not ws.prefect_api_url:  # checked before copying: a file landed but never announced waits for the schedule
        raise NoServerError("no Prefect server to announce new data to: start one with `kaizen up` "
                            "or set PREFECT_API_URL (or copy the files and run `kaizen run`)")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
    fs, landing = fsspec.core.url_to_fs(ws.landing)
    fs.makedirs(landing, exist_ok=True)
    waiting = {PurePosixPath(p).name for p in fs.ls(landing, detail=False)}
    clashes = sorted(p.name for p in paths if p.name in waiting)
    if clashes:
        raise FileExistsError(f"already waiting in {ws.landing_shown}: {', '.join(clashes)}; rename the new file(s)")
    names = []
    for path in paths:
        partial = f"{landing}/.{path.name}.part"
        fs.put_file(str(path), partial)
        fs.mv(partial, f"{landing}/{path.name}")
        names.append(path.name)
    emit(ws, names)
    return names


def _load_announced(ws: Workspace) -> dict[str, str]:
    path = ws.watch_state_file
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _save_announced(ws: Workspace, announced: dict[str, str]) -> None:
    write_atomically(ws.watch_state_file, json.dumps(announced, indent=1, sort_keys=True).encode("utf-8"))


def poll(ws: Workspace, announce: Callable[[Workspace, list[str]], str] = emit) -> list[str]:
    """One look at the landing zone: announce each ready file not announced yet, one event per file.

    Ready is what collect will read: settled for `data.settle_seconds`, not hidden or partial (announced
    earlier, the run it starts would skip the file and nothing would announce it again). A file is known by
    name and stamp (size, mtime) until it leaves the landing zone, so a later file of that name is new again.
    Each announcement is recorded as soon as it is sent: a watcher killed halfway repeats none."""
    from kaizen.tasks.ingest import landing

    ready, _ = landing.survey(ws.landing, settle_seconds=ws.settings.data.settle_seconds)
    present = {f.name: str(f.stamp[:2]) for f in ready}
    before = _load_announced(ws)
    announced = {name: stamp for name, stamp in before.items() if present.get(name) == stamp}
    if announced != before:
        _save_announced(ws, announced)  # forget files that have left the landing zone
    new = [name for name in sorted(present) if name not in announced]
    for name in new:
        announce(ws, [name])
        announced[name] = present[name]
        _save_announced(ws, announced)
    return new


def watch(ws: Workspace, on_announced: Callable[[list[str]], None], once: bool = False) -> None:
    """Poll every `schedule.poll_seconds` until interrupted (or once). An error reaching the server ends the
    watcher with that error; restarted, it announces what it had not announced yet."""
    while True:
        new = poll(ws)
        if new:
            on_announced(new)
        if once:
            return
        time.sleep(ws.settings.schedule.poll_seconds)


def queue_follow_up(ws: Workspace) -> str | None:
    """When this run belongs to a deployment and more batches wait than runs are queued for it, queue one more
    run (it starts when this one ends: the concurrency limit), so that no ready batch waits for the cron.
    Returns the new run's id, or None."""
    from prefect.runtime import deployment, flow_run

    from kaizen.tasks.ingest.ledger import Ledger

    if not deployment.id:
        return None
    with Ledger(ws.ledger_db) as ledger:
        pending = len(ledger.batches(status="pending"))
    if not pending:
        return None
    from datetime import UTC, datetime, timedelta
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deployment_id = UUID(deployment.id)
    with get_client(sync_client=True) as client:
        # Due runs only: those waiting for the slot (events, earlier follow-ups), not the cron's next hour.
        waiting = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC) + timedelta(minutes=1))))
        if len([r for r in waiting if str(r.id) != flow_run.id]) >= pending:
            return None
        # The deployment's own parameters: a shared loop's runs work in a folder of their worker's, not this one
        run = client.create_flow_run_from_deployment(deployment_id, tags=["kaizen-follow-up"])
    return str(run.id)
