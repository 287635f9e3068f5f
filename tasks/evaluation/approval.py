"""approval: a person's approve or refuse between the gate's verdict and the alias move (`gate.require_approval`).

The iteration runs this as a subflow (flows/loop.py), which pauses for the answer: the Prefect UI shows the
paused `kaizen-approval` run with a form (Approval's fields), and `kaizen.approval.requested` alerts link to it.
A refusal, or no answer within `gate.approval_timeout_seconds`, is recorded like a gate refusal: the verdict
"rejected", the person's words first among its reasons.

Why a subflow and not a pause of the served run itself: pausing a run releases its deployment's concurrency slot,
and Prefect's engine, still renewing that slot's lease, then cancels the run within about four minutes (the
renewal gets 410 Gone; PrefectHQ/prefect#20251 is the same mechanism for retries). A subflow holds no slot, so the
served run stays Running, holding the workspace, for as long as the person takes.
"""

from __future__ import annotations

from pydantic import Field

from kaizen.tasks.evaluation.promote import GateDecision
from kaizen.tasks.registry.tags import Decision
from kaizen.tasks.workspace.layout import Workspace


def _approval_input():
    from prefect.input import RunInput

    class Approval(RunInput):
        """The form of the paused run in the Prefect UI."""

        approve: bool = Field(description="Make the challenger the champion?")
        reason: str = Field(default="", description="Why: recorded with the decision")
        who: str = Field(default="", description="Your name: recorded with the decision")

    return Approval


def answered(gate: GateDecision, approve: bool, who: str, reason: str) -> GateDecision:
    """The verdict after a person's answer: theirs first among the reasons, the gate's after."""
    said = f"{'approved' if approve else 'refused'} by {who.strip() or 'someone'} in the Prefect UI" + (
        f": {reason.strip()}" if reason.strip() else "")
    return GateDecision(approve, [said, *gate.reasons], f"{Decision.PROMOTED if approve else Decision.REJECTED}: {said}")


def refused(gate: GateDecision, why: str) -> GateDecision:
    return GateDecision(False, [why, *gate.reasons], f"{Decision.REJECTED}: {why}")


def _resume_here() -> None:
    """Put the paused run back to Running: once its pause expires the server fails it, and then no step of the
    iteration could run to record the refusal."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "ask_approval runs as a flow: its run is the context"
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(context.flow_run.id, Running(), force=True)


def ask_approval(ws: Workspace, batch_id: str, challenger_version: str, gate: GateDecision) -> GateDecision:
    """Pause this (sub)flow run until a person approves or refuses the challenger the gate passed; the verdict
    that results. Without a Prefect server no one could answer: refused at once, saying so."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run
    from prefect.settings import get_current_settings

    from kaizen.tasks.notify import alerts

    timeout = ws.settings.gate.approval_timeout_seconds
    if not get_current_settings().api.url:
        return refused(gate, "gate.require_approval: refused, as no Prefect server runs where a person could "
                             "answer (start one with `kaizen up`)")
    alerts.announce(ws, alerts.approval_alert(ws, batch_id, challenger_version, timeout))
    try:
        answer = pause_flow_run(wait_for_input=_approval_input(), timeout=timeout, poll_interval=min(10, timeout),
                                key=f"approval-{batch_id}")
    except FlowPauseTimeout:
        _resume_here()
        return refused(gate, f"no answer within {timeout} s (gate.approval_timeout_seconds): refused")
    return answered(gate, answer.approve, answer.who, answer.reason)
