"""tasks.approval: the verdict after a person's answer, a timeout that refuses, and no server that refuses.
The served route (approve one run, refuse another through Prefect's API) is in tests/notify/test_alerts.py."""

from __future__ import annotations

import pytest

from kaizen.tasks.evaluation.approval import answered, ask_approval
from kaizen.tasks.evaluation.promote import GateDecision

PASSED = GateDecision(True, ["accuracy on batch-0002 is 0.9000, at or above min_score 0.6000"],
                      "promoted: accuracy on batch-0002 is 0.9000")


def test_an_answer_leads_the_reasons_and_decides() -> None:
    approved = answered(PASSED, True, "ana", "checked the samples")
    assert approved.promote and approved.reasons == [
        "approved by ana in the Prefect UI: checked the samples", *PASSED.reasons]
    refused = answered(PASSED, False, " ", "")
    assert not refused.promote and refused.verdict == "rejected"
    assert refused.reasons == ["refused by someone in the Prefect UI", *PASSED.reasons]


def test_no_answer_within_the_timeout_refuses(copy_workspace, prefect_server) -> None:
    """A real pause on the test's Prefect server; nobody answers; the run carries on to record the refusal."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    ws = copy_workspace({"gate.require_approval": True, "gate.approval_timeout_seconds": 2})
    waited = flow(ask_approval, name="kaizen-approval", validate_parameters=False)

    @flow
    def iteration_like() -> tuple[GateDecision, str]:
        from prefect.runtime import flow_run

        verdict = waited(ws, "batch-0002", "2", PASSED)
        return verdict, flow_run.id

    verdict, parent = iteration_like()
    assert not verdict.promote
    assert verdict.reasons == ["no answer within 2 s (gate.approval_timeout_seconds): refused", *PASSED.reasons]
    with get_client(sync_client=True) as client:
        (child,) = [r for r in client.read_flow_runs() if r.parent_task_run_id and r.name and
                    str(client.read_task_run(r.parent_task_run_id).flow_run_id) == parent]
        states = [s.type.value for s in client.read_flow_run_states(child.id)]
    assert "PAUSED" in states and states[-1] == "COMPLETED"


def test_without_a_server_no_one_could_answer(copy_workspace, monkeypatch) -> None:
    """No Prefect server (`kaizen run` on Prefect's temporary one): refused at once, saying why."""
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ws = copy_workspace({"gate.require_approval": True})
    with temporary_settings({PREFECT_API_URL: None}):
        verdict = flow(ask_approval, validate_parameters=False)(ws, "batch-0002", "2", PASSED)
    assert not verdict.promote and "no Prefect server" in verdict.reasons[0]


@pytest.fixture
def copy_workspace(copy_workspace):
    return lambda overrides: copy_workspace({}, **{k.replace(".", "__"): v for k, v in overrides.items()})
