"""tasks.zombies on a real Prefect server: runs of the served deployment whose process is gone are marked Crashed
when `kaizen serve` starts, live ones are left alone; the heartbeat automation has the shape Prefect documents.
(The end-to-end case, a serving process killed mid-iteration, is in tests/test_cli_servers.py.)"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

from kaizen.flows.deployment import FLOW_NAME, build, deployment_name
from kaizen.tasks import zombies


def test_runs_whose_process_is_gone_are_crashed_and_live_ones_left(make_workspace, prefect_server) -> None:
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    ws = make_workspace()
    deployment_id = build(ws).apply()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with get_client(sync_client=True) as client:
        runs = [client.create_flow_run_from_deployment(deployment_id) for _ in range(3)]
        for run in runs:
            client.set_flow_run_state(run.id, Running(), force=True)
    dead, alive, unrecorded = (str(r.id) for r in runs)
    zombies.note_process(ws, alive)  # this test's process: alive
    zombies.note_process(ws, dead)
    record = zombies._record(ws, dead)
    record.write_text(record.read_text().replace(f'"pid": {psutil.Process().pid}', f'"pid": {gone.pid}'))

    marked = zombies.reconcile(ws, f"{FLOW_NAME}/{deployment_name(ws)}")

    assert sorted(marked) == sorted([dead, unrecorded])
    with get_client(sync_client=True) as client:
        states = {str(r.id): client.read_flow_run(r.id).state for r in runs}
    assert {run: state.type.value for run, state in states.items()} == {
        dead: "CRASHED", alive: "RUNNING", unrecorded: "CRASHED"}
    assert "its process is gone" in states[dead].message
    assert not record.exists() and zombies._record(ws, alive).exists()


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
