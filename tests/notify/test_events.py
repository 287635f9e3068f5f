"""tasks.notify.events: the one catalogue of the events kaizen emits or listens to. The names are stored on the
Prefect server (events, deployment triggers, automations), so each stays the string it always was."""

from __future__ import annotations

from kaizen.tasks.notify import alerts, events
from kaizen.tasks.runtime import zombies


def test_the_event_names_are_unchanged() -> None:
    assert (events.ARRIVED, events.PROMOTED, events.REJECTED, events.DRIFT, events.SUSPECT, events.FAILED,
            events.APPROVAL, events.TRAFFIC) == (
        "kaizen.data.arrived", "kaizen.champion.promoted", "kaizen.challenger.rejected", "kaizen.drift.detected",
        "kaizen.batch.suspect", "kaizen.iteration.failed", "kaizen.approval.requested", "kaizen.traffic.drifted")
    assert events.FLOW_RUN_HEARTBEAT == zombies.HEARTBEAT == "prefect.flow-run.heartbeat"
    assert events.FLOW_RUN_ENDED == zombies.ENDED == tuple(
        f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed"))


def test_every_alert_is_an_event_of_the_catalogue() -> None:
    assert set(alerts.ALERTS) == {events.PROMOTED, events.REJECTED, events.DRIFT, events.SUSPECT, events.FAILED,
                                  events.APPROVAL, events.TRAFFIC}
