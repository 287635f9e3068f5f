"""Runs whose process is gone: marked Crashed, so that they free the deployment's one concurrency slot.

A served or pooled run killed with its process (the serving process stopped mid-iteration, a machine that went
down) stays `Running` on the Prefect server and keeps the slot: every later run would wait in
`AwaitingConcurrencySlot` for good. Two of Prefect's own mechanisms end that:
- heartbeats: every deployed run sends `prefect.flow-run.heartbeat` every `operations.heartbeat_seconds`
  (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, set by tasks/workspace/environment.py), and an automation of the
  workspace marks a run of its deployment Crashed when it has been silent for `operations.zombie_after_seconds`;
- reconciliation when `kaizen serve` starts: a run of the served deployment still Running or Pending whose
  process (recorded by the run itself under `.kaizen/flow-runs/`) no longer exists is marked Crashed at once.
The recovery of the loop then finishes the killed run's iteration (tasks/operate/recovery.py) in the next run.
"""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path

from kaizen.tasks.workspace.layout import Workspace

HEARTBEAT = "prefect.flow-run.heartbeat"
ENDED = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
         "prefect.flow-run.Crashed")


def _record(ws: Workspace, flow_run_id: str) -> Path:
    return ws.state_dir / "flow-runs" / f"{flow_run_id}.json"


def note_process(ws: Workspace, flow_run_id: str) -> None:
    """Record which process runs `flow_run_id` (read back by `reconcile`)."""
    import psutil

    if not flow_run_id:
        return
    path = _record(ws, flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": me.pid, "create_time": me.create_time()}),
                    encoding="utf-8")


def process_gone(ws: Workspace, flow_run_id: str) -> bool:
    """Whether the process that ran `flow_run_id` on this machine is gone. No record: it never reached the flow's
    first line (killed while starting), so it is gone too; a record from another machine cannot be checked."""
    import psutil

    path = _record(ws, flow_run_id)
    if not path.exists():
        return True
    record = json.loads(path.read_text(encoding="utf-8"))
    if record["host"] != socket.gethostname():
        return False
    try:
        process = psutil.Process(record["pid"])
        # A killed process whose parent died too can stay a zombie until someone reaps it: gone all the same.
        return abs(process.create_time() - record["create_time"]) >= 1.0 or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def reconcile(ws: Workspace, deployment_name: str) -> list[str]:
    """Mark Crashed every Running or Pending run of the served deployment whose process is gone. Call it holding
    the workspace's "serve" lock, before serving: no run of the deployment can then have a live runner. Returns
    the ids of the runs marked."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            return []
        if deployment.work_pool_name:  # a worker runs it, maybe elsewhere: heartbeats alone tell
            return []
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]))))
        marked = []
        for run in runs:
            if process_gone(ws, str(run.id)):
                client.set_flow_run_state(run.id, Crashed(message=(
                    "its process is gone (found when `kaizen serve` started again); the next run finishes its "
                    "iteration")), force=True)
                marked.append(str(run.id))
    for path in (ws.state_dir / "flow-runs").glob("*.json"):  # records of runs that ended: no longer needed
        if path.stem not in {str(r.id) for r in runs} or path.stem in marked:
            path.unlink(missing_ok=True)
    return marked


def automation_name(ws: Workspace) -> str:
    return f"kaizen: crash silent runs ({ws.workspace_id})"


def ensure_automation(ws: Workspace, deployment_id) -> str:
    """The workspace's zombie automation, (re)created with the current `operations` settings: a run of the
    deployment that sent a heartbeat and then nothing (no heartbeat, no end) for `zombie_after_seconds` is marked
    Crashed. Returns its id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    ops = ws.settings.operations
    automation = AutomationCore(
        name=automation_name(ws),
        description=f"kaizen: runs of {ws.workspace_id}'s loop whose process died are marked Crashed, freeing "
                    "the deployment's concurrency slot; the next run finishes their iteration",
        trigger=EventTrigger(
            after={HEARTBEAT}, expect={HEARTBEAT, *ENDED}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=ops.zombie_after_seconds), for_each={"prefect.resource.id"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}",
                           "prefect.resource.role": "deployment"}),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=(
            f"no heartbeat for {ops.zombie_after_seconds} s (operations.zombie_after_seconds): its process is "
            "gone; the next run finishes its iteration"))])
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(automation.name):
            client.delete_automation(old.id)
        return str(client.create_automation(automation))

