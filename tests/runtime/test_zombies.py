"""tasks.zombies on a real Prefect server: runs of the served deployment whose process is gone are marked Crashed
when `kaizen serve` starts, live ones are left alone; the heartbeat automation has the shape Prefect documents.
(The end-to-end case, a serving process killed mid-iteration, is in tests/flows/test_cli_servers.py.)"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

from kaizen.flows.deployment import FLOW_NAME, build, deployment_name
from kaizen.tasks.runtime import zombies


def test_runs_whose_process_is_gone_are_crashed_and_live_ones_left(make_workspace, prefect_server) -> None:
    import json
    import time

    import psutil
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    ws = make_workspace()
    deployment_id = build(ws).apply()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed_started = psutil.Process(killed.pid).create_time()
    killed.kill()  # not reaped yet: a zombie, as a run killed with its serving process can stay for a while
    time.sleep(0.5)
    with get_client(sync_client=True) as client:
        runs = [client.create_flow_run_from_deployment(deployment_id) for _ in range(4)]
        for run in runs:
            client.set_flow_run_state(run.id, Running(), force=True)
    dead, zombie, alive, unrecorded = (str(r.id) for r in runs)
    for run, pid, started in ((dead, gone.pid, 0.0), (zombie, killed.pid, killed_started)):
        zombies.note_process(ws, run)
        record = json.loads(zombies._record(ws, run).read_text())
        zombies._record(ws, run).write_text(json.dumps({**record, "pid": pid, "create_time": started}))
    zombies.note_process(ws, alive)  # this test's process: alive

    marked = zombies.reconcile(ws, f"{FLOW_NAME}/{deployment_name(ws)}")
    killed.wait()

    assert sorted(marked) == sorted([dead, zombie, unrecorded])
    with get_client(sync_client=True) as client:
        states = {str(r.id): client.read_flow_run(r.id).state for r in runs}
    assert {run: state.type.value for run, state in states.items()} == {
        dead: "CRASHED", zombie: "CRASHED", alive: "RUNNING", unrecorded: "CRASHED"}
    assert "its process is gone" in states[dead].message
    assert not zombies._record(ws, dead).exists() and zombies._record(ws, alive).exists()


def test_the_heartbeat_automation_crashes_silent_runs_of_the_deployment(make_workspace, prefect_server) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.actions import ChangeFlowRunState

    ws = make_workspace(operations__zombie_after_seconds=120)
    deployment_id = build(ws).apply()
    first = zombies.ensure_automation(ws, deployment_id)
    again = zombies.ensure_automation(ws, deployment_id)  # re-serving replaces it, never duplicates it
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name(zombies.automation_name(ws))
    assert str(automation.id) == again != first
    trigger = automation.trigger
    assert trigger.posture == "Proactive" and trigger.after == {zombies.HEARTBEAT}
    assert trigger.expect == {zombies.HEARTBEAT, *zombies.ENDED} and trigger.within == timedelta(seconds=120)
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.match_related.model_dump()["prefect.resource.id"] == f"prefect.deployment.{deployment_id}"
    (action,) = automation.actions
    assert isinstance(action, ChangeFlowRunState) and action.state.value == "CRASHED"


def test_a_run_silent_past_zombie_after_is_crashed_by_the_automation(make_workspace, prefect_server) -> None:
    import time

    from prefect.client.orchestration import get_client
    from prefect.events import Event
    from prefect.states import Running

    from kaizen.tasks.workspace.layout import Workspace

    ws = make_workspace()
    ops = ws.settings.operations.model_copy(update={"zombie_after_seconds": 10})  # params.yaml allows 60 at least
    quick = Workspace(ws.root, ws.settings.model_copy(update={"operations": ops}))
    deployment_id = build(ws).apply()
    zombies.ensure_automation(quick, deployment_id)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id)
        client.set_flow_run_state(run.id, Running(), force=True)
        beat = Event(event=zombies.HEARTBEAT, resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"},
                     related=[{"prefect.resource.id": f"prefect.deployment.{deployment_id}",
                               "prefect.resource.role": "deployment"}])
        client.request("POST", "/events", json=[beat.model_dump(mode="json")]).raise_for_status()
        deadline = time.monotonic() + 120
        while (state := client.read_flow_run(run.id).state).type.value != "CRASHED" and time.monotonic() < deadline:
            time.sleep(2)  # one heartbeat, then silence
    assert state.type.value == "CRASHED" and "no heartbeat for 10 s" in state.message
